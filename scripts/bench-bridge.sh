#!/usr/bin/env bash
# Benchmark: ping RTT and TCP throughput between two network namespaces
# through two ivnet-bridges over one ivshmem-server, and -- in the same run,
# as the baseline -- through a veth pair. Prints the ratios and the doorbells
# per frame on each side (from the bridges' --stats-json counters).
#
# Not a test: numbers depend on the machine and its load. Run as root:
#   scripts/bench-bridge.sh                  # MTU 1500 and 16384, event mode
#   MTUS=16384 MODE=hybrid DURATION=10 scripts/bench-bridge.sh
#
# Environment: MTUS (list), MODE (event|poll|hybrid), DURATION (s per iperf3
# run), PINGS (echo requests per RTT measurement), BRIDGE_ARGS (more
# ivnet-bridge arguments), CARGO_TARGET_DIR.
# Addresses: 10.77.0.1/.2 (bridges) and 10.77.0.11/.12 (veth), each inside
# namespaces this script creates and deletes.
set -euo pipefail

MTUS=${MTUS:-"1500 16384"}
MODE=${MODE:-event}
DURATION=${DURATION:-5}
PINGS=${PINGS:-500}
BRIDGE_ARGS=${BRIDGE_ARGS:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TAG=ivbench$$
WORK=$(mktemp -d /tmp/ivnet-bench.XXXXXX)

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAP devices)" >&2; exit 1; }
# shellcheck source=scripts/wait-for.sh
source "$ROOT/scripts/wait-for.sh"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${need[@]}"
fi

cargo build --release -q --manifest-path "$ROOT/Cargo.toml" --target-dir "$TARGET" -p ivnet-bridge -p ivshmem-server
BRIDGE=$TARGET/release/ivnet-bridge
SERVER=$TARGET/release/ivshmem-server

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "$TAG-a" "$TAG-b" "$TAG-va" "$TAG-vb"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# ping_avg NS DST SIZE -> average RTT in microseconds
ping_avg() {
    ip netns exec "$1" ping -n -q -c "$PINGS" -i 0.002 -s "$3" "$2" \
        | awk -F'/' '/^rtt/ { printf "%.1f\n", $5 * 1000 }'
}

# iperf3_listening NS: whether an iperf3 server listens on its port in NS.
iperf3_listening() {
    [ -n "$(ip netns exec "$1" ss -Hltn 'sport = :5201')" ]
}

# tcp_gbit NS_CLIENT NS_SERVER DST -> Gbit/s received, client -> server
tcp_gbit() {
    ip netns exec "$2" iperf3 -s -1 -D -I "$WORK/iperf.pid" >/dev/null
    wait_for 10 "iperf3 server in $2" iperf3_listening "$2" || exit 1
    ip netns exec "$1" iperf3 -c "$3" -t "$DURATION" -J >"$WORK/iperf.json"
    python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf.json"
}

# snapshot PID OUTFILE: ask a bridge for its counters (SIGUSR1) and print
# the JSON line it answers with (complete lines only, newer than the signal).
snapshot() {
    local before
    before=$(count_lines '"reason":"signal"' "$2")
    kill -USR1 "$1"
    wait_for 10 "bridge $1's counters after SIGUSR1" \
        more_lines_than "$before" '"reason":"signal"' "$2" || exit 1
    complete_lines "$2" | grep -F '"reason":"signal"' | tail -1
}

# per_frame BEFORE AFTER -> "tx doorbells/frame, rx wakeups/frame" over the interval
per_frame() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
d = lambda sect, k: b[sect][k] - a[sect][k]
tx, rx = d("ring", "tx_frames"), d("ring", "rx_frames")
sent, recv = d("bridge", "doorbells_sent"), d("bridge", "doorbells_received")
print("%.4f %.4f %d %d" % (sent / tx if tx else 0, recv / rx if rx else 0, tx, rx))
EOF
}

echo "# ivnet-bridge benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r), mode $MODE"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"

