"""Rollout backends side by side on the tiny lab's real warm-start: greedy evaluations and the sampler gap.

    python benchmarks/backends.py [--problems 300] [--steps 3]

For each backend (``rlbench``, ``hf``): the greedy evaluation of the cached warm-start on the first ``--problems``
test problems (accuracy, and whether every completion is identical to the ``rlbench`` backend's), its decoding
speed, and ``--steps`` EM-PG training steps with the mean ``sampler_gap_abs`` / ``sampler_gap_kl`` they log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlbench.core.configure import build_task, resolve  # noqa: E402
from rlbench.engine.generation import encode_prompt, make_generator  # noqa: E402
from rlbench.engine.policy import Policy, load_model  # noqa: E402
from rlbench.run.training import build_trainer, resolve_model_path  # noqa: E402

BACKENDS = ("rlbench", "hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = resolve("configs/tiny-arith.yaml", [], {"algo": "em-pg"})
    task = build_task(config.task)
    path = resolve_model_path(config, task, progress=True)
    model, tok = load_model(path, "fp32", torch.device("cpu"))
    policy = Policy(model, tok, torch.device("cpu"))
    examples = task.load("test")[: args.problems]
    prompts = [encode_prompt(tok, task.prompt(e)) for e in examples]
    texts: dict[str, list[str]] = {}
    for backend in BACKENDS:
        generator = make_generator(backend, policy, batch_size=config.rollout.generation_batch_size)
        start = time.perf_counter()
        gen = generator.generate(
            prompts, temperature=1.0, top_p=1.0, greedy=True, max_new_tokens=config.sampling.max_new_tokens
        )
        seconds = time.perf_counter() - start
        texts[backend] = gen.texts
        accuracy = statistics.fmean(g.correct for g in task.grade_many(gen.texts, examples))
        gaps = _gaps(backend, args.steps)
        print(
            json.dumps(
                {
                    "backend": backend,
                    "problems": len(examples),
                    "greedy_accuracy": round(accuracy, 4),
                    "identical_to_rlbench": sum(a == b for a, b in zip(gen.texts, texts["rlbench"])),
                    "tokens_per_s": round(gen.num_tokens / seconds, 1),
                    **gaps,
                }
            )
        )


def _gaps(backend: str, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"rollout.backend={backend}",
            f"budget.steps={steps}",
            "budget.samples=null",
            "eval.limit=8",
            "eval.samples=0",
            "eval.every=0",
            "checkpoint_every=0",
            f"out={out}",
        ]
        build_trainer(resolve("configs/tiny-arith.yaml", overrides, {"algo": "em-pg"}), progress=False).run()
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {key: max(r[key] for r in rows) for key in ("sampler_gap_abs", "sampler_gap_kl")}


if __name__ == "__main__":
    main()
