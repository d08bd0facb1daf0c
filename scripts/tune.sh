#!/usr/bin/env bash
# Set up (if needed) and rerun the tiny lab's equal-effort tuning whose result the main job uses
# (results/tiny-arith-tuning/tuned.yaml): each algorithm x 5 learning rates x 2 seeds, scored on the validation split
# by the main job's own score (sampled accuracy, mean of the 2 evaluations after training starts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rlbench tune --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce \
  --grid optim.lr=1.25e-5,2.5e-5,5e-5,1e-4,2e-4 --seeds 101,102 --out "${RLBENCH_OUT:-runs/tiny-arith-tuning}" "$@"
