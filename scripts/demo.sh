#!/usr/bin/env bash
# The main job: installs, builds (release), shows the default UNet and benchmarks a training step.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release
bin=.build/release/segtrain
$bin info
$bin bench --image-size 64 --batch-size 4 --steps 3
