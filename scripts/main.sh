#!/usr/bin/env bash
# Set up (if needed) and run the main job: the tiny-lab comparison of the four algorithms, 5 seeds each, plus an
# A/A control (a second EM-PG on an independent sampling stream), at one matched budget, each algorithm at the
# learning rate its equal-effort tuning on the validation split chose (results/tiny-arith-tuning, scripts/tune.sh),
# then the leaderboard (runs/tiny-arith/leaderboard.md and index.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rlbench compare --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce --control --seeds 1,2,3,4,5 \
  --tuned results/tiny-arith-tuning/tuned.yaml --out "${RLBENCH_OUT:-runs/tiny-arith}" "$@"
