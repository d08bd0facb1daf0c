#!/usr/bin/env bash
# Create .venv (if missing) and install exactly the locked versions (requirements.lock: every package pinned with its
# sha256, the CPU build of torch included), then rlbench itself in editable mode without resolving anything again.
# Rerunning it brings an existing .venv back to the lock. `bash scripts/lock.sh` regenerates the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q --require-hashes -r requirements.lock
python -m pip install -q --no-deps -e .
if [ -n "${RLBENCH_EXTRAS:-}" ]; then  # optional extras (lora, eval, ...) on top of the lock, not locked themselves
  python -m pip install -q -e ".[$RLBENCH_EXTRAS]"
fi
python scripts/check_lock.py
