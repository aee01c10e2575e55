#!/usr/bin/env bash
# segtrain vs PyTorch on this machine, side by side: the default UNet, Adam, BCE, random data.
# Runs alternate (segtrain, PyTorch NCHW, PyTorch channels_last) so load drifts hit all alike, and
# prints the median img/s and peak RSS of each, and segtrain's ratio to PyTorch's best.
# Needs a release build (swift build -c release) and torch (pip install torch).
# Usage: scripts/bench-vs-pytorch.sh [rounds (3)] [steps (10)] [warmup (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; steps=${2:-10}; warmup=${3:-3}
bin=.build/release/segtrain
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
python3 -c 'import torch' 2>/dev/null || { echo "PyTorch missing: pip install torch" >&2; exit 1; }

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

printf '%-24s %-22s %10s %10s\n' config run img/s peak_MiB
for config in "128 8 2" "128 8 1" "64 16 2"; do
  read -r size batch threads <<<"$config"
  declare -A ips=() rss=()
  for r in $(seq "$rounds"); do
    out=$($bin bench --image-size "$size" --batch-size "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --json)
    ips[segtrain]+=" $(field "$out" images_per_second)"; rss[segtrain]+=" $(field "$out" peak_rss_mib)"
    for layout in nchw channels_last; do
      flag=""; [ "$layout" = channels_last ] && flag="--channels-last"
      out=$(python3 scripts/pytorch_baseline.py --image-size "$size" --batch-size "$batch" --threads "$threads" \
              --steps "$steps" --warmup "$warmup" --json $flag)
      ips[pytorch-$layout]+=" $(field "$out" images_per_second)"; rss[pytorch-$layout]+=" $(field "$out" peak_rss_mib)"
    done
  done
  best=0
  for name in segtrain pytorch-nchw pytorch-channels_last; do
    m=$(median ${ips[$name]}); mr=$(median ${rss[$name]})
    printf '%-24s %-22s %10.2f %10.0f\n' "${size}px b${batch} t${threads}" "$name" "$m" "$mr"
    [ "$name" = segtrain ] && seg=$m
    [ "$name" != segtrain ] && best=$(python3 -c "print(max($best, $m))")
  done
  printf '%-24s %-22s %10.2f\n' "" "segtrain / best PyTorch" "$(python3 -c "print($seg / $best)")"
  unset ips rss
done
