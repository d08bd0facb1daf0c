"""Seconds per GRPO step: rlbench's Trainer vs TRL's GRPOTrainer, same model, prompts, settings and steps.

    python benchmarks/vs_trl.py [--threads 1] [--steps 8] [--repeats 5] [--model auto|random|tiny|DIR] [--lr 2e-4]

TRL is a benchmark-only dependency (``pip install -e .[bench]``), never a runtime one.

Equal work, both sides (TRL 1.16 defaults checked in its source):
- the same tiny-lab model (fp32, CPU, no vLLM, no gradient checkpointing) and the same arith training prompts in the
  same order: step s uses ``rlbench.engine.trainer.prompt_indices(seed, s)``; TRL reads them unshuffled;
- 16 prompts x 4 generations = 64 completions per step, at most 40 completion tokens, T=1, top_p=1, no top-k;
- GRPO with group-std scaled advantages, no KL (rlbench ``kl_loss_coef=0``, TRL ``beta=0``: no reference model), one
  epoch over one minibatch per batch (so neither side recomputes old log-probs), clip 0.2, token-level loss aggregation over the whole batch: TRL's
  default ``loss_type="dapo"`` is rlbench's ``loss_agg="token-mean"``;
- AdamW (0.9, 0.999), weight decay 0, constant learning rate, gradient clipping at 1.0.

Every run is a fresh subprocess (so peak RSS is per framework); the two frameworks alternate, ``--repeats`` runs each.
A run's seconds per step is the median over its steps after the first (the first pays one-off warm-up); the table
reports the median over runs. Rewards are the mean over each run's last half of steps, averaged over runs: the two
should be close (same model, same prompts; the samples differ), and :func:`reward_check` tests that they are.

The update is the same on both sides; rlbench does less work for it: rows whose advantage is 0 (a group whose rewards
all agree) have exactly zero gradient with kl_loss_coef=0, and rlbench's trainer leaves them out of the forward and backward
pass (``Algorithm.inert_rows``) while TRL runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinylab import MODEL_HELP, contention, peak_rss_mb, resolve_model  # noqa: E402

SAMPLES_PER_PROMPT = 4


def common_settings(args) -> dict:
    return dict(
        batch=args.batch_size,
        generations=SAMPLES_PER_PROMPT,
        max_tokens=args.max_completion_length,
        lr=args.lr,
        seed=args.seed,
        steps=args.steps,
    )


def step_prompts(n_examples: int, seed: int, steps: int, per_step: int) -> list[int]:
    """Train-set indices in the order rlbench's trainer visits them."""
    from rlbench.engine.seeding import prompt_indices

    return [i for s in range(steps) for i in prompt_indices(n_examples, seed, s, per_step)]


# ------------------------------------------------------------------------------------------------ rlbench child


def rlbench_config(
    model_dir: str, *, threads: int, seed: int, steps: int, batch_size: int, max_tokens: int, lr: float, out: str
):
    """The rlbench side of the equal-work GRPO settings (also what profile_step.py profiles)."""
    from rlbench.core.configure import build_run_config

    return build_run_config(
        {
            "model": model_dir,
            "seed": seed,
            "threads": threads,
            "device": "cpu",
            "precision": "fp32",
            "out": out,
            "checkpoint_every": 0,
            "algo": {
                "name": "grpo",
                "kl_loss_coef": 0.0,
                "epochs": 1,
                "minibatches": 1,
                "scale_rewards": True,
                "clip_low": 0.2,
                "clip_high": 0.2,
                "loss_agg": "token-mean",
            },
            "task": {"name": "arith"},
            "rollout": {"batch_size": batch_size, "samples_per_prompt": SAMPLES_PER_PROMPT},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_tokens},
            "optim": {"lr": lr, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0, "warmup_steps": 0},
            "budget": {"steps": steps},
            "eval": {"limit": 1},
        }
    )


