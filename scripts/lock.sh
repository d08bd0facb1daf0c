#!/usr/bin/env bash
# Regenerate requirements.lock: the exact version and sha256 of every package `scripts/setup.sh` installs (rlbench's
# dependencies and its [test] extra) for Linux x86_64, CPython 3.11, with the CPU build of torch. Run it after
# changing a dependency in pyproject.toml (tests/test_lock.py fails until the two agree), then commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${RLBENCH_LOCK_TOOLS:-/tmp/rlbench-lock-tools}
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "pip-tools==7.7.0"
fi
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
# the CPU wheel of torch (a plain torch pin resolves to the multi-GB CUDA build)
echo "torch==${RLBENCH_TORCH_VERSION:-2.13.0}+cpu" > "$pin"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$TOOLS/bin/pip-compile" pyproject.toml --extra test \
  --generate-hashes --strip-extras --allow-unsafe --no-emit-find-links --no-emit-index-url --constraint "$pin" \
  --output-file requirements.lock --quiet
# the constraint file is temporary: name what it pinned, not where it was
sed -i "s|-c $pin|torch pinned to its CPU build by scripts/lock.sh|" requirements.lock
