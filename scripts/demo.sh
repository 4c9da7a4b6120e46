#!/usr/bin/env bash
# ivnet demo: an Ethernet link over shared memory, end to end.
#
#   ivshmem-server ──┬── QEMU: bare-metal guest (10.77.0.2), ivshmem-doorbell
#                    └── ivnet-bridge ── TAP ivnet0 (10.77.0.1) in netns ivnet-demo
#
# Installs what is missing, builds everything, starts the server, boots the
# guest, starts the bridge, pings the guest from the namespace, prints the
# counters of both sides, and cleans up.
#
# Usage: scripts/demo.sh [--keep] [--count N] [--accel auto|kvm|tcg] [--mode event|poll]
#                        [--arch x86_64|aarch64]
#   --keep       leave everything running until Ctrl-C (try: ip netns exec ivnet-demo bash)
#   --count N    pings to send (default 5)
#   --accel A    QEMU accelerator (default auto: KVM when it works, else TCG)
#   --mode M     guest and bridge wait mode (default event)
#   --arch A     the guest: x86_64 (q35) or aarch64 (virt with GICv2, always TCG)
set -euo pipefail

keep=0 count=5 accel=auto mode=event arch=x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --count) count=${2:?--count needs a number}; shift ;;
    --accel) accel=${2:?--accel needs auto, kvm or tcg}; shift ;;
    --mode) mode=${2:?--mode needs event or poll}; shift ;;
    --arch) arch=${2:?--arch needs x86_64 or aarch64}; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$accel" in auto|kvm|tcg) ;; *) echo "demo: --accel must be auto, kvm or tcg" >&2; exit 2 ;; esac
case "$mode" in event|poll) ;; *) echo "demo: --mode must be event or poll" >&2; exit 2 ;; esac
case "$arch" in x86_64|aarch64) ;; *) echo "demo: --arch must be x86_64 or aarch64" >&2; exit 2 ;; esac
[[ "$count" =~ ^[0-9]+$ ]] || { echo "demo: --count must be a number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (TAP devices and network namespaces)" >&2; exit 1; }

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/wait-for.sh
source scripts/wait-for.sh
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing what is missing"
scripts/install-deps.sh

say "building ivshmem-server, ivnet-bridge and the bare-metal guest"
cargo build --release -q -p ivshmem-server -p ivnet-bridge
if [ "$arch" = aarch64 ]; then
  bare-metal-guest/aarch64/build-image.sh -q
  guest=$root/bare-metal-guest/aarch64/target/aarch64-unknown-none/release/ivnet-guest-aarch64.bin
else
  (cd bare-metal-guest && cargo build --release -q)
  guest=$root/bare-metal-guest/target/x86_64-unknown-none/release/ivnet-guest
fi
size=$(stat -c %s "$guest")
echo "guest image: $guest ($size bytes)"

work=$(mktemp -d /tmp/ivnet-demo.XXXXXX)
ns=ivnet-demo
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  if [ "$keep" = 1 ] || [ "${IVNET_DEMO_KEEP_LOGS:-0}" = 1 ]; then
    echo "logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting ivshmem-server"
target/release/ivshmem-server -S "$work/ivshmem.sock" --ready-file "$work/ready" \
  2>"$work/server.log" &
pids+=($!)
wait_for 10 "ivshmem-server readiness ($work/ready)" test -e "$work/ready" \
  || { cat "$work/server.log"; exit 1; }
echo "listening on $work/ivshmem.sock (1 MiB window: layout page, state table, 2 x 0x7f000 sections)"

# QEMU: KVM when it works (nested here), TCG otherwise. qboot boots in well
# under a second; the guest places the BARs itself.
qemu_accel=()
kvm_boots() {  # $1 = CPU model; the guest's boot self-test exits with status 33
  timeout 20 qemu-system-x86_64 -machine q35 -accel kvm -cpu "$1" -m 16M -nodefaults \
    -display none -no-reboot -bios /usr/share/qemu/qboot.rom \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$guest" \
    -append "selftest=boot" >/dev/null 2>&1 </dev/null
  [ $? -eq 33 ]
}
if [ "$arch" = x86_64 ] && [ "$accel" != tcg ] && [ -w /dev/kvm ] && [ -f /usr/share/qemu/qboot.rom ]; then
  # Nested KVM may reject "host" (MSR 0x10a); drop arch-capabilities then.
  for cpu in host host,-arch-capabilities; do
    if kvm_boots "$cpu"; then qemu_accel=(-accel kvm -cpu "$cpu"); break; fi
  done
