#!/usr/bin/env bash
# The GPU check of the rollout backends, in under 10 minutes on one GPU (an H200 lent for a session, say):
#
#   bash benchmarks/gpu_check.sh               # needs CUDA; vLLM is used if `import vllm` works
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on a tiny model on the CPU (vLLM skipped): ~1 minute
#
# Sections, each in its own process under `timeout`, so that one failing (vLLM, say) does not stop the others:
#   1. nvidia-smi and versions;
#   2. the model: a local Qwen2.5-0.5B ($GPU_CHECK_MODEL or the Hugging Face cache), else a random model of its shape;
#   3. generation of 64 prompts x 256 new tokens, greedy then sampled, with rollout.backend rlbench, hf and vllm:
#      tokens/s, and the sampler gap of the sampled pass against the policy's own forward;
#   4. greedy agreement: the share of identical completions (bf16 may legitimately part after a near-tie);
#   5. `rlbench train`, 3 GRPO steps per backend: sampler_gap_abs / sampler_gap_kl from metrics.jsonl;
#   6. multi-GPU: with 2+ GPUs one `rlbench train --processes 2` step (data-parallel, then FSDP): NCCL collectives;
#      with one GPU, the collective check (the NCCL group refuses CPU tensors; rlbench's collectives use the GPU);
#   7. memory: a PPO update of a random Qwen2.5-1.5B-shaped model (no download): torch's peak vs `rlbench plan`.
# No network is needed (HF_HUB_OFFLINE=1; random models of the real shapes when no local copy exists).
# Everything goes to $OUT/gpu_check.log (the device tool brings $OUT back; a temporary folder otherwise), the
# RESULT lines to $OUT/summary.txt. Nothing is installed when torch and transformers import.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
OUT_DIR=${OUT:-$(mktemp -d -t gpu-check-out.XXXX)}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
WORK=$(mktemp -d -t gpu-check.XXXX)  # the model and the runs: removed on exit
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-540}  # seconds for the whole script; a section starts only if it can have 20 of them
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$LOG") 2>&1

if [ $SMOKE = 1 ]; then
  DEVICE=cpu PRECISION=fp32 PROMPTS=8 NEW=16 TRAIN=(--set rollout.batch_size=8 --set rollout.samples_per_prompt=2
    --set sampling.max_new_tokens=8 --set eval.limit=4 --set threads=2)
else
  DEVICE=cuda PRECISION=bf16 PROMPTS=64 NEW=256 TRAIN=(--set rollout.batch_size=64 --set rollout.samples_per_prompt=4
    --set sampling.max_new_tokens=128 --set eval.limit=16)
fi

section() {  # section NAME LIMIT_SECONDS COMMAND...: run it under timeout, report rc and seconds, never exit
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS - 10))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "SECTION $name: skipped (time budget spent)"; return 1; fi
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@"
  local rc=$?
  local verdict=ok
  [ $rc = 124 ] || [ $rc = 137 ] && verdict="TIMED OUT"
  [ $rc != 0 ] && [ "$verdict" = ok ] && verdict=FAILED
  echo "SECTION $name: $verdict (rc=$rc, $((SECONDS - t0))s)"
  return $rc
}

# ---- the Python environment: nothing is installed when torch and transformers already import
if ! $PY -c "import torch, transformers" 2>/dev/null; then
  echo "torch/transformers do not import with $PY: trying pip install -e . (needs a package index)"
  if ! timeout 300 $PY -m pip install -q -e .; then
    echo "SECTION setup: FAILED (cannot install rlbench's dependencies here; stopping)"
    grep -E '^(SECTION|RESULT)' "$LOG" >"$OUT_DIR/summary.txt"
    exit 1
  fi
