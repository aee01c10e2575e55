#!/usr/bin/env bash
# segtrain vs PyTorch on this machine, side by side: the default UNet, and the encoder UNets against
# segmentation_models_pytorch's Unet (issue #16) and DeepLabV3+ against its DeepLabV3Plus (#17), Adam,
# BCE, random data.
# Runs alternate (segtrain, PyTorch NCHW, PyTorch channels_last) so load drifts hit all alike, and
# prints the median img/s and peak RSS of each, and segtrain's ratio to PyTorch's best.
# Needs a release build (swift build -c release) and torch (pip install torch; the encoder rows
# also segmentation-models-pytorch).
# Usage: scripts/bench-vs-pytorch.sh [rounds (3)] [steps (10)] [warmup (3)]
# CONFIGS overrides the rows: "encoder size batch threads" each, encoder none for the plain UNet and
# deeplabv3plus:ENCODER for DeepLabV3+, e.g. CONFIGS="resnet34 256 8 2;deeplabv3plus:resnet50 256 8 2"
# (default: the plain grid, then resnet34 and mobilenet_v2 UNets, then DeepLabV3+ on resnet50).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; steps=${2:-10}; warmup=${3:-3}
bin=.build/release/segtrain
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
python3 -c 'import torch' 2>/dev/null || { echo "PyTorch missing: pip install torch" >&2; exit 1; }

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

printf '%-28s %-22s %10s %10s\n' config run img/s peak_MiB
IFS=';' read -r -a configs <<<"${CONFIGS:-none 128 8 2;none 128 8 1;none 64 16 2;resnet34 256 8 2;mobilenet_v2 256 8 2;deeplabv3plus:resnet50 256 8 2}"
for config in "${configs[@]}"; do
  read -r encoder size batch threads <<<"$config"
  enc=()
  case "$encoder" in
    none) ;;
    deeplabv3plus:*) enc=(--arch deeplabv3plus --encoder "${encoder#deeplabv3plus:}") ;;
    *) enc=(--encoder "$encoder") ;;
  esac
  declare -A ips=() rss=()
  for r in $(seq "$rounds"); do
    out=$($bin bench "${enc[@]}" --image-size "$size" --batch-size "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --json)
    ips[segtrain]+=" $(field "$out" images_per_second)"; rss[segtrain]+=" $(field "$out" peak_rss_mib)"
    for layout in nchw channels_last; do
      flag=""; [ "$layout" = channels_last ] && flag="--channels-last"
      out=$(python3 scripts/pytorch_baseline.py "${enc[@]}" --image-size "$size" --batch-size "$batch" --threads "$threads" \
              --steps "$steps" --warmup "$warmup" --json $flag)
      ips[pytorch-$layout]+=" $(field "$out" images_per_second)"; rss[pytorch-$layout]+=" $(field "$out" peak_rss_mib)"
    done
  done
  best=0
  for name in segtrain pytorch-nchw pytorch-channels_last; do
    m=$(median ${ips[$name]}); mr=$(median ${rss[$name]})
    printf '%-28s %-22s %10.2f %10.0f\n' "${encoder/none/unet} ${size}px b${batch} t${threads}" "$name" "$m" "$mr"
    [ "$name" = segtrain ] && seg=$m
    [ "$name" != segtrain ] && best=$(python3 -c "print(max($best, $m))")
  done
  printf '%-28s %-22s %10.2f\n' "" "segtrain / best PyTorch" "$(python3 -c "print($seg / $best)")"
  unset ips rss
done
