#!/usr/bin/env bash
# Regression check of the ring and the bridge against a baseline commit, both
# measured in this run (BENCHMARKS.md "Regression check"):
#   ring-ir     instructions per frame of crates/ivnet-ring/examples/per_frame.rs
#               (one thread: send 32 frames, flush, recv, flush, reclaim) under
#               callgrind, at FRAMES and 2*FRAMES frames, the difference divided
#               by FRAMES (setup cancels); load-independent, carries the verdict
#   ring-wall   `cargo bench -p ivnet-ring --bench ring` (two threads), old and
#               new alternating ROUNDS times, median of the rounds per row
#   bridge      two ivnet-bridges over one ivshmem-server in two network
#               namespaces (event mode, plain protocol: --offload off on trees
#               that have the option), old and new alternating ROUNDS times per
#               MTU: ping RTT, TCP both ways, data doorbells per frame, CPU s/GB
# Writes OUT.md (tables with new/old ratios), OUT.dat and OUT.png (gnuplot).
# Run as root. Environment: BASE (baseline commit, default a921f51), BASE_TREE
# (its worktree, created if missing), ROUNDS (default 3), FRAMES (default 4096),
# SIZES (default "64 1500 9000"), MTUS (default "1500 16384"), DURATION (s per
# iperf3 run, default 4), PINGS (default 300), IVNET_BENCH_SECS (default 0.4),
# IVNET_BENCH_REPS (default 3), OUT (default benchmarks/regression).
# The bridge measurement follows scripts/bench-bridge.sh (same counters, same
# CPU-per-GB formula) for the plain path only, with a binary per tree.
set -euo pipefail
export CARGO_TERM_COLOR=never
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-a921f51}
BASE_TREE=${BASE_TREE:-/tmp/ivnet-$BASE}
ROUNDS=${ROUNDS:-3}
FRAMES=${FRAMES:-4096}
SIZES=${SIZES:-"64 1500 9000"}
MTUS=${MTUS:-"1500 16384"}
DURATION=${DURATION:-4}
PINGS=${PINGS:-300}
export IVNET_BENCH_SECS=${IVNET_BENCH_SECS:-0.4} IVNET_BENCH_REPS=${IVNET_BENCH_REPS:-3}
export IVNET_BENCH_SIZES=${IVNET_BENCH_SIZES:-$(echo "$SIZES" | tr ' ' ,)}
OUT=${OUT:-$ROOT/benchmarks/regression}
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh" ivreg

# ---- build both trees (each its own target directory) ------------------------
[ -d "$BASE_TREE" ] || git -C "$ROOT" worktree add --detach "$BASE_TREE" "$BASE"
# The example is this tree's; an older ring has `Config { mtu }` instead of
# `Config::with_mtu`.
mkdir -p "$BASE_TREE/crates/ivnet-ring/examples"
if grep -q 'pub const fn with_mtu' "$BASE_TREE/crates/ivnet-ring/src/endpoint.rs"; then
    cp "$ROOT/crates/ivnet-ring/examples/per_frame.rs" "$BASE_TREE/crates/ivnet-ring/examples/"
else
    sed 's/Config::with_mtu(MTU)/Config { mtu: MTU }/' "$ROOT/crates/ivnet-ring/examples/per_frame.rs" \
        >"$BASE_TREE/crates/ivnet-ring/examples/per_frame.rs"
fi
for t in old new; do
    tree=$([ $t = old ] && echo "$BASE_TREE" || echo "$ROOT")
    (cd "$tree" && cargo build --release -q -p ivnet-bridge -p ivshmem-server \
        && cargo build --release -q -p ivnet-ring --example per_frame \
        && cargo bench -q -p ivnet-ring --bench ring --no-run)
done
tree_of() { [ "$1" = old ] && echo "$BASE_TREE" || echo "$ROOT"; }

echo "# regression check, $(date -u +%Y-%m-%dT%H:%MZ): old $BASE ($(git -C "$BASE_TREE" rev-parse --short HEAD)), new $(git -C "$ROOT" rev-parse --short HEAD)"
echo "# $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r), $(rustc --version)"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/ir"; : >"$WORK/wall"; : >"$WORK/bridge"

# ---- ring: instructions per frame --------------------------------------------
ir() {  # TREE SIZE FRAMES -> total instructions of one run
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
        "$1/target/release/examples/per_frame" "$2" "$3" >/dev/null 2>"$WORK/cg.err"
    awk '/^(summary|totals):/ { print $2; exit }' "$WORK/cg.out"
}
for s in $SIZES; do
    for t in old new; do
        i1=$(ir "$(tree_of $t)" "$s" "$FRAMES"); i2=$(ir "$(tree_of $t)" "$s" $((2 * FRAMES)))
        echo "$t $s $(( (i2 - i1) / FRAMES ))" | tee -a "$WORK/ir"
    done
done

# ---- ring: two threads, wall clock -------------------------------------------
for r in $(seq "$ROUNDS"); do
    for t in old new; do
        echo "# ring bench round $r $t, load $(cut -d' ' -f1 /proc/loadavg)"
        (cd "$(tree_of $t)" && cargo bench -q -p ivnet-ring --bench ring 2>/dev/null) \
            | awk -v t="$t" -F'|' '/^\| *[0-9]/ { gsub(/ /, ""); print t, $2, $3, $4, $7 }' | tee -a "$WORK/wall"
    done
done

