#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test, and ends with one line
# `tests: N passed, N failed, N skipped` whatever failed on the way (then it exits non-zero).
#   1. swift test (every XCTest; the CLI and MPI tests run the release binary, as users do)
#   2. the numeric tests (engine, model, training, and N ranks against 1) once more with OpenBLAS for every
#      GEMM (SEGTRAIN_GEMM=openblas: on a CPU with AVX-512 the first run used segtrain's own kernel) under a
#      second OpenBLAS kernel family (OPENBLAS_CORETYPE, one the CPU supports and the default is not), so a
#      tolerance tuned to one kernel fails here and not on the next machine (docs/ENGINE.md, "Numeric tolerances")
#   3. the allocation check: no memory allocated inside a training step after the first
#   4. the cluster paths on real components (Slurm, network namespaces, PBS; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-test-python.sh   # onnxruntime, tensorboard: the peers' readers of exported files
# Test-only: qemu-user runs the binary on an emulated older CPU (the AVX2 start-up check).
if ! command -v qemu-x86_64 >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user
fi
swift build -c release
swift build --build-tests

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0 skipped=0

# Adds one XCTest run's test cases to the totals; a run that failed without a failed test case (a
# crash, a trap) counts as one failure.
count_xctest() {  # log rc label
  local p f s
  p=$(grep -cE "^Test Case '.*' passed" "$1" || true)
  f=$(grep -cE "^Test Case '.*' failed" "$1" || true)
  s=$(grep -cE "^Test Case '.*' skipped" "$1" || true)
  if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "test.sh: $3 exited with $2 and no failed test case (a crash?): counted as one failure"
    f=1
  fi
  echo "test.sh: $3: $p passed, $f failed, $s skipped"
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

# 1. Every XCTest.
set +e
SEGTRAIN_BIN="$PWD/.build/release/segtrain" swift test --skip-build 2>&1 | tee "$work/swift-test.log"
rc=${PIPESTATUS[0]}
set -e
count_xctest "$work/swift-test.log" "$rc" "swift test"

# 2. The numeric tests with OpenBLAS alone, under a second OpenBLAS kernel family.
second=$(python3 scripts/openblas-coretype.py second)
if [ -n "$second" ]; then
  echo "test.sh: numeric tests again with SEGTRAIN_GEMM=openblas OPENBLAS_CORETYPE=$second" \
    "($(python3 scripts/openblas-coretype.py default) by default here; GEMM of the first run: $(.build/release/segtrain info | sed -n 's/^GEMM: *//p'))"
  set +e
  SEGTRAIN_GEMM=openblas OPENBLAS_CORETYPE=$second SEGTRAIN_BIN="$PWD/.build/release/segtrain" swift test --skip-build \
    --filter 'SegEngineTests|SegModelTests|SegTrainingTests|DataParallelTests|DataTrainingTests' > "$work/coretype.log" 2>&1
  rc=$?
  set -e
  grep -E ": error:|Executed [0-9]+ tests" "$work/coretype.log" || true
  count_xctest "$work/coretype.log" "$rc" "numeric tests under $second"
else
  echo "test.sh: no second OpenBLAS kernel family to run on this CPU"
fi

# 3. No memory is allocated inside a training step after the first.
if scripts/check-allocations.sh .build/release/segtrain; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

# 4. Cluster paths: a one-node Slurm (job, USR1 pre-emption, requeue, resume), ranks in two network
# namespaces over TCP, the PBS script in a simulated job. Needs root.
set +e
SEGTRAIN_BIN="$PWD/.build/release/segtrain" scripts/test-cluster.sh 2>&1 | tee "$work/cluster.log"
rc=${PIPESTATUS[0]}
set -e
cluster=$(grep -E '^cluster: [0-9]+ passed, [0-9]+ failed' "$work/cluster.log" | tail -1 || true)
if [ -n "$cluster" ]; then
  passed=$((passed + $(sed -E 's/cluster: ([0-9]+) passed.*/\1/' <<<"$cluster")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$cluster")))
elif [ "$rc" -ne 0 ]; then
  echo "test.sh: the cluster tests exited with $rc and no summary: counted as one failure"
  failed=$((failed + 1))
fi

echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
