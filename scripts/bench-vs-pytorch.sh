#!/usr/bin/env bash
# segtrain vs PyTorch on this machine, side by side: the plain UNet over issue #19's grid of widths
# and sizes, training and inference; the encoder UNets against segmentation_models_pytorch's Unet
# (issue #16) and DeepLabV3+ against its DeepLabV3Plus (#17); Adam, BCE, random data. Then
# `segtrain predict` on a folder of JPEGs against the same loop in PyTorch (scripts/pytorch_predict.py).
# Runs alternate (segtrain, PyTorch NCHW, PyTorch channels_last) so load drifts hit all alike, and
# the table holds the median img/s and peak RSS of each, segtrain's GFLOP/s and its fraction of the
# measured sgemm peak (`segtrain bench --gemm-peak` at the row's threads), and segtrain's ratio to
# PyTorch's best layout.
# Needs a release build (swift build -c release) and torch (pip install torch pillow; the encoder
# rows also segmentation-models-pytorch).
# Usage: scripts/bench-vs-pytorch.sh [rounds (3)] [steps (10)] [warmup (3)]
# CONFIGS overrides the rows: "model size batch threads [train|inference]" each, where model is
# unet (base 32), unetN (base N channels), an encoder name (resnet34, mobilenet_v2, ...: smp's Unet)
# or deeplabv3plus:ENCODER, e.g. CONFIGS="unet16 96 8 2;unet 128 8 2 inference;resnet34 256 8 2".
# PREDICT="images size batch threads" sets the predict comparison (default "256 128 8 2"; "" skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; steps=${2:-10}; warmup=${3:-3}
bin=$PWD/.build/release/segtrain
[ -x "$bin" ] || { echo "build first: swift build -c release" >&2; exit 1; }
python3 -c 'import torch' 2>/dev/null || { echo "PyTorch missing: pip install torch" >&2; exit 1; }

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

default="unet 128 8 2;unet 64 16 2;unet 256 4 2;unet64 128 8 2;unet16 512 2 2;unet16 96 8 2;unet 128 8 2 inference"
default+=";unet16 96 8 2 inference;resnet34 256 8 2;mobilenet_v2 256 8 2;deeplabv3plus:resnet50 256 8 2"
IFS=';' read -r -a configs <<<"${CONFIGS:-$default}"
declare -A peak=()  # the sgemm peak at each thread count the rows use, measured once
for config in "${configs[@]}"; do
  read -r _ _ _ t _ <<<"$config"
  [ -n "${peak[$t]:-}" ] || peak[$t]=$(field "$($bin bench --gemm-peak --threads "$t" --json)" gflops_per_second)
done
printf '| %-34s | %8s | %8s | %8s | %7s | %9s | %9s | %6s | %6s |\n' config segtrain "PT NCHW" "PT CL" ratio "RSS seg" "RSS PT" GF/s "% peak"
printf '|%s|\n' "------------------------------------|----------|----------|----------|---------|-----------|-----------|--------|--------"
for config in "${configs[@]}"; do
  read -r model size batch threads mode <<<"$config"
  mode=${mode:-train}
  seg=(); pt=()
  case "$model" in
    none|unet) ;;
    unet[0-9]*) seg=(--base-channels "${model#unet}"); pt=(--base-channels "${model#unet}") ;;
    deeplabv3plus:*) seg=(--arch deeplabv3plus --encoder "${model#deeplabv3plus:}"); pt=("${seg[@]}") ;;
    *) seg=(--encoder "$model"); pt=("${seg[@]}") ;;
  esac
  [ "$mode" = inference ] && { seg+=(--inference); pt+=(--inference); }
  declare -A ips=() rss=(); gflops=""
  for r in $(seq "$rounds"); do
    out=$($bin bench "${seg[@]}" --image-size "$size" --batch-size "$batch" --threads "$threads" --steps "$steps" --warmup "$warmup" --json)
    ips[segtrain]+=" $(field "$out" images_per_second)"; rss[segtrain]+=" $(field "$out" peak_rss_mib)"
    gflops+=" $(field "$out" gflops_per_second)"
    for layout in nchw channels_last; do
      flag=""; [ "$layout" = channels_last ] && flag="--channels-last"
      out=$(python3 scripts/pytorch_baseline.py "${pt[@]}" --image-size "$size" --batch-size "$batch" --threads "$threads" \
              --steps "$steps" --warmup "$warmup" --json $flag)
      ips[$layout]+=" $(field "$out" images_per_second)"; rss[$layout]+=" $(field "$out" peak_rss_mib)"
    done
  done
  s=$(median ${ips[segtrain]}); n=$(median ${ips[nchw]}); c=$(median ${ips[channels_last]})
  rs=$(median ${rss[segtrain]}); rn=$(median ${rss[nchw]}); rc=$(median ${rss[channels_last]}); g=$(median $gflops)
  read -r ratio rpt pct <<<"$(python3 -c "