# ---- bridge ------------------------------------------------------------------
bridge_round() {  # old|new MTU
    local t=$1 mtu=$2 tree bin off=()
    tree=$(tree_of "$t"); bin=$tree/target/release
    "$bin/ivnet-bridge" --help | grep -q -- --offload && off=(--offload off)
    ns_up
    start_bridges "$bin/ivshmem-server" "$bin/ivnet-bridge" --mtu "$mtu" --mode event "${off[@]}"
    addrs ivn0
    local rtt s0a s0b s1a s1b c0 c1 ab ba db cpu
    rtt=$(ping_avg "$A" 10.77.0.2)
    s0a=$(snapshot "$PA" "$WORK/a.json"); s0b=$(snapshot "$PB" "$WORK/b.json")
    c0=$(cpu_ticks "$PA" "$PB")
    ab=$(tcp_gbit "$A" "$B" 10.77.0.2)
    ba=$(tcp_gbit "$B" "$A" 10.77.0.1)
    c1=$(cpu_ticks "$PA" "$PB")
    s1a=$(snapshot "$PA" "$WORK/a.json"); s1b=$(snapshot "$PB" "$WORK/b.json")
    db=$(doorbells "$s0a" "$s1a" "$s0b" "$s1b")
    cpu=$(python3 -c 'import sys; t,ab,ba,d=map(float,sys.argv[1:]); gb=(ab+ba)*d/8; print("%.3f" % (t/100/gb) if gb else "nan")' \
        "$((c1 - c0))" "$ab" "$ba" "$DURATION")
    echo "$t $mtu $rtt $ab $ba $db $cpu $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$WORK/bridge"
    stop_all; ns_down
}
echo "# bridge rows: tree mtu rtt_us tcp_ab_gbit tcp_ba_gbit doorbells_per_frame cpu_s_per_gb load1"
for r in $(seq "$ROUNDS"); do
    for mtu in $MTUS; do
        for t in old new; do bridge_round "$t" "$mtu"; done
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- tables, ratios, plot ----------------------------------------------------
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT" <<'PY'
import sys, statistics as st
work, out = sys.argv[1], sys.argv[2]
med = st.median
lines, dat = [], []
ir = {(t, int(s)): int(n) for t, s, n in (l.split() for l in open(work + "/ir") if l.strip())}
lines += ["| ring, 1 thread, batch 32 | old instr/frame | new instr/frame | new/old |", "|---|---:|---:|---:|"]
for s in sorted({s for _, s in ir}):
    o, n = ir[("old", s)], ir[("new", s)]
    lines.append("| %d-byte frames | %d | %d | %.3f |" % (s, o, n, n / o))
    dat.append(("ring-Ir-%d" % s, n / o))
wall = {}
for l in open(work + "/wall"):
    t, s, b, mpps, q = l.split()
    wall.setdefault((t, int(s), int(b)), []).append((float(mpps), float(q)))
lines += ["", "| ring, 2 threads (wall clock) | old Mpps | new Mpps | new/old | old ring/queue | new ring/queue |", "|---|---:|---:|---:|---:|---:|"]
for s, b in sorted({(s, b) for _, s, b in wall}):
    o = wall[("old", s, b)]; n = wall[("new", s, b)]
    om, nm = med(x[0] for x in o), med(x[0] for x in n)
    oq, nq = med(x[0] / x[1] for x in o), med(x[0] / x[1] for x in n)
    lines.append("| %d B, batch %d | %.2f | %.2f | %.2f | %.2f | %.2f |" % (s, b, om, nm, nm / om, oq, nq))
    dat.append(("ring-wall-%d/%d" % (s, b), nm / om))
br = {}
for l in open(work + "/bridge"):
    t, m, *v = l.split()
    br.setdefault((t, int(m)), []).append([float(x) for x in v])
names = ["ping RTT µs", "TCP A→B Gbit/s", "TCP B→A Gbit/s", "doorbells/frame", "CPU s/GB"]
short = ["rtt", "tcpAB", "tcpBA", "db/frame", "cpu/GB"]
lines += ["", "| bridge, plain protocol | MTU | old | new | new/old |", "|---|---:|---:|---:|---:|"]
for m in sorted({m for _, m in br}):
    for i, nm in enumerate(names):
        o = med(r[i] for r in br[("old", m)]); n = med(r[i] for r in br[("new", m)])
        lines.append("| %s | %d | %.3g | %.3g | %.2f |" % (nm, m, o, n, n / o if o else float("nan")))
        dat.append(("%s-%d" % (short[i], m), n / o if o else float("nan")))
table = "\n".join(lines)
print(); print(table)
open(out + ".md", "w").write(table + "\n")
with open(out + ".dat", "w") as f:
    for i, (k, v) in enumerate(dat):
        f.write('%d "%s" %.4f\n' % (i, k, v))
PY
gnuplot <<EOF2
set terminal pngcairo size 1000,420 font ",9"
set output "$OUT.png"
set title "ivnet regression check: new ($(git -C "$ROOT" rev-parse --short HEAD)) / old ($BASE), same run. Lower is better for instructions, RTT, doorbells, CPU; higher for Mpps, Gbit/s"
set key top right
set style fill solid 0.7
set boxwidth 0.7
set yrange [0:*]
set ylabel "new / old"
set xtics rotate by -40 left
set rmargin 12
set offsets 0, 0, 0.45, 0
set grid ytics
set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb "black" dt 2
plot "$OUT.dat" using 1:(0):xtic(2) with dots lc rgb "white" notitle, \
     "$OUT.dat" using 1:(strstrt(strcol(2), "ring-Ir") ? \$3 : 1/0) with boxes lc rgb "#55a868" title "instructions (callgrind): the verdict", \
     "$OUT.dat" using 1:(strstrt(strcol(2), "ring-Ir") ? 1/0 : \$3) with boxes lc rgb "#4c72b0" title "wall clock / bridge (medians, load 4-9: noisy)"
EOF2
echo "# wrote $OUT.md $OUT.dat $OUT.png"
