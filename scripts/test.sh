#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build
SEGTRAIN_BIN="$PWD/.build/debug/segtrain" swift test
