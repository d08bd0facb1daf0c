#!/usr/bin/env bash
# Copy a finished comparison folder into results/ as a committed result: every run's logs, records, fingerprint and
# summary, the manifest, audit and report; not the saved models (checkpoint/, a few MB per run, which the report never
# reads and the audit knows to be left out), the executor's log or the lock.
#   bash scripts/publish.sh runs/tiny-arith results/tiny-arith
set -euo pipefail
src=${1:?usage: publish.sh RUN_FOLDER RESULT_FOLDER}
dst=${2:?usage: publish.sh RUN_FOLDER RESULT_FOLDER}
[ -f "$src/manifest.json" ] || { echo "publish: $src/manifest.json not found: not a comparison folder" >&2; exit 2; }
keep_shot=""
[ -f "$dst/screenshot.png" ] && keep_shot=$(mktemp) && cp "$dst/screenshot.png" "$keep_shot"
rm -rf "$dst"
mkdir -p "$dst"
cp -a "$src/." "$dst/"
find "$dst" -type d \( -name checkpoint -o -name 'checkpoint-*' -o -name state \) -prune -exec rm -rf {} +
find "$dst" -type f \( -name .rlbench.lock -o -name runs.log -o -name '*.tmp' \) -delete
[ -n "$keep_shot" ] && mv "$keep_shot" "$dst/screenshot.png"
du -sh "$dst"
