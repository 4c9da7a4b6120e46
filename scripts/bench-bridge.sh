#!/usr/bin/env bash
# Benchmark, side by side in one run, between two network namespaces:
#   veth    a veth pair (the kernel's own link, the ceiling);
#   relay   tap-relay: two TAPs with IFF_VNET_HDR + TUNSETOFFLOAD (the same
#           offloads as ivnet's), one thread per direction, read/write per
#           frame, no shared memory (the limit for any TAP-based bridge);
#   plain   two ivnet-bridges over one ivshmem-server, --offload off (the
#           reference protocol 0x0001, what a plain peer gets);
#   offload the same with offloads negotiated (the default).
# Per MTU: ping RTT, TCP both ways (iperf3), data doorbells per frame, CPU
# time of the relay/both bridges per GB carried. Writes the tables to stdout
# and, with a plot of throughput and RTT, to OUT.md and OUT.svg (default
# benchmarks/bridge.md and benchmarks/bridge.svg).
#
# Not a test: numbers depend on the machine and its load. Run as root:
#   scripts/bench-bridge.sh                       # MTU 1500, 16384 and 65521 (the largest a TAP takes), event mode
#   MTUS=1500 DURATION=10 scripts/bench-bridge.sh
#
# Environment: MTUS (list), MODE (event|poll|hybrid), DURATION (s per iperf3
# run), PINGS (echo requests per RTT measurement), BRIDGE_ARGS (more
# ivnet-bridge arguments), SERVER_ARGS (ivshmem-server arguments, e.g. -l 0x200000),
# OUT (output prefix), CARGO_TARGET_DIR.
# Addresses: 10.77.0.1/.2 inside namespaces this script creates and deletes.
set -euo pipefail

MTUS=${MTUS:-"1500 16384 65521"}
MODE=${MODE:-event}
DURATION=${DURATION:-5}
PINGS=${PINGS:-500}
BRIDGE_ARGS=${BRIDGE_ARGS:-}
SERVER_ARGS=${SERVER_ARGS:-}
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/benchmarks/bridge}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh" ivbench
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${need[@]}"
fi

cargo build --release -q --manifest-path "$ROOT/Cargo.toml" --target-dir "$TARGET" \
    -p ivnet-bridge -p ivshmem-server -p ivnet-e2e --bin tap-relay
BRIDGE=$TARGET/release/ivnet-bridge
SERVER=$TARGET/release/ivshmem-server
RELAY=$TARGET/release/tap-relay