fi
if [ "${#qemu_accel[@]}" = 0 ]; then
  [ "$accel" = kvm ] && { echo "demo: KVM requested but it does not work here" >&2; exit 1; }
  qemu_accel=(-accel tcg)
fi
firmware=()
[ -f /usr/share/qemu/qboot.rom ] && firmware=(-bios /usr/share/qemu/qboot.rom)

say "booting the bare-metal $arch guest (${qemu_accel[*]})"
if [ "$arch" = aarch64 ]; then
  qemu_machine=(qemu-system-aarch64 -machine virt,gic-version=2 -cpu cortex-a57
                -semihosting-config enable=on,target=native)
else
  qemu_machine=(qemu-system-x86_64 -machine q35 "${firmware[@]}"
                -device isa-debug-exit,iobase=0xf4,iosize=0x04)
fi
"${qemu_machine[@]}" "${qemu_accel[@]}" -m 64M -nodefaults -display none \
  -no-reboot -serial "file:$work/guest.log" \
  -kernel "$guest" -append "ip=10.77.0.2/24 mode=$mode stats=2" \
  -chardev "socket,path=$work/ivshmem.sock,id=ivs" \
  -device ivshmem-doorbell,chardev=ivs,vectors=2 </dev/null 2>"$work/qemu.log" &
pids+=($!)

say "starting ivnet-bridge with TAP ivnet0 in network namespace $ns"
ip netns add "$ns"
bridge_mode=$mode
target/release/ivnet-bridge --server "$work/ivshmem.sock" --tap ivnet0 --netns "$ns" \
  --mode "$bridge_mode" 2>"$work/bridge.log" &
bridge=$!
pids+=($bridge)
tap_exists() { ip -n "$ns" link show ivnet0 >/dev/null 2>&1; }
wait_for 20 "TAP ivnet0 in $ns" tap_exists || { cat "$work/bridge.log"; exit 1; }
ip -n "$ns" addr add 10.77.0.1/24 dev ivnet0
ip -n "$ns" link set ivnet0 up
ip -n "$ns" link set lo up

echo "waiting for carrier"
carrier_on() { [ "$(ip netns exec "$ns" cat /sys/class/net/ivnet0/carrier 2>/dev/null)" = 1 ]; }
if ! wait_for 60 "carrier on ivnet0" carrier_on; then
  echo "demo: the link did not come up; logs:" >&2
  tail -n 20 "$work/guest.log" "$work/bridge.log" >&2
  exit 1
fi
echo "link is up: both peers in RUN"

say "ping 10.77.0.2 from netns $ns"
status=0
ip netns exec "$ns" ping -c "$count" -i 0.2 10.77.0.2 || status=$?

say "counters"
# Counters from after the ping: the bridge answers SIGUSR1 with one
# "stats (signal)" line; the guest prints a "stats:" line every 2 s
# (stats=2). Wait for the new lines, not for a fixed time.
bridge_reports=$(count_lines 'stats (signal)' "$work/bridge.log")
guest_reports=$(count_lines 'stats: ' "$work/guest.log")
kill -USR1 "$bridge"
wait_for 10 "the bridge's counters line after SIGUSR1" \
  more_lines_than "$bridge_reports" 'stats (signal)' "$work/bridge.log" || exit 1
wait_for 10 "the guest's next counters line" \
  more_lines_than "$guest_reports" 'stats: ' "$work/guest.log" || exit 1
echo "-- ivnet-bridge:"
complete_lines "$work/bridge.log" | grep -F 'stats (signal)' | tail -n 1
echo "-- bare-metal guest (serial console):"
complete_lines "$work/guest.log" | grep -F 'stats: ' | tail -n 1

if [ "$keep" = 1 ]; then
  say "running; Ctrl-C to stop"
  echo "try: ip netns exec $ns ping 10.77.0.2   |   tail -f $work/guest.log $work/bridge.log"
  wait "$bridge"
fi
exit $status
