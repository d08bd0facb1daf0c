"""Where one rlbench GRPO step's time goes on the tiny lab: median seconds per stage and the top PyTorch ops.

    python benchmarks/profile_step.py [--threads 1] [--steps 12] [--profiled 4] [--model auto|random|tiny|DIR]

The settings are vs_trl.py's defaults (its ``rlbench_config``: 16 prompts x 4 samples, <= 40 tokens, no KL,
token-mean, lr 2e-4, seed 0). The first step is left out of the medians (one-off warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinylab import MODEL_HELP, contention, resolve_model  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from vs_trl import rlbench_config  # noqa: E402

from rlbench.run.training import build_trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (the first is left out of the medians)")
    ap.add_argument("--profiled", type=int, default=4, help="further steps run under the PyTorch profiler")
    ap.add_argument("--model", default="tiny", help=MODEL_HELP)
    args = ap.parse_args()
    model_dir, desc = resolve_model(args.model)
    config = rlbench_config(
        model_dir,
        threads=args.threads,
        seed=0,
        steps=args.steps + args.profiled,
        batch_size=64,
        max_tokens=40,
        lr=2e-4,
        out=tempfile.mkdtemp(prefix="rlbench-profile-"),
    )
    trainer = build_trainer(config, progress=False)
    print(f"model: {desc}; {args.threads} thread(s); {contention()} at start")
    rows = []
    for _ in range(args.steps):
        start = time.perf_counter()
        row = trainer.step()
        row["wall"] = time.perf_counter() - start
        rows.append(row)
    timed = rows[1:] or rows
    stages = sorted({k for r in timed for k in r["time"]})
    print(
        "median s/step: "
        + ", ".join(f"{k} {statistics.median(r['time'].get(k, 0.0) for r in timed):.3f}" for k in stages)
        + f", whole step {statistics.median(r['wall'] for r in timed):.3f}"
    )
    print(f"inert rows left out of the update: {statistics.fmean(r['inert_rows_frac'] for r in rows):.0%}")
    if args.profiled:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profiled):
                trainer.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(f"{contention()} at end")


if __name__ == "__main__":
    main()
