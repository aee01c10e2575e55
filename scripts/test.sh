#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The CLI and MPI tests run the release binary, as users do.
SEGTRAIN_BIN="$PWD/.build/release/segtrain" swift test 2>&1 | tee "$log"
# No memory is allocated inside a training step after the first.
scripts/check-allocations.sh .build/release/segtrain
# One closing line for CI. XCTest's summary reads "Executed N tests, with S tests skipped and F failures".
summary=$(grep -E "Executed [0-9]+ tests?, with" "$log" | tail -1)
executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")
failed=$(sed -E 's/.* ([0-9]+) failures?.*/\1/' <<<"$summary")
skipped=$(grep -oE '[0-9]+ tests? skipped' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
echo "tests: $((executed - failed - skipped)) passed, $failed failed, $skipped skipped"
