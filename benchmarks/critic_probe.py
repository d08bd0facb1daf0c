"""Can PPO's critic learn, and how much is there to learn? A supervised probe of the value model on the tiny lab.

    python benchmarks/critic_probe.py [--lr 2.5e-4] [--steps 100] [--seed 1]
    python benchmarks/critic_probe.py --steps-checked results/tiny-arith

The policy is the tiny lab's cached warm-start and stays frozen; each step draws one training batch exactly as a
PPO run does (64 completions), scores the critic's values on it before training on it (out of sample, as the
trainer's ``value_explained_var``), then trains the value model on it: 4 minibatches of squared error, AdamW, grad
clip 1. Two targets, each with a critic of its own:

- ``digit``: the prompt's first digit / 9, readable from the prompt: a critic that works reaches EV near 1;
- ``reward``: the completion's reward, what PPO's critic predicts (lambda = gamma = 1).

Prints EV (mean of the last 10 steps) every 10 steps and one JSON line at the end.

``--steps-checked DIR`` instead reads a comparison's logged training rollouts (``runs/*/samples.jsonl``) and says how
much of their reward variance one fact about a completion explains: whether every step it wrote (``a+b=c``) is right.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms.base import explained_variance  # noqa: E402
from rlbench.core.configure import build_run_config, load_yaml  # noqa: E402
from rlbench.run.training import build_trainer  # noqa: E402

TARGETS = ("digit", "reward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lr", type=float, default=2.5e-4, help="the critic's learning rate")
    ap.add_argument("--steps", type=int, default=100, help="batches (the tiny lab's budget is 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--steps-checked", type=Path, metavar="DIR", help="a comparison folder of the arith task")
    args = ap.parse_args()
    if args.steps_checked:
        print(json.dumps(steps_checked(args.steps_checked)))
        return
    torch.manual_seed(args.seed)
    tree = load_yaml("tiny-arith")
    tree.update(algo={"name": "ppo"}, seed=args.seed, out=tempfile.mkdtemp(prefix="critic-probe-"))
    trainer = build_trainer(build_run_config(tree), progress=False)
    critics = {t: trainer.policy.value_head if t == "reward" else _copy(trainer.policy.value_head) for t in TARGETS}
    optims = {t: torch.optim.AdamW(c.parameters(), lr=args.lr, weight_decay=0.01) for t, c in critics.items()}
    ev: dict[str, list[float]] = {t: [] for t in TARGETS}
    for step in range(args.steps):
        batch, examples, _ = trainer.rollout(step, {})
        mask = batch.response_mask
        per_row = {"digit": torch.tensor([int(e.id[0]) / 9.0 for e in examples]), "reward": batch.rewards.float()}
        for t in TARGETS:
            target = per_row[t][:, None].expand_as(mask) * mask
            ev[t].append(float(explained_variance(_values(critics[t], batch).detach(), target, mask)))
            for rows in torch.randperm(batch.size).tensor_split(args.minibatches):
                sub = batch.select(rows)
                loss = (
                    (_values(critics[t], sub) - target[rows]) ** 2 * sub.response_mask
                ).sum() / sub.response_mask.sum()
                optims[t].zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(critics[t].parameters(), 1.0)
                optims[t].step()
        if (step + 1) % 10 == 0:
            print(
                f"step {step + 1}: " + ", ".join(f"{t} EV {statistics.fmean(ev[t][-10:]):+.3f}" for t in TARGETS),
                flush=True,
            )
    print(
        json.dumps(
            {
                "lr": args.lr,
                "steps": args.steps,
                "seed": args.seed,
                **{f"{t}_ev_last10": round(statistics.fmean(ev[t][-10:]), 4) for t in TARGETS},
            }
        )
    )


STEP = re.compile(r"(-?\d+)([+-])(\d+)=(-?\d+)")


def steps_checked(folder: Path) -> dict[str, float]:
    """Reward by whether every written step is right, and the share of reward variance that flag explains."""
    pairs = []
    for file in sorted(folder.glob("runs/*/samples.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line)
            steps = STEP.findall(row["completion"])
            right = all((int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c) for a, op, b, c in steps)
            pairs.append((right, float(row["reward"])))
    rewards = [r for _, r in pairs]
    mean = {flag: statistics.fmean([r for f, r in pairs if f == flag]) for flag in (True, False)}
    explained = 1 - statistics.pvariance([r - mean[f] for f, r in pairs]) / statistics.pvariance(rewards)
    return {
        "completions": len(pairs),
        "all_steps_right": round(sum(f for f, _ in pairs) / len(pairs), 4),
        "reward_if_all_right": round(mean[True], 4),
        "reward_otherwise": round(mean[False], 4),
        "explained_variance": round(explained, 4),
    }


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def _values(critic: torch.nn.Module, batch) -> torch.Tensor:
    return critic(batch.input_ids, batch.attention_mask, batch.response_len) * batch.response_mask


if __name__ == "__main__":
    main()
