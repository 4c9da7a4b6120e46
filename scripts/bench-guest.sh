#!/usr/bin/env bash
# Benchmark: the bare-metal guest on ivshmem-net (QEMU ↔ ivnet-bridge ↔ TAP) against the
# same guest image on virtio-net (QEMU's virtio-net-pci on a TAP), in one run, with the same
# workload and the same TAP-side tools, every TAP in a network namespace.
#
# Configurations: ivnet event, ivnet poll (guest mode= and bridge --mode), virtio event,
# virtio poll (guest mode=). virtio-net uses vhost-net where /dev/vhost-net exists, else
# QEMU's own TAP backend (vhost=off). All at the same IP MTU (--mtu, default 1500:
# virtio-net's).
#
# Per configuration, from the namespace:
#   - ping RTT avg and p99 (56-byte payload, 200 pings, 5 ms apart);
#   - UDP frames/s into the guest at 64 and 1300 bytes of payload (ivnet-udp-load blast:
#     sendmmsg, 64 datagrams per call, to the guest's UDP echo port for N s; frames/s =
#     frames the guest counted, including the drain after the sender stops);
#   - during the 1300-byte blast: the guest's notifications (ivnet doorbells / virtio kicks)
#     and interrupts per frame (rx+tx), the bridge's doorbells per frame (ivnet), and host
#     CPU seconds per million frames of QEMU, ivnet-bridge and ivshmem-server together
#     (utime+stime from /proc; the kernel's TAP work in softirq is not attributed);
#   - UDP echo round trips (one 64-byte datagram at a time: round trips/s, avg, p99);
#   - TCP discard throughput (port 9, N s).
# Prints markdown tables (raw, and ivnet/virtio ratios with the targets), the load average
# before and after, and writes a plot (gnuplot, PNG).
#
# Usage: scripts/bench-guest.sh [--accel auto|kvm|tcg] [--secs N] [--mtu N] [--plot FILE]
#        [--configs "ivnet-event ivnet-poll virtio-event virtio-poll"]   (the ratio table needs all four)
set -euo pipefail

accel=auto secs=3 mtu=1500 plot=benchmarks/guest-nics.png
configs="ivnet-event ivnet-poll virtio-event virtio-poll"
while [ $# -gt 0 ]; do
  case "$1" in
    --accel) accel=${2:?}; shift ;;
    --secs) secs=${2:?}; shift ;;
    --mtu) mtu=${2:?}; shift ;;
    --plot) plot=${2:?}; shift ;;
    --configs) configs=${2:?}; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench-guest: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench-guest: needs root" >&2; exit 1; }
cd "$(dirname "$0")/.."
# shellcheck source=scripts/wait-for.sh
source scripts/wait-for.sh
scripts/install-deps.sh >/dev/null
command -v gnuplot >/dev/null || apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
cargo build --release -q -p ivshmem-server -p ivnet-bridge -p ivnet-e2e --bin ivnet-udp-load
(cd bare-metal-guest && cargo build --release -q)
guest=$PWD/bare-metal-guest/target/x86_64-unknown-none/release/ivnet-guest
udp_load=$PWD/target/release/ivnet-udp-load

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
vhost=off
[ -e /dev/vhost-net ] && vhost=on

ns=ivnet-bench
tap=ivnet0
guest_ip=10.77.0.2
work=$(mktemp -d /tmp/ivnet-bench.XXXXXX)
pids=() bridge="" cpu_pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=() bridge="" cpu_pids=()
  ip netns del "$ns" 2>/dev/null || true
}
trap 'stop_all; rm -rf "$work" "${data:-}"' EXIT

qemu_base() {  # $1 = extra -append words; the rest: extra QEMU arguments
  local append=$1; shift
  qemu-system-x86_64 -machine q35 "${qemu_accel[@]}" -m 64M -nodefaults -display none -no-reboot \
    -bios /usr/share/qemu/qboot.rom -serial "file:$work/guest.log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$guest" \
    -append "ip=$guest_ip/24 stats=0 $append" "$@" </dev/null 2>"$work/qemu.log" &
  pids+=($!) cpu_pids+=($!)
}