for MTU in $MTUS; do
    # --- baseline: veth pair ------------------------------------------------
    ip netns add "$TAG-va"; ip netns add "$TAG-vb"
    ip link add "${TAG}x" type veth peer name "${TAG}y"
    ip link set "${TAG}x" netns "$TAG-va"; ip link set "${TAG}y" netns "$TAG-vb"
    ip -n "$TAG-va" link set "${TAG}x" name veth0 mtu "$MTU" up
    ip -n "$TAG-vb" link set "${TAG}y" name veth0 mtu "$MTU" up
    ip -n "$TAG-va" addr add 10.77.0.11/24 dev veth0
    ip -n "$TAG-vb" addr add 10.77.0.12/24 dev veth0
    for ns in "$TAG-va" "$TAG-vb"; do ip -n "$ns" link set lo up; done

    # --- ivnet: two bridges over one server ---------------------------------
    ip netns add "$TAG-a"; ip netns add "$TAG-b"
    "$SERVER" --socket "$WORK/s.sock" --ready-file "$WORK/ready" 2>"$WORK/server.err" &
    PIDS+=($!)
    wait_for 10 "ivshmem-server readiness" test -e "$WORK/ready" || { cat "$WORK/server.err"; exit 1; }
    # shellcheck disable=SC2086
    "$BRIDGE" --server "$WORK/s.sock" --netns "$TAG-a" --tap ivn0 --mtu "$MTU" --mode "$MODE" --stats-json \
        $BRIDGE_ARGS >"$WORK/a.json" 2>"$WORK/a.err" &
    PID_A=$!; PIDS+=($PID_A)
    # shellcheck disable=SC2086
    "$BRIDGE" --server "$WORK/s.sock" --netns "$TAG-b" --tap ivn0 --mtu "$MTU" --mode "$MODE" --stats-json \
        $BRIDGE_ARGS >"$WORK/b.json" 2>"$WORK/b.err" &
    PID_B=$!; PIDS+=($PID_B)
    tap_exists() { ip -n "$1" link show ivn0 >/dev/null 2>&1; }
    carrier_on() { [ "$(ip netns exec "$1" cat /sys/class/net/ivn0/carrier 2>/dev/null)" = 1 ]; }
    for ns in "$TAG-a" "$TAG-b"; do
        wait_for 20 "TAP ivn0 in $ns" tap_exists "$ns" || { cat "$WORK/a.err" "$WORK/b.err"; exit 1; }
        ip -n "$ns" link set lo up
    done
    ip -n "$TAG-a" addr add 10.77.0.1/24 dev ivn0
    ip -n "$TAG-b" addr add 10.77.0.2/24 dev ivn0
    for ns in "$TAG-a" "$TAG-b"; do
        wait_for 20 "carrier on ivn0 in $ns" carrier_on "$ns" || { cat "$WORK/a.err" "$WORK/b.err"; exit 1; }
    done
    ip netns exec "$TAG-a" ping -c 3 -i 0.05 -q 10.77.0.2 >/dev/null  # warm ARP/neighbour caches
    ip netns exec "$TAG-va" ping -c 3 -i 0.05 -q 10.77.0.12 >/dev/null

    # --- measurements (alternating baseline and ivnet) -----------------------
    veth_rtt=$(ping_avg "$TAG-va" 10.77.0.12 56)
    s0a=$(snapshot $PID_A "$WORK/a.json"); s0b=$(snapshot $PID_B "$WORK/b.json")
    ivn_rtt=$(ping_avg "$TAG-a" 10.77.0.2 56)
    s1a=$(snapshot $PID_A "$WORK/a.json"); s1b=$(snapshot $PID_B "$WORK/b.json")
    veth_ab=$(tcp_gbit "$TAG-va" "$TAG-vb" 10.77.0.12)
    ivn_ab=$(tcp_gbit "$TAG-a" "$TAG-b" 10.77.0.2)
    s2a=$(snapshot $PID_A "$WORK/a.json"); s2b=$(snapshot $PID_B "$WORK/b.json")
    veth_ba=$(tcp_gbit "$TAG-vb" "$TAG-va" 10.77.0.11)
    ivn_ba=$(tcp_gbit "$TAG-b" "$TAG-a" 10.77.0.1)

    read -r ping_a_tx ping_a_rx _ _ <<<"$(per_frame "$s0a" "$s1a")"
    read -r ping_b_tx ping_b_rx _ _ <<<"$(per_frame "$s0b" "$s1b")"
    read -r tcp_a_tx tcp_a_rx tcp_a_txf tcp_a_rxf <<<"$(per_frame "$s1a" "$s2a")"
    read -r tcp_b_tx tcp_b_rx tcp_b_txf tcp_b_rxf <<<"$(per_frame "$s1b" "$s2b")"

    ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (a/b) if b else 'n/a')" "$1" "$2"; }
    echo
    echo "## MTU $MTU (ivnet mode $MODE, iperf3 ${DURATION}s, $PINGS pings)"
    echo
    echo "| metric | veth | ivnet | ivnet/veth |"
    echo "|---|---:|---:|---:|"
    echo "| ping RTT avg (us), 56 B | $veth_rtt | $ivn_rtt | $(ratio "$ivn_rtt" "$veth_rtt") |"
    echo "| TCP A->B (Gbit/s) | $veth_ab | $ivn_ab | $(ratio "$ivn_ab" "$veth_ab") |"
    echo "| TCP B->A (Gbit/s) | $veth_ba | $ivn_ba | $(ratio "$ivn_ba" "$veth_ba") |"
    echo
    echo "| doorbells per frame | bridge A sent/TX frame | A wakeups/RX frame | bridge B sent/TX frame | B wakeups/RX frame |"
    echo "|---|---:|---:|---:|---:|"
    echo "| ping phase | $ping_a_tx | $ping_a_rx | $ping_b_tx | $ping_b_rx |"
    echo "| TCP A->B phase ($tcp_a_txf data frames A->B, $tcp_b_txf ACKs B->A) | $tcp_a_tx | $tcp_a_rx | $tcp_b_tx | $tcp_b_rx |"

    # --- teardown ------------------------------------------------------------
    kill "$PID_A" "$PID_B"; wait "$PID_A" "$PID_B" 2>/dev/null || true
    kill "${PIDS[0]}" 2>/dev/null || true; wait "${PIDS[0]}" 2>/dev/null || true
    PIDS=()
    rm -f "$WORK/ready" "$WORK/s.sock" "$WORK"/*.json
    for ns in "$TAG-a" "$TAG-b" "$TAG-va" "$TAG-vb"; do ip netns del "$ns"; done
done
