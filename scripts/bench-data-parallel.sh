#!/usr/bin/env bash
# Issue #4's speed targets on this machine, side by side: the default UNet (Adam, BCE, random data)
# at 128x128 with 4 images per rank (PER_RANK=B for another number). Each round runs, one after
# the other:
#   1x1 core C   segtrain bench, 1 rank x 1 thread, batch 4 (PER_RANK), pinned to core C (every core in turn:
#                on a VM the cores need not be equally fast, and one unpinned run lands on either)
#   pair         two independent 1x1 runs at once, one per core: what two ranks get from the
#                shared hardware (caches, memory, the host) before any communication
#   pair-lockstep  the pair's images over the sum, step by step, of the slower of its two step
#                times: what a synchronous data-parallel run gets if every step waits for the
#                slower rank, communication costs nothing and each rank does a 1-rank run's work
#                (segtrain's ranks do less: each updates only its share of the weights)
#   2x1          mpirun -np 2 --bind-to core segtrain bench, 2 ranks x 1 thread, global batch 8
#   ddp          PyTorch DDP (gloo), 2 processes x 1 thread, global batch 8 (NCHW and channels_last)
#                (global batch: 2 x PER_RANK)
# Runs alternate within each round so load drifts hit all alike. Printed: the median of each run,
# and per round, then as a median over rounds:
#   2x1 / (sum of 1x1 over the cores)   the target: >= 0.97 ("twice the 1-rank throughput")
#   2x1 / pair                          what data-parallel training itself costs
#   2x1 / pair-lockstep                 communication against the optimizer work the shards save
#   pair-lockstep / (sum of 1x1)        what the machine leaves for ranks doing a 1-rank run's work
#   2x1 / best DDP                      the target: >= 1.5
# Needs a release build (swift build -c release), Open MPI, taskset, and torch (pip install torch)
# unless NO_DDP=1.
# Usage: scripts/bench-data-parallel.sh [rounds (3)] [steps (8)] [warmup (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; steps=${2:-8}; warmup=${3:-3}
bin=${SEGTRAIN_BIN:-.build/release/segtrain}
ddp=${NO_DDP:-0}; ddp=$((1 - ddp))
batch=${PER_RANK:-4}; global=$((2 * batch))
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
[ "$ddp" = 0 ] || python3 -c 'import torch' 2>/dev/null || { echo "PyTorch missing: pip install torch (or NO_DDP=1)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores, this process may use $(nproc)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The two cores this process may use (the first two of its affinity list).
read -r core0 core1 < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[1])')

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
ratio() { python3 -c "print(round($1 / ($2), 4))"; }
common=(--image-size 128 --threads 1 --steps "$steps" --warmup "$warmup" --json)
one() { taskset -c "$1" "$bin" bench "${common[@]}" --batch-size "$batch"; }

declare -A ips=()
names=("1x1-core$core0" "1x1-core$core1" pair pair-lockstep 2x1)
[ "$ddp" = 0 ] || names+=(ddp-nchw ddp-channels_last)
for r in $(seq "$rounds"); do
  for c in "$core0" "$core1"; do ips[1x1-core$c]+=" $(field "$(one "$c")" images_per_second)"; done
  tmp=$(mktemp)
  one "$core1" > "$tmp" &
  ja=$(one "$core0")
  wait
  jb=$(cat "$tmp"); rm -f "$tmp"
  a=$(field "$ja" images_per_second); b=$(field "$jb" images_per_second)
  ips[pair]+=" $(python3 -c "print($a + $b)")"
  ips[pair-lockstep]+=" $(python3 -c 'import json,sys
a, b = (json.loads(j)["step_seconds"] for j in sys.argv[1:3])
print(2 * int(sys.argv[3]) * len(a) / sum(max(x, y) for x, y in zip(a, b)))' "$ja" "$jb" "$batch")"
  out=$(mpirun -np 2 --bind-to core --cpu-set "$core0,$core1" "$bin" bench "${common[@]}" --batch-size "$global" | grep '^{')
  ips[2x1]+=" $(field "$out" images_per_second)"
  if [ "$ddp" = 1 ]; then
    for layout in nchw channels_last; do
      flag=""; [ "$layout" = channels_last ] && flag="--channels-last"
      out=$(python3 scripts/pytorch_baseline.py --ddp 2 --batch-size "$global" "${common[@]}" $flag | grep '^{')
      ips[ddp-$layout]+=" $(field "$out" images_per_second)"
    done
  fi
  line="round $r:"
  for name in "${names[@]}"; do line+=" $name ${ips[$name]##* }"; done
  echo "$line" >&2
done

# Per-round ratios, then their medians.
declare -A per=()
for r in $(seq "$rounds"); do
  pick() { echo "${ips[$1]}" | awk -v r="$r" '{print $r}'; }
  two=$(pick 2x1)
  per[scaling]+=" $(ratio "$two" "$(pick "1x1-core$core0") + $(pick "1x1-core$core1")")"
  per[pair]+=" $(ratio "$two" "$(pick pair)")"
  per[lockstep]+=" $(ratio "$two" "$(pick pair-lockstep)")"
  per[ceiling]+=" $(ratio "$(pick pair-lockstep)" "$(pick "1x1-core$core0") + $(pick "1x1-core$core1")")"
  [ "$ddp" = 0 ] || per[ddp]+=" $(ratio "$two" "max($(pick ddp-nchw), $(pick ddp-channels_last))")"
done
printf '%-34s %10s   %s\n' run img/s "all rounds"
for name in "${names[@]}"; do
  printf '%-34s %10.2f  %s\n' "$name" "$(median ${ips[$name]})" "${ips[$name]}"
done
printf '%-34s %10.3f  %s\n' "2x1 / (1x1 core$core0 + 1x1 core$core1)" "$(median ${per[scaling]})" "${per[scaling]}"
printf '%-34s %10.3f  %s\n' "2x1 / pair" "$(median ${per[pair]})" "${per[pair]}"
printf '%-34s %10.3f  %s\n' "2x1 / pair-lockstep" "$(median ${per[lockstep]})" "${per[lockstep]}"
printf '%-34s %10.3f  %s\n' "pair-lockstep / (1x1 + 1x1)" "$(median ${per[ceiling]})" "${per[ceiling]}"
[ "$ddp" = 0 ] || printf '%-34s %10.3f  %s\n' "2x1 / best DDP" "$(median ${per[ddp]})" "${per[ddp]}"
