#!/usr/bin/env bash
# Set up (if needed) and run the main job: the tiny-lab comparison of the four algorithms, 3 seeds each,
# at one matched budget, then the leaderboard (runs/tiny-arith/leaderboard.md and index.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rlbench compare --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce --seeds 1,2,3 \
  --out "${RLBENCH_OUT:-runs/tiny-arith}" "$@"