start_ivnet() {  # $1 = mode
  target/release/ivshmem-server -S "$work/s.sock" --ready-file "$work/ready" 2>/dev/null &
  pids+=($!) cpu_pids+=($!)
  wait_for 10 "ivshmem-server readiness" test -e "$work/ready" || exit 1
  qemu_base "mode=$1 mtu=$mtu" \
    -chardev "socket,path=$work/s.sock,id=ivs" -device ivshmem-doorbell,chardev=ivs,vectors=2
  ip netns add "$ns"
  target/release/ivnet-bridge --server "$work/s.sock" --tap "$tap" --netns "$ns" --mode "$1" \
    --mtu "$mtu" --stats-json >"$work/bridge.json" 2>"$work/bridge.log" &
  bridge=$!
  pids+=("$bridge") cpu_pids+=("$bridge")
  wait_for 20 "TAP $tap in $ns" tap_exists || { cat "$work/bridge.log"; exit 1; }
  ip -n "$ns" addr add 10.77.0.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  wait_for 60 "carrier on $tap (link up)" carrier_on || { cat "$work/bridge.log"; exit 1; }
}

start_virtio() {  # $1 = mode
  ip netns add "$ns"
  local host_tap=ivbench$$
  qemu_base "mode=$1 nic=virtio" \
    -netdev "tap,id=n0,ifname=$host_tap,script=no,downscript=no,vhost=$vhost" \
    -device virtio-net-pci,netdev=n0,mac=02:00:0a:4d:00:02
  wait_for 20 "QEMU's TAP $host_tap" host_link_exists "$host_tap" || { cat "$work/qemu.log"; exit 1; }
  ip link set "$host_tap" netns "$ns"
  ip -n "$ns" link set "$host_tap" name "$tap"
  ip -n "$ns" link set "$tap" mtu "$mtu"
  ip -n "$ns" addr add 10.77.0.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  wait_for 60 "the guest's services" grep -q "services:" "$work/guest.log" || { cat "$work/guest.log"; exit 1; }
}

