#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Test-only: qemu-user runs the binary on an emulated older CPU (the AVX2 start-up check).
if ! command -v qemu-x86_64 >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user
fi
swift build -c release
log=$(mktemp)
trap 'rm -f "$log" "${cluster_log:-}"' EXIT
# The CLI and MPI tests run the release binary, as users do.
SEGTRAIN_BIN="$PWD/.build/release/segtrain" swift test 2>&1 | tee "$log"
# No memory is allocated inside a training step after the first.
scripts/check-allocations.sh .build/release/segtrain
# Cluster paths on real components: a one-node Slurm (job, USR1 pre-emption, requeue, resume),
# ranks in two network namespaces over TCP, the PBS script in a simulated job. Needs root.
cluster_log=$(mktemp)
SEGTRAIN_BIN="$PWD/.build/release/segtrain" scripts/test-cluster.sh 2>&1 | tee "$cluster_log"
# One closing line for CI. XCTest's summary reads "Executed N tests, with S tests skipped and F failures".
summary=$(grep -E "Executed [0-9]+ tests?, with" "$log" | tail -1)
executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")
failed=$(sed -E 's/.* ([0-9]+) failures?.*/\1/' <<<"$summary")
skipped=$(grep -oE '[0-9]+ tests? skipped' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
cluster=$(grep -E '^cluster: [0-9]+ passed, [0-9]+ failed' "$cluster_log" | tail -1)
cluster_passed=$(sed -E 's/cluster: ([0-9]+) passed.*/\1/' <<<"$cluster")
cluster_failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$cluster")
echo "tests: $((executed - failed - skipped + cluster_passed)) passed, $((failed + cluster_failed)) failed, $skipped skipped"
