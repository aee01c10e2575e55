#!/usr/bin/env bash
# Proves the training step allocates no memory after the first: runs `segtrain bench` under a
# malloc-counting LD_PRELOAD shim and fails unless the timed steps made zero allocations over 256
# bytes (no tensor, buffer or array). With 1 thread there must be none at all; with more, each
# parallel dispatch boxes its closure (32 bytes, Swift's withoutActuallyEscaping), reported here.
# Usage: scripts/check-allocations.sh [path/to/segtrain] [extra bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.build/release/segtrain}; shift || true
out=$(mktemp -d)
cc -O2 -shared -fPIC -o "$out/alloc_counter.so" scripts/alloc-counter/alloc_counter.c
status=0
unet="--image-size 32 --batch-size 3 --base-channels 8 --depth 3"
configs=("$unet --threads 1" "$unet --threads 2" "$unet --threads 2 --norm batch --upsample transpose" "$unet --threads 2 --norm group"
         "$unet --threads 3 --loss bce+dice --optimizer sgd --nesterov"
         # The layer-graph models (encoder UNets, DeepLabV3+ with its dropout and resizes), Winograd and strided kernels.
         "--encoder resnet18 --image-size 64 --batch-size 2 --threads 1" "--encoder mobilenet_v2 --image-size 32 --batch-size 3 --threads 2"
         "--arch deeplabv3plus --encoder mobilenet_v2 --image-size 64 --batch-size 2 --threads 1"
         # ResNet-50's dilated layer4: Winograd on phase planes (PhaseWinograd.swift).
         "--arch deeplabv3plus --encoder resnet50 --image-size 64 --batch-size 2 --threads 1")
for config in "${configs[@]}"; do
  line=$(LD_PRELOAD="$out/alloc_counter.so" "$bin" bench --steps 3 --warmup 1 $config "$@" --json)
  read -r count large < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("heap_allocations_in_timed_steps", "missing"), d.get("large_heap_allocations_in_timed_steps", "missing"))' "$line")
  echo "bench $config: heap allocations in 3 timed steps: $count, over 256 bytes: $large"
  [ "$large" = "0" ] || status=1
  if [[ "$config" == *"--threads 1"* && "$count" != "0" ]]; then status=1; fi
done
rm -rf "$out"
exit $status
