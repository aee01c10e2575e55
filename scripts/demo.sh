#!/usr/bin/env bash
# The main job: installs, builds (release), shows the UNet, trains it on the built-in synthetic
# dataset (one process; MPI ranks come with issue #4) and prints one line per epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release
bin=.build/release/segtrain
$bin info --image-size 64 --base-channels 16
$bin train --image-size 64 --base-channels 16 --epochs 8 --train-samples 512 --val-samples 64 \
  --loss bce+dice --lr 2e-3 --out runs/demo "$@"
