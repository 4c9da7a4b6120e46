# shellcheck shell=bash
# What the bridge benchmarks (bench-bridge.sh, bench-regression.sh,
# bench-wakeups.sh) share: two network namespaces $A and $B, a work directory
# $WORK, background processes in PIDS (killed, and the namespaces and $WORK
# removed, on exit), the link between the namespaces (ivshmem-server and two
# bridges) and the measurements they take. Source it once ROOT is set, with
# the benchmark's short name (namespace and /tmp prefix) as argument:
#   source "$ROOT/scripts/bench-lib.sh" ivbench
# ping_avg reads PINGS (and INTERVAL, default 0.002), tcp_gbit DURATION,
# start_bridges SERVER_ARGS.

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAP devices)" >&2; exit 1; }
# shellcheck source=scripts/wait-for.sh
source "$ROOT/scripts/wait-for.sh"
# shellcheck disable=SC2034 # read by the scripts that source this one
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TAG=$1$$
WORK=$(mktemp -d "/tmp/$1.XXXXXX")
A=$TAG-a
B=$TAG-b

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "$A" "$B"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ping_avg() {  # NS DST -> average RTT in microseconds
    ip netns exec "$1" ping -n -q -c "$PINGS" -i "${INTERVAL:-0.002}" -s 56 "$2" \
        | awk -F'/' '/^rtt/ { printf "%.1f\n", $5 * 1000 }'
}
iperf3_listening() { [ -n "$(ip netns exec "$1" ss -Hltn 'sport = :5201')" ]; }  # NS
tcp_gbit() {  # NS_CLIENT NS_SERVER DST -> Gbit/s received
    ip netns exec "$2" iperf3 -s -1 -D -I "$WORK/iperf.pid" >/dev/null
    wait_for 10 "iperf3 server in $2" iperf3_listening "$2" || exit 1
    ip netns exec "$1" iperf3 -c "$3" -t "$DURATION" -J >"$WORK/iperf.json"
    python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf.json"
}
cpu_ticks() {  # PID... -> utime+stime summed, in clock ticks
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}
snapshot() {  # PID OUTFILE -> the bridge's counters (SIGUSR1), as one JSON line
    local before
    before=$(count_lines '"reason":"signal"' "$2")
    kill -USR1 "$1"
    wait_for 10 "bridge $1's counters after SIGUSR1" more_lines_than "$before" '"reason":"signal"' "$2" || exit 1
    complete_lines "$2" | grep -F '"reason":"signal"' | tail -1
}
doorbells() {  # A_BEFORE A_AFTER B_BEFORE B_AFTER -> data doorbells rung per frame sent, both bridges
    python3 - "$@" <<'PY'
import json, sys
s = [json.loads(x) for x in sys.argv[1:]]
rung = sum(b["bridge"]["doorbells_sent"] - a["bridge"]["doorbells_sent"] for a, b in (s[0:2], s[2:4]))
frames = sum(b["ring"]["tx_frames"] - a["ring"]["tx_frames"] for a, b in (s[0:2], s[2:4]))
print("%.3f" % (rung / frames) if frames else "n/a")
PY
}
tap_exists() { ip -n "$1" link show "${2:-ivn0}" >/dev/null 2>&1; }  # NS [TAP]
carrier_on() { [ "$(ip netns exec "$1" cat "/sys/class/net/${2:-ivn0}/carrier" 2>/dev/null)" = 1 ]; }  # NS [TAP]

ns_up() {
    ip netns add "$A"; ip netns add "$B"
    for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
}
ns_down() { for ns in "$A" "$B"; do ip netns del "$ns"; done; }
addrs() {  # IFNAME -> 10.77.0.1 in $A, .2 in $B, carrier on, a first ping through
    ip -n "$A" addr add 10.77.0.1/24 dev "$1"; ip -n "$B" addr add 10.77.0.2/24 dev "$1"
    for ns in "$A" "$B"; do wait_for 20 "carrier on $1 in $ns" carrier_on "$ns" "$1" || exit 1; done
    ip netns exec "$A" ping -c 3 -i 0.05 -q 10.77.0.2 >/dev/null
}
start_bridges() {  # SERVER BRIDGE ARG... -> the server and a bridge (PA, PB) per namespace, TAP ivn0; ARGs to both bridges
    local server=$1 bridge=$2; shift 2
    # shellcheck disable=SC2086
    "$server" --socket "$WORK/s.sock" --ready-file "$WORK/ready" ${SERVER_ARGS:-} 2>"$WORK/server.err" &
    PIDS+=("$!")
    wait_for 10 "ivshmem-server readiness" test -e "$WORK/ready" || { cat "$WORK/server.err"; exit 1; }
    "$bridge" --server "$WORK/s.sock" --netns "$A" --tap ivn0 --stats-json "$@" >"$WORK/a.json" 2>"$WORK/a.err" &
    PA=$!; PIDS+=("$PA")
    "$bridge" --server "$WORK/s.sock" --netns "$B" --tap ivn0 --stats-json "$@" >"$WORK/b.json" 2>"$WORK/b.err" &
    PB=$!; PIDS+=("$PB")
    for ns in "$A" "$B"; do wait_for 20 "TAP ivn0 in $ns" tap_exists "$ns" || { cat "$WORK"/*.err; exit 1; }; done
}
stop_all() {  # ends what start_bridges (or a caller) put in PIDS
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    rm -f "$WORK/ready" "$WORK/s.sock" "$WORK"/a.json "$WORK"/b.json
}