fi
# (checked from $WORK: in the repo's root, `python -c` and `python -m` would find rlbench/ without its subpackages)
if ! (cd "$WORK" && $PY -c "import rlbench.algorithms, rlbench.tasks, click, yaml" 2>/dev/null); then
  # rlbench is not installed: a package of links (rlbench/, with algorithms/ and tasks/ as its subpackages, as
  # pyproject.toml maps them) on PYTHONPATH, instead of an install
  mkdir -p "$WORK/pkg/rlbench"
  for f in "$REPO"/rlbench/*; do ln -s "$f" "$WORK/pkg/rlbench/"; done
  ln -s "$REPO/algorithms" "$WORK/pkg/rlbench/algorithms"
  ln -s "$REPO/tasks" "$WORK/pkg/rlbench/tasks"
  export PYTHONPATH=$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- 1. the machine
echo "=== machine ==="
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
else
  echo "no nvidia-smi"
fi
$PY - <<'EOF'
import json, torch, transformers
row = {"step": "versions", "torch": torch.__version__, "transformers": transformers.__version__,
       "cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import vllm
    row["vllm"] = vllm.__version__
except Exception as exc:
    row["vllm"] = f"not importable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})"
print("RESULT " + json.dumps(row))
EOF
if [ $SMOKE = 0 ] && ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "SECTION setup: FAILED (no CUDA device; run with --cpu-smoke for the CPU version)"
  grep -E '^(SECTION|RESULT)' "$LOG" >"$OUT_DIR/summary.txt"
  exit 1
fi
BACKENDS="rlbench hf"
if [ $SMOKE = 0 ] && $PY -c "import vllm" 2>/dev/null; then BACKENDS="rlbench hf vllm"; fi
echo "backends: $BACKENDS"

# ---- 2. the model
MODEL=$WORK/model
SMOKE_FLAG=()
[ $SMOKE = 1 ] && SMOKE_FLAG=(--smoke)
section model 240 $PY benchmarks/gpu_check.py model "$MODEL" "${SMOKE_FLAG[@]}" | tee "$WORK/model.txt"
MODEL=$(sed -n 's/^RESULT .*"path": "\([^"]*\)".*/\1/p' "$WORK/model.txt")
if [ -z "$MODEL" ]; then
  echo "SECTION model: no model, nothing else can run"
  grep -E '^(SECTION|RESULT)' "$LOG" >"$OUT_DIR/summary.txt"
  exit 1
fi

# ---- 3. generation throughput per backend (vLLM first: the untested one)
for b in $(echo "$BACKENDS" | tr ' ' '\n' | sort -r); do  # vllm, rlbench, hf
  limit=150
  [ "$b" = vllm ] && limit=240
  section "generate-$b" $limit $PY benchmarks/gpu_check.py generate --model "$MODEL" --backend "$b" \
    --prompts $PROMPTS --new-tokens $NEW --device $DEVICE --precision $PRECISION --dump "$WORK/greedy-$b.json"
done

# ---- 4. greedy agreement with the hf reference
for b in rlbench vllm; do
  if [ -f "$WORK/greedy-$b.json" ] && [ -f "$WORK/greedy-hf.json" ]; then
    section "compare-$b-hf" 30 $PY benchmarks/gpu_check.py compare "$WORK/greedy-$b.json" "$WORK/greedy-hf.json"
  fi
done

# ---- 5. three training steps per backend, and the sampler gap the trainer measured
for b in $(echo "$BACKENDS" | tr ' ' '\n' | sort -r); do
  limit=150
  [ "$b" = vllm ] && limit=240
  run=$WORK/run-$b
  # run from $WORK, for the reason above
  if section "train-$b" $limit env -C "$WORK" $PY -m rlbench.cli train --model "$MODEL" --task arith --algo grpo \
      --out "$run" --quiet --set rollout.backend=$b --set device=$DEVICE --set precision=$PRECISION \
      --set budget.steps=3 --set eval.samples=0 --set eval.every=0 --set task.train_size=500 \
      --set task.test_size=16 --set checkpoint_every=0 "${TRAIN[@]}"; then
    $PY benchmarks/gpu_check.py metrics "$run"
  fi
done

# ---- 6. the collectives on GPUs: two processes when there are two GPUs, else the one-GPU check
GPUS=0
[ $SMOKE = 0 ] && GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -ge 2 ]; then
  for mode in "" "--fsdp"; do
    run=$WORK/run-2proc${mode:+-fsdp}
    if section "two-processes${mode:+-fsdp}" 180 env -C "$WORK" $PY -m rlbench.cli train --model "$MODEL" \
        --task arith --algo ppo --out "$run" --quiet --processes 2 $mode --set rollout.seed_rows=true \
        --set device=cuda --set precision=$PRECISION --set budget.steps=1 --set eval.samples=0 --set eval.every=0 \
        --set task.train_size=500 --set task.test_size=16 --set checkpoint_every=0 "${TRAIN[@]}"; then
      $PY benchmarks/gpu_check.py metrics "$run"
    fi
  done
elif [ "$GPUS" = 1 ]; then
  section collectives 60 $PY benchmarks/gpu_check.py collectives
else
  echo "SECTION collectives: skipped (no GPU; tests/test_collectives.py checks the same on the CPU)"
fi

# ---- 7. measured peak memory of a 1.5B-shaped update against the plan
section memory 180 $PY benchmarks/gpu_check.py memory "${SMOKE_FLAG[@]}"

echo "=== done in ${SECONDS}s; log: $LOG ==="
grep -E '^(SECTION|RESULT)' "$LOG" >"$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt"
