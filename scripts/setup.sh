#!/usr/bin/env bash
# Create .venv (if missing) with the CPU build of torch and rlbench in editable mode.
# torch is installed first and pinned: with it in place, rlbench's `torch>=2.4` pulls nothing more
# (a bare `torch` requirement on an empty venv would download a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${RLBENCH_TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e ".[test${RLBENCH_EXTRAS:+,$RLBENCH_EXTRAS}]"