def child_rlbench(args) -> dict:
    import torch

    from rlbench.run.training import build_trainer

    config = rlbench_config(
        args.model_dir,
        threads=args.threads,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        max_tokens=args.max_completion_length,
        lr=args.lr,
        out=tempfile.mkdtemp(prefix="rlbench-vs-trl-"),
    )
    trainer = build_trainer(config, progress=False)
    times, rewards, stages = [], [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        row = trainer.step()
        times.append(time.perf_counter() - start)
        rewards.append(row["reward_mean"])
        stages.append(row["time"])
    return {"times": times, "rewards": rewards, "stages": stages, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ TRL child


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from rlbench.tasks.arith import Arith
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    task = Arith()
    examples = task.load("train")
    order = step_prompts(len(examples), args.seed, args.steps, args.batch_size // SAMPLES_PER_PROMPT)
    dataset = Dataset.from_dict({"prompt": [task.prompt(examples[i]) for i in order], "example": order})

    def reward(completions, example, **_):
        return [task.grade(c, examples[i]).reward for c, i in zip(completions, example)]

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-vs-rlbench-"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=args.batch_size,
        num_generations=SAMPLES_PER_PROMPT,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        max_steps=args.steps,
        logging_steps=1,
        shuffle_dataset=False,
        seed=args.seed,
        dataloader_num_workers=0,
    )

    generate_seconds = [0.0]
    plain_generate = model.generate

    def timed_generate(*a, **k):  # TRL calls model.generate once per step (no vLLM): time it as its own stage
        start = time.perf_counter()
        try:
            return plain_generate(*a, **k)
        finally:
            generate_seconds[0] += time.perf_counter() - start

    model.generate = timed_generate

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.rewards: list[float] = []
            self.generate: list[float] = []

        def on_train_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())
            self.generate.append(generate_seconds[0])
            generate_seconds[0] = 0.0

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    torch.set_num_threads(args.threads)  # after accelerate's set-up, which may change it
    trainer.train()
    times = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    stages = [{"generate": g, "rest": t - g} for t, g in zip(times, clock.generate)]
    return {"times": times, "rewards": clock.rewards, "stages": stages, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ parent


def run_child(framework: str, args, model_dir: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        framework,
        "--model-dir",
        model_dir,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--lr",
        str(args.lr),
        "--batch-size",
        str(args.batch_size),
        "--max-completion-length",
        str(args.max_completion_length),
        "--seed",
        str(args.seed),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{framework} run failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def summarise(runs: list[dict]) -> dict:
    per_run = [statistics.median(r["times"][1:] or r["times"]) for r in runs]
    finals = [statistics.fmean(r["rewards"][len(r["rewards"]) // 2 :]) for r in runs if r["rewards"]]
    return {
        "s_per_step": statistics.median(per_run),
        "s_per_step_runs": per_run,
        "rss_mb": max(r["rss_mb"] for r in runs),
        "final_reward": statistics.fmean(finals) if finals else float("nan"),
        "reward_all": statistics.fmean(x for r in runs for x in r["rewards"]),
        "threads": sorted({r["threads"] for r in runs}),
    }


def reward_check(rl_runs: list[dict], trl_runs: list[dict]) -> str:
    """Do the two frameworks' rewards agree within sampling noise? Paired by step, as both see the same prompts.

    Each step's reward is the mean over its completions (averaged over a framework's runs); the verdict is whether
    the 95% Student-t interval of the per-step differences rlbench - TRL contains 0.
    """
    from rlbench.study.report.stats import t_interval

    per_step = [[statistics.fmean(s) for s in zip(*(r["rewards"] for r in runs))] for runs in (rl_runs, trl_runs)]
    diff = t_interval([a - b for a, b in zip(*per_step)])
    if diff.lo is None:
        return f"reward difference rlbench - TRL {diff.mean:+.3f} (too few steps for an interval)"
    verdict = "within noise" if diff.lo <= 0 <= diff.hi else "NOT within noise"
    return (
        f"reward difference rlbench - TRL, paired over {diff.n} steps: {diff.mean:+.3f} "
        f"[{diff.lo:+.3f}, {diff.hi:+.3f}] (95% t interval): {verdict}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in every run (default 1)")
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps per run (default 8)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per framework, alternating (default 5)")
    ap.add_argument("--model", default="tiny", help=MODEL_HELP)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=64, help="completions per step (prompts x 4)")
    ap.add_argument("--max-completion-length", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["rlbench", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        result = (child_rlbench if args.child == "rlbench" else child_trl)(args)
        result["rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    try:
        import trl
    except ImportError as err:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]'") from err
    import torch
    import transformers

    model_dir, model_desc = resolve_model(args.model)
    print(f"model: {model_desc}")
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{args.threads} thread(s) per run; {contention()} at start"
    )
    print(
        f"GRPO: {args.batch_size // SAMPLES_PER_PROMPT} prompts x {SAMPLES_PER_PROMPT} = {args.batch_size} completions, "
        f"<= {args.max_completion_length} tokens, T=1, top_p=1, no KL, 1 epoch, token-mean (TRL dapo), "
        f"lr {args.lr}; {args.steps} steps per run, {args.repeats} runs each, alternating\n"
    )
    runs: dict[str, list[dict]] = {"rlbench": [], "trl": []}
    start = time.perf_counter()
    for rep in range(args.repeats):
        for fw in ("rlbench", "trl") if rep % 2 == 0 else ("trl", "rlbench"):
            result = run_child(fw, args, model_dir)
            runs[fw].append(result)
            print(
                f"  run {rep + 1} {fw:8s} median {statistics.median(result['times'][1:] or result['times']):.3f} s/step, "
                f"reward {statistics.fmean(result['rewards']):.3f}, peak RSS {result['rss_mb']:.0f} MB",
                flush=True,
            )
    rl, tr = summarise(runs["rlbench"]), summarise(runs["trl"])
    print(
        f"\n| framework | s/step (median of {args.repeats} runs) | runs | peak RSS | reward, last half | reward, all steps |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in (("rlbench", rl), ("TRL GRPOTrainer", tr)):
        spread = ", ".join(f"{x:.3f}" for x in s["s_per_step_runs"])
        print(
            f"| {name} | {s['s_per_step']:.3f} | {spread} | {s['rss_mb']:.0f} MB | {s['final_reward']:.3f} | "
            f"{s['reward_all']:.3f} |"
        )
    print(reward_check(runs["rlbench"], runs["trl"]))
    print(
        f"\nrlbench / TRL seconds per step: {rl['s_per_step'] / tr['s_per_step']:.2f}x "
        f"(TRL / rlbench: {tr['s_per_step'] / rl['s_per_step']:.2f}x)"
    )
    for name in ("rlbench", "trl"):
        stages = [r["stages"] for r in runs[name] if r.get("stages")]
        if stages:
            keys = sorted({k for run in stages for row in run for k in row})
            med = {k: statistics.median(row.get(k, 0.0) for run in stages for row in run[1:] or run) for k in keys}
            print(f"{name} median seconds per stage: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items() if v >= 5e-4))
    print(
        f"threads seen in the runs: rlbench {rl['threads']}, TRL {tr['threads']}; {contention()} at end; "
        f"wall {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
