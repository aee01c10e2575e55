#!/usr/bin/env bash
# Measurements behind docs/SCALING.md (needs root: network namespaces).
#
#   scripts/bench-cluster.sh [ROUNDS]     # default 3 rounds; medians and best are printed
#   scripts/bench-cluster.sh 0            # only the tables, from the JSON of an earlier run
#
# 1. Compute: `segtrain bench` of the default UNet (3,717,121 parameters) at 128x128, global batch 8,
#    as 1 rank x 2 threads and as `mpirun -np 2` x 1 thread on this machine (shared memory).
# 2. Communication: `mpirun -np 2` across the two namespace hosts of scripts/netns-hosts.sh (Open MPI,
#    btl tcp), the link unlimited and limited with tc to 10, 5, 2 and 1 Gbit/s; the same UNet at
#    64x64 with one image per rank (little compute, the same 14.9 MB gradient), and at 128x128 with
#    batch 8 on the 1 Gbit/s link. Rank 0's time in communication (MPI) per step is reported.
# Configurations alternate within each round, so that load from other work on the machine spreads
# over all of them. Tables give the median and the best (minimum) of the rounds; the link analysis
# uses the minimum: on a shared machine, time in communication also holds the wait for a rank
# slowed by other work, which the minimum filters best. Raw JSON lines go to $BENCH_OUT (default /tmp/segtrain-bench-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
rounds=${1:-3}
bin=${SEGTRAIN_BIN:-$repo/.build/release/segtrain}
[ -x "$bin" ] || { echo "no segtrain binary at $bin (swift build -c release)"; exit 1; }
out=${BENCH_OUT:-/tmp/segtrain-bench-cluster}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

if [ "$rounds" -gt 0 ]; then
  rm -f "$out"/*.json
  scripts/netns-hosts.sh down >/dev/null 2>&1 || true
  scripts/netns-hosts.sh up
  trap 'scripts/netns-hosts.sh down >/dev/null 2>&1 || true' EXIT
fi
hostfile=$out/hostfile
printf '10.77.0.1 slots=1\n10.77.0.2 slots=1\n' >"$hostfile"
net=(--hostfile "$hostfile" -np 2 --bind-to none --mca plm_rsh_agent "$repo/scripts/netns-rsh-agent.sh"
     --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24)
small=(bench --image-size 64 --batch-size 2 --threads 1 --steps 5 --warmup 1 --json)
full=(bench --image-size 128 --batch-size 8 --steps 3 --warmup 1 --json)

record() {  # record NAME COMMAND...: appends the JSON line to NAME.json
  local name=$1; shift
  local line
  line=$("$@" 2>/dev/null | grep '^{' | tail -1) || true
  [ -n "$line" ] && echo "$line" >>"$out/$name.json"
  echo "  $name: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.3f s/step, communication %.1f ms" % (r["seconds_per_step"], 1000*r["seconds_per_step_by_kind"].get("communication",0)))' "${line:-{\}}" 2>/dev/null || echo failed)"
}
over_link() { timeout 300 scripts/netns-hosts.sh exec h1 mpirun "${net[@]}" "$bin" "$@"; }

for ((round = 1; round <= rounds; round++)); do
  echo "round $round/$rounds"
  record compute-1x2 timeout 300 "$bin" "${full[@]}" --threads 2
  record compute-2x1 timeout 300 mpirun -np 2 --oversubscribe "$bin" "${full[@]}" --threads 1
  record small-shm timeout 300 mpirun -np 2 --oversubscribe --bind-to none "$bin" "${small[@]}"
  scripts/netns-hosts.sh unshape
  record small-tcp over_link "${small[@]}"
  for rate in 10gbit 5gbit 2gbit 1gbit; do
    scripts/netns-hosts.sh shape "$rate" >/dev/null
    record "small-$rate" over_link "${small[@]}"
  done
  record full-1gbit over_link "${full[@]}" --threads 1
  scripts/netns-hosts.sh unshape
  record full-tcp over_link "${full[@]}" --threads 1
done

python3 - "$out" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
def load(name):
    path = f"{out}/{name}.json"
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
def med(rows, f):
    return statistics.median(f(r) for r in rows) if rows else float("nan")
def best(rows, f):
    return min(f(r) for r in rows) if rows else float("nan")
step = lambda r: r["seconds_per_step"]
comm = lambda r: r["seconds_per_step_by_kind"].get("communication", 0.0)
params = 3717121
grad_bytes = params * 4
print(f"\ngradient: {params:,} parameters x 4 B = {grad_bytes / 1e6:.2f} MB")
print("\n| run | s/step median (best) | communication ms/step median (best) | runs |")
print("|---|---|---|---|")
for name in ["compute-1x2", "compute-2x1", "small-shm", "small-tcp", "small-10gbit", "small-5gbit",
             "small-2gbit", "small-1gbit", "full-tcp", "full-1gbit"]:
    rows = load(name)
    print(f"| {name} | {med(rows, step):.3f} ({best(rows, step):.3f}) | {med(rows, comm) * 1000:.1f} ({best(rows, comm) * 1000:.1f}) | {len(rows)} |")
# Communication on the limited link = c0 + wire / f, wire = 2(N-1)/N x bytes x 8 / rate (N = 2):
# a least-squares line through the best times gives the fixed part c0 and the achieved fraction f.
points = []
for rate, gbit in [("10gbit", 10), ("5gbit", 5), ("2gbit", 2), ("1gbit", 1)]:
    rows = load(f"small-{rate}")
    if rows:
        points.append((gbit, grad_bytes * 8 / (gbit * 1e9), best(rows, comm)))
if len(points) >= 2:
    n = len(points)
    mx = sum(p[1] for p in points) / n
    my = sum(p[2] for p in points) / n
    slope = sum((p[1] - mx) * (p[2] - my) for p in points) / sum((p[1] - mx) ** 2 for p in points)
    c0 = my - slope * mx
    print(f"\nfit: communication = {c0 * 1000:.1f} ms + wire time / {1 / slope:.2f}  "
          f"(fixed part c0; the link carries {1 / slope:.0%} of its rate)")
    print("\n| link | wire time 2(N-1)/N x bytes / rate, N=2 | measured communication (best) | fit |")
    print("|---|---|---|---|")
    for gbit, wire, measured in points:
        print(f"| {gbit} Gbit/s | {wire * 1000:.1f} ms | {measured * 1000:.1f} ms | {(c0 + slope * wire) * 1000:.1f} ms |")
ft, f1 = load("full-tcp"), load("full-1gbit")
if ft and f1:
    extra_comm = best(f1, comm) - best(ft, comm)
    extra_step = best(f1, step) - best(ft, step)
    hidden = 1 - extra_step / extra_comm if extra_comm > 0 else float("nan")
    print(f"\n128x128 batch 8 at 1 Gbit/s (best of runs): step {best(f1, step):.3f} s vs {best(ft, step):.3f} s unlimited; "
          f"extra communication {extra_comm * 1000:.1f} ms, extra step time {extra_step * 1000:.1f} ms; "
          f"hidden behind backward: {max(0.0, hidden) * 100:.0f}%")
EOF
