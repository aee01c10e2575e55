#!/usr/bin/env bash
# Issue #4's speed targets on this machine, side by side: the default UNet (Adam, BCE, random data)
# at 128x128 with 4 images per rank, as
#   1x1   segtrain bench, 1 rank x 1 thread, batch 4
#   2x1   mpirun -np 2 --bind-to core segtrain bench, 2 ranks x 1 thread, global batch 8
#   ddp   PyTorch DDP (gloo), 2 processes x 1 thread, global batch 8 (NCHW and channels_last)
# Runs alternate within each round so load drifts hit all alike; medians are printed, with
# 2x1 / (2 x 1x1) (target >= 0.97) and 2x1 / best DDP (target >= 1.5).
# Needs a release build (swift build -c release), Open MPI and torch (pip install torch).
# Usage: scripts/bench-data-parallel.sh [rounds (3)] [steps (8)] [warmup (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; steps=${2:-8}; warmup=${3:-3}
bin=${SEGTRAIN_BIN:-.build/release/segtrain}
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
python3 -c 'import torch' 2>/dev/null || { echo "PyTorch missing: pip install torch" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
common=(--image-size 128 --threads 1 --steps "$steps" --warmup "$warmup" --json)

declare -A ips=()
for r in $(seq "$rounds"); do
  out=$($bin bench "${common[@]}" --batch-size 4)
  ips[1x1]+=" $(field "$out" images_per_second)"
  out=$(mpirun -np 2 --bind-to core "$bin" bench "${common[@]}" --batch-size 8 | grep '^{')
  ips[2x1]+=" $(field "$out" images_per_second)"
  for layout in nchw channels_last; do
    flag=""; [ "$layout" = channels_last ] && flag="--channels-last"
    out=$(python3 scripts/pytorch_baseline.py --ddp 2 --batch-size 8 "${common[@]}" $flag | grep '^{')
    ips[ddp-$layout]+=" $(field "$out" images_per_second)"
  done
  echo "round $r: 1x1 ${ips[1x1]##* }, 2x1 ${ips[2x1]##* }, ddp-nchw ${ips[ddp-nchw]##* }, ddp-channels_last ${ips[ddp-channels_last]##* }" >&2
done
printf '%-26s %10s   %s\n' run img/s "all rounds"
for name in 1x1 2x1 ddp-nchw ddp-channels_last; do
  printf '%-26s %10.2f  %s\n' "$name" "$(median ${ips[$name]})" "${ips[$name]}"
done
one=$(median ${ips[1x1]}); two=$(median ${ips[2x1]})
ddp=$(python3 -c "print(max($(median ${ips[ddp-nchw]}), $(median ${ips[ddp-channels_last]})))")
printf '%-26s %10.3f\n' "2x1 / (2 x 1x1)" "$(python3 -c "print($two / (2 * $one))")"
printf '%-26s %10.3f\n' "2x1 / best DDP" "$(python3 -c "print($two / $ddp)")"
