#!/usr/bin/env bash
# Set up (if needed) and run the main job: the tiny-lab comparison of the four algorithms, 8 seeds each, plus an A/A
# control (a second EM-PG on an independent sampling stream: must not be found) and a positive control (EM-PG at a
# quarter of its learning rate: must be found), at one matched budget, each algorithm at the learning rate its
# equal-effort tuning on the validation split chose (results/tiny-arith-tuning, scripts/tune.sh); then the
# leaderboard (runs/tiny-arith/leaderboard.md and index.html) and the reproduction check against the committed
# reference result (results/tiny-arith): `reproduced`, or the rows that differ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
out=${RLBENCH_OUT:-runs/tiny-arith}
rlbench compare --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce --control \
  --positive-control 0.25 --seeds 1,2,3,4,5,6,7,8 --tuned results/tiny-arith-tuning/tuned.yaml --out "$out" "$@"
if [ "$(realpath "$out")" != "$(realpath results/tiny-arith)" ]; then
  rlbench reproduce results/tiny-arith "$out" --json "$out/reproduction.json"
fi
