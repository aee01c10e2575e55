#!/usr/bin/env bash
# Installs the PyPI packages the tests read segtrain's files with: onnxruntime runs an exported
# model (`segtrain export`), tensorboard's own event reader reads `--tensorboard` logs. They are the
# peers' code, so the files are checked by what users run. Idempotent: pip skips what is present.
set -euo pipefail
python3 -m pip install --disable-pip-version-check -q "onnxruntime>=1.17" "tensorboard>=2.15" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
python3 -c "import onnxruntime, tensorboard.backend.event_processing.event_file_loader" \
  || { echo "install-test-python.sh: onnxruntime or tensorboard did not install" >&2; exit 1; }
