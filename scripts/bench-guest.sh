#!/usr/bin/env bash
# Benchmark: the bare-metal guest in QEMU ↔ ivnet-bridge ↔ TAP in a network namespace.
#
# For each mode (event, poll), measures from the namespace:
#   - ping RTT (56-byte payload, 200 pings, 5 ms apart);
#   - UDP frames/s into the guest at 64 and 1300 bytes of payload (a python3 sender blasts
#     datagrams at the guest's UDP echo port for 3 s; frames/s = datagrams the guest counted);
#   - TCP discard throughput (port 9, 3 s);
#   - doorbells per frame on both sides (guest counters line, bridge --stats-json).
# Prints a markdown table for BENCHMARKS.md. As root; builds what it needs.
#
# Usage: scripts/bench-guest.sh [--accel auto|kvm|tcg] [--secs N]
set -euo pipefail

accel=auto secs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --accel) accel=${2:?}; shift ;;
    --secs) secs=${2:?}; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench-guest: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench-guest: needs root" >&2; exit 1; }
cd "$(dirname "$0")/.."
# shellcheck source=scripts/wait-for.sh
source scripts/wait-for.sh
scripts/install-deps.sh >/dev/null
cargo build --release -q -p ivshmem-server -p ivnet-bridge
(cd bare-metal-guest && cargo build --release -q)
guest=$PWD/bare-metal-guest/target/x86_64-unknown-none/release/ivnet-guest

qemu_accel=(-accel tcg)
if [ "$accel" != tcg ] && [ -w /dev/kvm ]; then
  for cpu in host host,-arch-capabilities; do
    if timeout 20 qemu-system-x86_64 -machine q35 -accel kvm -cpu "$cpu" -m 16M -nodefaults \
        -display none -no-reboot -bios /usr/share/qemu/qboot.rom \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$guest" \
        -append "selftest=boot" >/dev/null 2>&1 </dev/null; [ $? -eq 33 ]; then
      qemu_accel=(-accel kvm -cpu "$cpu"); break
    fi
  done
  [ "$accel" = kvm ] && [ "${qemu_accel[1]}" = tcg ] && { echo "KVM does not work here" >&2; exit 1; }
fi

ns=ivnet-bench
work=$(mktemp -d /tmp/ivnet-bench.XXXXXX)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  ip netns del "$ns" 2>/dev/null || true
}
trap 'stop_all; rm -rf "$work"' EXIT

start_link() {  # $1 = mode
  stop_all
  rm -f "$work"/*
  target/release/ivshmem-server -S "$work/s.sock" --ready-file "$work/ready" 2>/dev/null &
  pids+=($!)
  wait_for 10 "ivshmem-server readiness" test -e "$work/ready" || exit 1
  qemu-system-x86_64 -machine q35 "${qemu_accel[@]}" -m 64M -nodefaults -display none -no-reboot \
    -bios /usr/share/qemu/qboot.rom -serial "file:$work/guest.log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$guest" \
    -append "ip=10.77.0.2/24 mode=$1 stats=0" \
    -chardev "socket,path=$work/s.sock,id=ivs" -device ivshmem-doorbell,chardev=ivs,vectors=2 \
    </dev/null 2>/dev/null &
  pids+=($!)
  ip netns add "$ns"
  target/release/ivnet-bridge --server "$work/s.sock" --tap ivnet0 --netns "$ns" --mode "$1" \
    --stats-json >"$work/bridge.json" 2>"$work/bridge.log" &
  bridge=$!
  pids+=($bridge)
  wait_for 20 "TAP ivnet0 in $ns" tap_exists || { cat "$work/bridge.log"; exit 1; }
  ip -n "$ns" addr add 10.77.0.1/24 dev ivnet0
  ip -n "$ns" link set ivnet0 up
  wait_for 60 "carrier on ivnet0 (link up)" carrier_on || { cat "$work/bridge.log"; exit 1; }
}
tap_exists() { ip -n "$ns" link show ivnet0 >/dev/null 2>&1; }
carrier_on() { [ "$(ip netns exec "$ns" cat /sys/class/net/ivnet0/carrier 2>/dev/null)" = 1 ]; }

# Guest counters through its UDP stats port (7777) as "key=value" words.
guest_stats() {
  ip netns exec "$ns" python3 - <<'EOF'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for _ in range(5):
    s.sendto(b"stats", ("10.77.0.2", 7777))
    try:
        print(s.recvfrom(4096)[0].decode()); break
    except socket.timeout:
        pass
else:
    raise SystemExit("bench-guest: the guest did not answer on its UDP stats port")
EOF
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }

bridge_stats() {  # prints the JSON line the bridge answers SIGUSR1 with
  local before
  before=$(count_lines '"reason":"signal"' "$work/bridge.json")
  kill -USR1 "$bridge"
  wait_for 10 "the bridge's counters after SIGUSR1" \
    more_lines_than "$before" '"reason":"signal"' "$work/bridge.json" || exit 1
  complete_lines "$work/bridge.json" | grep -F '"reason":"signal"' | tail -n1
}

udp_blast() {  # $1 = payload bytes; prints datagrams sent
  ip netns exec "$ns" python3 - "$1" "$secs" <<'EOF'
import socket, sys, time
size, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
payload = b"x" * size; n = 0; end = time.time() + secs
while time.time() < end:
    for _ in range(64):
        try:
            s.sendto(payload, ("10.77.0.2", 7)); n += 1
        except BlockingIOError:
            pass
print(n)
EOF
}

tcp_discard() {  # prints MB/s
  ip netns exec "$ns" python3 - "$secs" <<'EOF'
import socket, sys, time
secs = float(sys.argv[1])
s = socket.create_connection(("10.77.0.2", 9), timeout=10)
buf = b"\0" * 65536; sent = 0; start = time.time()
while time.time() - start < secs:
    sent += s.send(buf)
el = time.time() - start
s.close()
print(f"{sent / el / 1e6:.1f}")
EOF
}

echo "# ivnet guest benchmark (${qemu_accel[*]}, $(nproc) CPUs, ${secs}s per measurement)"
echo "| mode | ping RTT avg | UDP 64 B frames/s | UDP 1300 B frames/s | TCP discard MB/s | guest doorbells/frame | bridge doorbells/frame |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for mode in event poll; do
  start_link "$mode"
  rtt=$(ip netns exec "$ns" ping -q -c 200 -i 0.005 10.77.0.2 | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
  rates=()
  for size in 64 1300; do
    before=$(guest_stats | field rx_frames)
    t0=$(date +%s.%N)
    udp_blast "$size" >/dev/null
    sleep 0.5
    after=$(guest_stats | field rx_frames)
    t1=$(date +%s.%N)
    rates+=("$(python3 -c "print(int(($after - $before) / ($t1 - $t0 - 0.5)))")")
  done
  mbps=$(tcp_discard)
  g=$(guest_stats)
  b=$(bridge_stats)
  gdpf=$(python3 -c "
rx=int('$(echo "$g" | field rx_frames)'); tx=int('$(echo "$g" | field tx_frames)'); d=int('$(echo "$g" | field doorbells_rung)')
print(f'{d/max(rx+tx,1):.4f}')")
  bdpf=$(python3 -c "
import json; j=json.loads('''$b''')
r=j['ring']; print(f\"{r['doorbells_requested']/max(r['tx_frames']+r['rx_frames'],1):.4f}\")")
  echo "| $mode | ${rtt} ms | ${rates[0]} | ${rates[1]} | $mbps | $gdpf | $bdpf |"
done
