#!/usr/bin/env bash
# The version floors of pyproject.toml, tested: a separate venv with torch, transformers and accelerate at exactly
# their floors (the GPU path's libraries, whose APIs the floors are about), rlbench and the test extras on top, then
# a representative subset of the suite (data-parallel and FSDP runs, the backends, model loading, the plan).
#
#   bash scripts/test_floor.sh                        # venv in $FLOOR_VENV (default /tmp/rlbench-floor), then tests
#   FLOOR_TESTS="tests/test_backends.py" bash scripts/test_floor.sh     # another subset; FLOOR_TESTS= only installs
#
# The floors are read from pyproject.toml (`name>=X` becomes `name==X`), so this script never disagrees with it.
# Needs a package index for transformers and accelerate; torch comes from wherever pip finds it (the setup's wheel
# cache on this machine). Run it after changing a floor, and say in the change which floors it passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FLOOR_VENV:-/tmp/rlbench-floor}
TESTS=${FLOOR_TESTS-tests/test_collectives.py tests/test_distributed.py tests/test_sharding.py tests/test_backends.py tests/test_model_loading.py tests/test_hf_checkpoints.py tests/test_precision.py tests/test_plan.py tests/test_memory_plan.py}
pins=$("$PY" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^(torch|transformers|accelerate)>=([\w.]+)", dep)
    if m:
        print(f"{m.group(1)}=={m.group(2)}")
EOF
)
echo "floors: $(echo $pins)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# the floors first and alone, then rlbench with them held (a constraint file: pip may not move them)
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $pins
echo "$pins" >"$VENV/floor-constraints.txt"
"$VENV/bin/python" -m pip install -q -c "$VENV/floor-constraints.txt" -e ".[test]"
"$VENV/bin/python" -c "import torch, transformers, accelerate; print('installed: torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
if [ -n "$TESTS" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider $TESTS
fi