# measure CONFIG MTU PIDS... -> one row "config mtu rtt ab ba doorbells cpu_s_per_gb"
measure() {
    local cfg=$1 mtu=$2; shift 2
    local rtt ab ba c0 c1 db="-" s0a s0b s1a s1b
    rtt=$(ping_avg "$A" 10.77.0.2)
    if [ "$cfg" = plain ] || [ "$cfg" = offload ]; then
        s0a=$(snapshot "$1" "$WORK/a.json"); s0b=$(snapshot "$2" "$WORK/b.json")
    fi
    c0=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
    ab=$(tcp_gbit "$A" "$B" 10.77.0.2)
    ba=$(tcp_gbit "$B" "$A" 10.77.0.1)
    c1=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
    if [ "$cfg" = plain ] || [ "$cfg" = offload ]; then
        s1a=$(snapshot "$1" "$WORK/a.json"); s1b=$(snapshot "$2" "$WORK/b.json")
        db=$(doorbells "$s0a" "$s1a" "$s0b" "$s1b")
    fi
    local cpu="-"
    if [ $# -gt 0 ]; then
        cpu=$(python3 -c 'import sys; t,ab,ba,d=map(float,sys.argv[1:]); gb=(ab+ba)*d/8; print("%.2f" % (t/100/gb) if gb else "n/a")' \
            "$((c1 - c0))" "$ab" "$ba" "$DURATION")
    fi
    echo "$cfg $mtu $rtt $ab $ba $db $cpu" | tee -a "$WORK/rows"
}

echo "# ivnet-bridge benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r), mode $MODE, iperf3 ${DURATION}s, $PINGS pings"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# command: MTUS=\"$MTUS\" MODE=$MODE DURATION=$DURATION SERVER_ARGS=\"$SERVER_ARGS\" scripts/bench-bridge.sh"
echo "# rows: config mtu rtt_us tcp_ab_gbit tcp_ba_gbit doorbells_per_frame cpu_s_per_gb"
: >"$WORK/rows"
for MTU in $MTUS; do
    # veth
    ns_up
    ip link add "${TAG}x" type veth peer name "${TAG}y"
    ip link set "${TAG}x" netns "$A"; ip link set "${TAG}y" netns "$B"
    ip -n "$A" link set "${TAG}x" name veth0 mtu "$MTU" up
    ip -n "$B" link set "${TAG}y" name veth0 mtu "$MTU" up
    addrs veth0
    measure veth "$MTU"
    ns_down
    # TAP<->TAP relay with the same offloads
    ns_up
    "$RELAY" "$A" "$B" rl0 "$MTU" offload >"$WORK/relay.out" 2>"$WORK/relay.err" &
    PR=$!; PIDS+=("$PR")
    wait_for 10 "tap-relay ready" grep -q ready "$WORK/relay.out" || { cat "$WORK/relay.err"; exit 1; }
    addrs rl0
    measure relay "$MTU" "$PR"
    stop_all; ns_down
    # ivnet plain and with offloads
    for cfg in plain offload; do
        ns_up
        # shellcheck disable=SC2086
        start_bridges "$SERVER" "$BRIDGE" --mtu "$MTU" --mode "$MODE" \
            --offload "$([ $cfg = plain ] && echo off || echo auto)" $BRIDGE_ARGS
        addrs ivn0
        measure "$cfg" "$MTU" "$PA" "$PB"
        if [ "$cfg" = offload ]; then
            grep -q "offloads negotiated" "$WORK/a.err" || echo "# WARNING: offloads were not negotiated at MTU $MTU"
        fi
        stop_all; ns_down
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$WORK/rows" "$OUT" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
data = {}
for cfg, mtu, rtt, ab, ba, db, cpu in rows:
    data[(cfg, int(mtu))] = dict(rtt=float(rtt), ab=float(ab), ba=float(ba), db=db, cpu=cpu)
mtus = sorted({m for _, m in data})
cfgs = ["veth", "relay", "plain", "offload"]
lines = ["| MTU | config | TCP A→B Gbit/s | TCP B→A Gbit/s | ×veth | ×relay | ping RTT µs | doorbells/frame | CPU s/GB |",
         "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
for m in mtus:
    v, r = data.get(("veth", m)), data.get(("relay", m))
    for c in cfgs:
        d = data.get((c, m))
        if not d: continue
        rv = "%.2f / %.2f" % (d["ab"] / v["ab"], d["ba"] / v["ba"]) if v and v["ab"] and v["ba"] else "-"
        rr = "%.2f / %.2f" % (d["ab"] / r["ab"], d["ba"] / r["ba"]) if r and r["ab"] and r["ba"] else "-"
        lines.append("| %d | %s | %.2f | %.2f | %s | %s | %.1f | %s | %s |" % (m, c, d["ab"], d["ba"], rv, rr, d["rtt"], d["db"], d["cpu"]))
table = "\n".join(lines)
print(); print(table)
open(out + ".md", "w").write(table + "\n")
# SVG: throughput (mean of both ways) and RTT per MTU, one bar per config.
colors = dict(veth="#4c72b0", relay="#55a868", plain="#c44e52", offload="#8172b2")
W, H, pad = 900, 360, 50
def panel(x0, title, key, unit):
    vals = [key(data[(c, m)]) for m in mtus for c in cfgs if (c, m) in data]
    top = max(vals) * 1.15 if vals else 1
    pw, ph = W / 2 - 2 * pad, H - 2 * pad
    s = ['<text x="%d" y="25" font-size="14">%s</text>' % (x0 + pad, title)]
    s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (x0 + pad, H - pad, x0 + pad + pw, H - pad))
    gw = pw / max(1, len(mtus)); bw = gw / (len(cfgs) + 1)
    for i, m in enumerate(mtus):
        s.append('<text x="%.0f" y="%d" font-size="11" text-anchor="middle">MTU %d</text>' % (x0 + pad + gw * (i + 0.5), H - pad + 15, m))
        for j, c in enumerate(cfgs):
            if (c, m) not in data: continue
            v = key(data[(c, m)]); h = ph * v / top
            x = x0 + pad + gw * i + bw * (j + 0.5)
            s.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (x, H - pad - h, bw * 0.9, h, colors[c]))
            s.append('<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle">%.3g</text>' % (x + bw * 0.45, H - pad - h - 3, v))
    s.append('<text x="%d" y="%d" font-size="11">%s</text>' % (x0 + 5, pad - 5, unit))
    return s
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif">' % (W, H + 30),
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "TCP throughput, mean of both ways", lambda d: (d["ab"] + d["ba"]) / 2, "Gbit/s")
svg += panel(W // 2, "ping RTT (56 B)", lambda d: d["rtt"], "µs")
for j, c in enumerate(cfgs):
    svg.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d" font-size="12">%s</text>' % (pad + 130 * j, H + 10, colors[c], pad + 130 * j + 16, H + 21, c))
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg) + "\n")
print("\nwrote %s.md and %s.svg" % (out, out))
PY
