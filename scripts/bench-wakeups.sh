#!/usr/bin/env bash
# Wake-ups and system calls per ping round trip through two ivnet-bridges
# (two network namespaces, one ivshmem-server, MTU 1500), and system calls
# per frame under TCP load. Not a test: a measurement for BENCHMARKS.md §2.
#
# Per round trip: context switches of both bridge processes (voluntary =
# the thread slept and was woken; from /proc/PID/status, and `perf stat -e
# context-switches` when perf works), system calls of both bridges
# (`perf stat -e raw_syscalls:sys_enter`), doorbells received (the bridges'
# counters), RTT. Then an iperf3 run: system calls per frame moved.
#
# Run as root:  scripts/bench-wakeups.sh
# Environment: PINGS (default 2000), INTERVAL (ping -i, default 0.002),
# MODE (event|hybrid|poll), OFFLOAD (off|auto, default off: a plain peer),
# DURATION (iperf3 seconds, default 5), BRIDGE (binary, default the
# workspace's release build), CARGO_TARGET_DIR.
set -euo pipefail

PINGS=${PINGS:-2000}
INTERVAL=${INTERVAL:-0.002}
MODE=${MODE:-event}
OFFLOAD=${OFFLOAD:-off}
DURATION=${DURATION:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh" ivwake
if [ -z "${BRIDGE:-}" ]; then
    cargo build --release -q --manifest-path "$ROOT/Cargo.toml" --target-dir "$TARGET" \
        -p ivnet-bridge -p ivshmem-server
    BRIDGE=$TARGET/release/ivnet-bridge
fi
SERVER=${SERVER:-$TARGET/release/ivshmem-server}

ctxt() {  # PID... -> "voluntary nonvoluntary" summed over all threads
    local v=0 n=0 p t
    for p in "$@"; do
        for t in /proc/"$p"/task/*/status; do
            v=$((v + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t")))
            n=$((n + $(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t")))
        done
    done
    echo "$v $n"
}
field() {  # JSON_BEFORE JSON_AFTER SECTION KEY -> difference
    python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(b[sys.argv[3]][sys.argv[4]]-a[sys.argv[3]][sys.argv[4]])' "$@"
}
PERF=0
perf stat -e context-switches,raw_syscalls:sys_enter true >/dev/null 2>&1 && PERF=1
perf_counts() {  # OUT PIDS(comma) -> runs until killed, writes perf's CSV to OUT
    perf stat -x, -e context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_ioctl,syscalls:sys_enter_epoll_ctl -p "$2" -o "$1" &
}
perf_value() {  # FILE EVENT -> count
    awk -F, -v e="$2" '$3 == e {print $1}' "$1"
}
perf_breakdown() {  # FILE DIVISOR -> system calls by name, per DIVISOR
    awk -F, -v n="$2" '$3 ~ /^syscalls:sys_enter_/ && $1 > 0 {sub("syscalls:sys_enter_", "", $3); printf " %s %.2f", $3, $1 / n}' "$1"
}

ns_up
start_bridges "$SERVER" "$BRIDGE" --mtu 1500 --mode "$MODE" --offload "$OFFLOAD"
addrs ivn0
ip netns exec "$A" ping -c 20 -i 0.01 -q 10.77.0.2 >/dev/null

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r), mode $MODE, offload $OFFLOAD, bridge $BRIDGE"
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# 1. ping: wake-ups and system calls per round trip
sa0=$(snapshot "$PA" "$WORK/a.json"); sb0=$(snapshot "$PB" "$WORK/b.json")
read -r v0 n0 < <(ctxt "$PA" "$PB")
[ $PERF = 1 ] && { perf_counts "$WORK/perf-ping" "$PA,$PB"; PP=$!; }
rtt=$(ping_avg "$A" 10.77.0.2)
[ $PERF = 1 ] && { kill -INT "$PP"; wait "$PP" || true; }
read -r v1 n1 < <(ctxt "$PA" "$PB")
sa1=$(snapshot "$PA" "$WORK/a.json"); sb1=$(snapshot "$PB" "$WORK/b.json")
db=$(( $(field "$sa0" "$sa1" bridge doorbells_received) + $(field "$sb0" "$sb1" bridge doorbells_received) ))
python3 - "$PINGS" "$rtt" "$((v1 - v0))" "$((n1 - n0))" "$db" <<'PY'
import sys
n, rtt, vol, inv, db = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:])
print("ping: %d round trips, RTT %s us; per round trip, both bridges: %.2f voluntary + %.2f involuntary context switches, %.2f doorbells received"
      % (n, rtt, vol / n, inv / n, db / n))
PY
if [ $PERF = 1 ]; then
    cs=$(perf_value "$WORK/perf-ping" context-switches); sc=$(perf_value "$WORK/perf-ping" raw_syscalls:sys_enter)
    python3 -c 'import sys; n,cs,sc=map(float,sys.argv[1:]); print("perf: per round trip, both bridges: %.2f context switches, %.2f system calls" % (cs/n, sc/n))' "$PINGS" "$cs" "$sc"
    echo "perf: by name, per round trip:$(perf_breakdown "$WORK/perf-ping" "$PINGS")"
fi
# 2. TCP: system calls per frame moved
command -v iperf3 >/dev/null || exit 0
sa0=$(snapshot "$PA" "$WORK/a.json"); sb0=$(snapshot "$PB" "$WORK/b.json")
read -r v0 n0 < <(ctxt "$PA" "$PB")
[ $PERF = 1 ] && { perf_counts "$WORK/perf-tcp" "$PA,$PB"; PP=$!; }
gbit=$(tcp_gbit "$A" "$B" 10.77.0.2)
[ $PERF = 1 ] && { kill -INT "$PP"; wait "$PP" || true; }
read -r v1 n1 < <(ctxt "$PA" "$PB")
sa1=$(snapshot "$PA" "$WORK/a.json"); sb1=$(snapshot "$PB" "$WORK/b.json")
frames=$(( $(field "$sa0" "$sa1" ring tx_frames) + $(field "$sb0" "$sb1" ring tx_frames) ))
echo "tcp A->B: $gbit Gbit/s, $frames frames sent (both bridges), $(python3 -c "print('%.3f' % (($v1-$v0+$n1-$n0)/$frames))") context switches per frame"
if [ $PERF = 1 ]; then
    sc=$(perf_value "$WORK/perf-tcp" raw_syscalls:sys_enter)
    python3 -c 'import sys; f,sc=map(float,sys.argv[1:]); print("perf: %.2f system calls per frame sent (both bridges; each frame is one TAP read and one TAP write)" % (sc/f))' "$frames" "$sc"
    echo "perf: by name, per frame:$(perf_breakdown "$WORK/perf-tcp" "$frames")"
fi
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