start_link() {  # $1 = nic, $2 = mode
  stop_all
  rm -f "$work"/*
  "start_$1" "$2"
}
host_link_exists() { ip link show "$1" >/dev/null 2>&1; }
tap_exists() { ip -n "$ns" link show "$tap" >/dev/null 2>&1; }
carrier_on() { [ "$(ip netns exec "$ns" cat /sys/class/net/$tap/carrier 2>/dev/null)" = 1 ]; }

# Guest counters through its UDP stats port (7777) as "key=value" words.
guest_stats() {
  ip netns exec "$ns" python3 - <<EOF
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for _ in range(5):
    s.sendto(b"stats", ("$guest_ip", 7777))
    try:
        print(s.recvfrom(4096)[0].decode()); break
    except socket.timeout:
        pass
else:
    raise SystemExit("bench-guest: the guest did not answer on its UDP stats port")
EOF
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }

bridge_doorbells() {  # the bridge's doorbells requested so far (ivnet only; 0 otherwise)
  [ -n "$bridge" ] || { echo 0; return; }
  local before
  before=$(count_lines '"reason":"signal"' "$work/bridge.json")
  kill -USR1 "$bridge"
  wait_for 10 "the bridge's counters after SIGUSR1" \
    more_lines_than "$before" '"reason":"signal"' "$work/bridge.json" || exit 1
  complete_lines "$work/bridge.json" | grep -F '"reason":"signal"' | tail -n1 |
    python3 -c "import json,sys; print(json.load(sys.stdin)['ring']['doorbells_requested'])"
}

cpu_ticks() {  # utime+stime of QEMU, ivnet-bridge, ivshmem-server, in clock ticks
  local t=0 pid
  for pid in "${cpu_pids[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$t"
}

tcp_discard() {  # prints MB/s
  ip netns exec "$ns" python3 - "$secs" <<EOF
import socket, sys, time
secs = float(sys.argv[1])
s = socket.create_connection(("$guest_ip", 9), timeout=10)
buf = b"\0" * 65536; sent = 0; start = time.time()
while time.time() - start < secs:
    sent += s.send(buf)
el = time.time() - start
s.close()
print(f"{sent / el / 1e6:.1f}")
EOF
}

hz=$(getconf CLK_TCK)
data=$(mktemp /tmp/ivnet-bench-results.XXXXXX.tsv)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'config\trtt_avg_ms\trtt_p99_ms\tudp64_fps\tudp1300_fps\tnotif_pf\tirq_pf\tbridge_db_pf\tcpu_s_per_mframe\techo_rt_s\techo_avg_us\techo_p99_us\ttcp_mb_s\n' >"$data"
for config in $configs; do
  IFS=- read -r nic mode <<<"$config"
  echo "bench-guest: $config" >&2
  start_link "$nic" "$mode"
  # Warm-up (ARP, first interrupts), then the pings.
  ip netns exec "$ns" ping -q -c 3 -i 0.05 "$guest_ip" >/dev/null
  read -r rtt_avg rtt_p99 < <(ip netns exec "$ns" ping -c 200 -i 0.005 "$guest_ip" |
    python3 -c "
import re, sys
t = sorted(float(m.group(1)) for m in re.finditer(r'time=([0-9.]+)', sys.stdin.read()))
print(f'{sum(t)/len(t):.3f} {t[min(len(t)-1, len(t)*99//100)]:.3f}')")
  rates=()
  for size in 64 1300; do
    g0=$(guest_stats); c0=$(cpu_ticks); b0=$(bridge_doorbells)
    t0=$(date +%s.%N)
    ip netns exec "$ns" "$udp_load" blast "$guest_ip:7" "$size" "$secs" >/dev/null
    sleep 0.5   # let the guest drain what is queued
    g1=$(guest_stats); c1=$(cpu_ticks); b1=$(bridge_doorbells)
    t1=$(date +%s.%N)
    read -r rate notif irq bdb cpu < <(python3 -c "
def f(s, k): return int(next(w.split('=')[1] for w in s.split() if w.startswith(k + '=')))
g0, g1 = '''$g0''', '''$g1'''
d = lambda k: f(g1, k) - f(g0, k)
frames = max(d('rx_frames') + d('tx_frames'), 1)
el = $t1 - $t0
print(int(d('rx_frames') / el), f\"{d('notifications')/frames:.4f}\", f\"{d('interrupts')/frames:.4f}\",
      f'{($b1 - $b0)/frames:.4f}', f'{($c1 - $c0) / $hz / frames * 1e6:.2f}')")
    rates+=("$rate")
  done
  read -r echo_rt echo_avg echo_p99 < <(ip netns exec "$ns" "$udp_load" echo "$guest_ip:7" 64 "$secs" |
    python3 -c "import json,sys; j=json.load(sys.stdin); print(int(j['round_trips']/j['secs']), j['avg_us'], j['p99_us'])")
  mbps=$(tcp_discard) || { mbps=stalled; echo "bench-guest: $config: TCP discard stalled; guest: $(guest_stats)" >&2; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$nic-$mode" "$rtt_avg" "$rtt_p99" \
    "${rates[0]}" "${rates[1]}" "$notif" "$irq" "$bdb" "$cpu" "$echo_rt" "$echo_avg" "$echo_p99" "$mbps" >>"$data"
done
stop_all
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "# guest NICs: ivnet vs virtio-net (${qemu_accel[*]}, $(nproc) CPUs, ${secs}s per measurement, MTU $mtu, virtio vhost=$vhost)"
echo "# load average before: $load_before, after: $load_after"
python3 - "$data" <<'EOF'
import csv, sys
rows = {r['config']: r for r in csv.DictReader(open(sys.argv[1]), delimiter='\t')}
cols = [('rtt_avg_ms', 'ping RTT avg ms'), ('rtt_p99_ms', 'ping RTT p99 ms'),
        ('udp64_fps', 'UDP 64 B frames/s'), ('udp1300_fps', 'UDP 1300 B frames/s'),
        ('notif_pf', 'guest notifications/frame'), ('irq_pf', 'guest interrupts/frame'),
        ('bridge_db_pf', 'bridge doorbells/frame'), ('cpu_s_per_mframe', 'host CPU s/Mframe'),
        ('echo_rt_s', 'UDP echo round trips/s'), ('echo_avg_us', 'UDP echo avg µs'),
        ('echo_p99_us', 'UDP echo p99 µs'), ('tcp_mb_s', 'TCP discard MB/s')]
print('| config | ' + ' | '.join(c[1] for c in cols) + ' |')
print('|---|' + '---:|' * len(cols))
for name, r in rows.items():
    print(f'| {name} | ' + ' | '.join(r[c[0]] for c in cols) + ' |')
print()
print('| ratio ivnet/virtio | ' + ' | '.join(c[1] for c in cols) + ' |')
print('|---|' + '---:|' * len(cols))
if not all(f'{n}-{m}' in rows for n in ('ivnet', 'virtio') for m in ('event', 'poll')):
    sys.exit(0)
for mode in ('event', 'poll'):
    a, b = rows[f'ivnet-{mode}'], rows[f'virtio-{mode}']
    def ratio(k):
        try:
            x, y = float(a[k]), float(b[k])
        except ValueError:
            return 'n/a'
        return f'{x / y:.2f}' if y else 'n/a'
    print(f'| {mode} | ' + ' | '.join(ratio(c[0]) for c in cols) + ' |')
a, b = rows['ivnet-event'], rows['virtio-event']
def r(k):
    y = float(b[k])
    return float(a[k]) / y if y else float('inf')
checks = [('RTT ivnet/virtio <= 0.5', r('rtt_avg_ms'), r('rtt_avg_ms') <= 0.5),
          ('UDP 1300 B frames/s ivnet/virtio >= 1.5', r('udp1300_fps'), r('udp1300_fps') >= 1.5),
          ('notifications/frame ivnet/virtio <= 0.1', r('notif_pf'), r('notif_pf') <= 0.1)]
print()
for name, v, ok in checks:
    print(f'target (event mode) {name}: {v:.3f} -> {"met" if ok else "MISSED"}')
EOF

mkdir -p "$(dirname "$plot")"
gnuplot <<EOF
set terminal pngcairo size 1200,800 font ",10"
set output "$plot"
set datafile separator "\t"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.8
set key off
set key autotitle columnheader
unset key
set yrange [0:*]
set grid ytics
set xtics rotate by -20
set multiplot layout 2,3 title "ivnet vs virtio-net, same guest image (${qemu_accel[*]}, MTU $mtu, vhost=$vhost; load $load_before)"
set title "ping RTT avg (ms, log scale, lower is better)"
set logscale y
set yrange [0.01:*]
plot "$data" using 2:xtic(1) lc rgb "#4477aa"
unset logscale y
set yrange [0:*]
set title "UDP 1300 B frames/s into the guest"
plot "$data" using 5:xtic(1) lc rgb "#228833"
set title "UDP 64 B frames/s into the guest"
plot "$data" using 4:xtic(1) lc rgb "#66ccee"
set title "guest notifications per frame (1300 B load)"
set logscale y
set yrange [1e-4:*]
plot "$data" using (\$6 > 0 ? \$6 : 1e-4):xtic(1) lc rgb "#ee6677"
unset logscale y
set yrange [0:*]
set title "host CPU s per million frames"
plot "$data" using 9:xtic(1) lc rgb "#aa3377"
set title "UDP echo round trips/s"
plot "$data" using 10:xtic(1) lc rgb "#ccbb44"
unset multiplot
EOF
echo "# plot: $plot"
