#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release
# The CLI tests run the release binary, as users do.
SEGTRAIN_BIN="$PWD/.build/release/segtrain" swift test
# No memory is allocated inside a training step after the first.
scripts/check-allocations.sh .build/release/segtrain