s, n, c, rn, rc, g, p = $s, $n, $c, $rn, $rc, $g, ${peak[$threads]}
print(f'{s / max(n, c):.2f}x', f'{rn if n >= c else rc:.0f}', f'{100 * g / p:.0f}')")"
  printf '| %-34s | %8.2f | %8.2f | %8.2f | %7s | %9.0f | %9s | %6.0f | %6s |\n' \
    "$model ${size}px b$batch t$threads $mode" "$s" "$n" "$c" "$ratio" "$rs" "$rpt" "$g" "$pct"
  unset ips rss
done
echo "(img/s and peak RSS in MiB are medians of $rounds alternating rounds; RSS PT is the faster layout's;"
echo " % peak: segtrain's GFLOP/s (direct-convolution FLOPs) over the sgemm peak at the row's threads:"
for t in "${!peak[@]}"; do echo "  $t thread(s): $(printf '%.1f' "${peak[$t]}") GFLOP/s"; done
# The matrix-product kernels matter more than anything else here: which GEMM ran, and OpenBLAS's family.
echo " segtrain's $($bin info | grep -m1 'BLAS kernels' | tr -s ' ')"
echo " segtrain's $($bin info | grep -m1 '^GEMM' | tr -s ' ')"
echo " PyTorch: $(python3 -c 'import torch; print(torch.__version__, "ISA", torch.backends.cpu.get_cpu_capability())')"
echo ")"

# predict on a folder: decode, resize, normalise, forward, threshold, encode and write the masks,
# timed from the first read to the last write by each program itself (process start-up, imports and
# model loading excluded), alternating.
read -r images psize pbatch pthreads <<<"${PREDICT-256 128 8 2}"
[ -n "${images:-}" ] || exit 0
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
$bin synth --out "$work/data" --count "$images" --size "$psize" --format jpg >/dev/null
(cd "$work" && $bin train --image-size "$psize" --epochs 1 --train-samples 16 --val-samples 8 --batch-size 8 \
   --threads "$pthreads" --out "$work/run" >/dev/null)
seg=""; pt=""
for r in $(seq "$rounds"); do
  line=$($bin predict --model "$work/run" --input "$work/data/images" --output "$work/seg" --batch-size "$pbatch" --threads "$pthreads")
  seg+=" $(python3 -c "import re,sys; print($images / float(re.search(r' in ([0-9.]+) s;', sys.argv[1]).group(1)))" "$line")"
  best=0
  for flag in "" --channels-last; do
    line=$(python3 scripts/pytorch_predict.py --input "$work/data/images" --output "$work/pt" --image-size "$psize" \
             --batch-size "$pbatch" --threads "$pthreads" $flag)
    best=$(python3 -c "import re,sys; print(max($best, float(re.search(r'([0-9.]+) img/s', sys.argv[1]).group(1))))" "$line")
  done
  pt+=" $best"
done
s=$(median $seg); p=$(median $pt)
echo
echo "predict, $images JPEGs of ${psize}x${psize}, batch $pbatch, $pthreads threads (default UNet; medians of $rounds rounds):"
printf '  segtrain predict %.2f img/s, PyTorch loop %.2f img/s (best layout of each round): %.2fx\n' "$s" "$p" "$(python3 -c "print($s / $p)")"
