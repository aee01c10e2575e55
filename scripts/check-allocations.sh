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
for config in "--threads 1" "--threads 2" "--threads 2 --norm batch --upsample transpose" "--threads 2 --norm group" "--threads 3 --loss bce+dice --optimizer sgd --nesterov"; do
  line=$(LD_PRELOAD="$out/alloc_counter.so" "$bin" bench --image-size 32 --batch-size 3 --base-channels 8 --depth 3 \
           --steps 3 --warmup 1 $config "$@" --json)
  read -r count large < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("heap_allocations_in_timed_steps", "missing"), d.get("large_heap_allocations_in_timed_steps", "missing"))' "$line")
  echo "bench $config: heap allocations in 3 timed steps: $count, over 256 bytes: $large"
  [ "$large" = "0" ] || status=1
  if [[ "$config" == "--threads 1" && "$count" != "0" ]]; then status=1; fi
done
rm -rf "$out"
exit $status
