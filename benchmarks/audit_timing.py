"""How long the audit (regrading included) takes, and how large every evaluation's records make a run folder.

    python benchmarks/audit_timing.py comparison DIR [--every-point]
    python benchmarks/audit_timing.py gsm8k [--data ../shared/data] [--points 3] [--samples 4] [--chars 1000]

``comparison`` copies DIR to a temporary folder (DIR is never written) and times reading it and auditing it, as
``rlbench report`` does. With ``--every-point``, a folder written before every evaluation kept its records (the
committed results) first gets a stand-in for the run folders the current trainer writes: every evaluation's records
are its final evaluation's, re-tagged, with eval.jsonl, summary.json and the file hashes made to agree. That is the
same number of completions to read and regrade as real records, so the timing and sizes are those of a regenerated
result. ``gsm8k`` regrades one run's ``--points`` evaluations of the 1,319 GSM8K test problems, each a greedy and
``--samples`` sampled completions, read from their records files. Each completion is distinct, as a model's are: the
words of the problem and its worked solution in a random order, about ``--chars`` characters, ending in the right
answer or in the answer off by one; so neither the grader's de-duplication nor gzip gets an easier job than real
completions give them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlbench.core.configure import build_task
from rlbench.core.results import EVAL_RECORDS, EVALS, RUNS, SUMMARY, read_jsonl, records_path, write_records  # noqa: E402
from rlbench.engine.file_hashes import file_hashes  # noqa: E402
from rlbench.run.eval.metrics import Scored, summarize  # noqa: E402
from rlbench.study.report.audit import audit_comparison  # noqa: E402
from rlbench.study.report.audit_run import Findings  # noqa: E402
from rlbench.study.report.inputs import load_comparison, load_run  # noqa: E402
from rlbench.study.report.regrade import Regrader, regrade_run  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def every_point(comparison: Path) -> None:
    """Give each legacy run folder records for every evaluation (its final one's), consistent and hashed."""
    for run in sorted((comparison / RUNS).iterdir()):
        final = read_jsonl(run / EVAL_RECORDS)
        evals = read_jsonl(run / EVALS)
        sampled = evals[-1]["sampled"]
        for row in evals:
            write_records(
                records_path(run, row["point"]), [{"point": row["point"], "step": row["step"], **r} for r in final]
            )
            row.update(
                summarize(
                    final, ks=range(1, sampled["k"] + 1), temperature=sampled["temperature"], top_p=sampled["top_p"]
                )
            )
        (run / EVAL_RECORDS).unlink()
        (run / EVALS).write_text("".join(json.dumps(r) + "\n" for r in evals))
        summary = json.loads((run / SUMMARY).read_text())
        scored = evals[1:][-len(summary["score_steps"]) :]
        summary["initial"] = {m: evals[0][m]["accuracy"] for m in ("greedy", "sampled")}
        summary["final"] = {m: evals[-1][m]["accuracy"] for m in ("greedy", "sampled")}
        summary["score"] = {m: statistics.fmean(r[m]["accuracy"] for r in scored) for m in ("greedy", "sampled")}
        summary["files"] = file_hashes(run)
        (run / SUMMARY).write_text(json.dumps(summary, indent=2))


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_comparison(source: Path, expand: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / source.name
        shutil.copytree(source, copy)
        if expand:
            every_point(copy)
        runs = sorted((copy / RUNS).iterdir())
        start = time.perf_counter()
        comp = load_comparison(copy)
        loaded = time.perf_counter()
        audit = audit_comparison(comp)
        done = time.perf_counter()
        sizes = [folder_size(r) for r in runs]
        records = [folder_size(r / "eval_records") if (r / "eval_records").is_dir() else 0 for r in runs]
        print(
            f"{len(runs)} runs: read {loaded - start:.2f} s, audit {done - loaded:.2f} s; matched {audit['matched']}, "
            f"{len(audit['problems'])} problem(s), unchecked {audit['unchecked']}"
        )
        print(
            f"run folder: {statistics.fmean(sizes) / 1e6:.2f} MB on average (records {statistics.fmean(records) / 1e6:.3f}"
            f" MB), {sum(sizes) / 1e6:.1f} MB for the comparison's runs"
        )


def completion(example, right: bool, chars: int, rng: random.Random) -> str:
    words = f"{example.question} {example.solution}".split()
    text = []
    while sum(len(w) + 1 for w in text) < chars:
        text.append(rng.choice(words))
    return " ".join(text) + f"\n#### {example.answer if right else example.answer + '1'}"


def time_gsm8k(data: Path, points: int, samples: int, chars: int) -> None:
    task = build_task({"name": "gsm8k", "data": str(data / "gsm8k" / "{split}.jsonl")})
    examples = task.load("test")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "grpo-s1"
        evals = []
        for point in range(points):
            records = []
            for i, e in enumerate(examples):
                texts = [completion(e, (i + j + point) % 3 != 0, chars, rng) for j in range(samples + 1)]
                scored = [
                    Scored(t, chars // 4, False, g).record()
                    for t, g in zip(texts, task.grade_many(texts, [e] * len(texts)))
                ]
                records.append({"point": point, "step": point, "id": e.id, "greedy": scored[0], "samples": scored[1:]})
            write_records(records_path(run, point), records)
            row = summarize(records, ks=range(1, samples + 1), temperature=1.0, top_p=1.0)
            evals.append({"point": point, "step": point, "usage": {}, **row})
        (run / EVALS).write_text("".join(json.dumps(r) + "\n" for r in evals))
        (run / SUMMARY).write_text(json.dumps({"status": "completed"}))
        config = {"task": {"name": "gsm8k", "data": str(data / "gsm8k" / "{split}.jsonl")}, "eval": {"split": "test"}}
        start = time.perf_counter()
        found = Findings()
        regrade_run(load_run(run, "grpo", 1), config, points, Regrader(), found)
        took = time.perf_counter() - start
        size = folder_size(run / "eval_records") / points
        print(
            f"regraded {points} evaluation(s) of {len(examples)} problems x {samples + 1} completions in {took:.2f} s "
            f"({took / points:.2f} s each); problems {found.problems}; records file {size / 1e6:.2f} MB per evaluation"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("comparison")
    one.add_argument("dir", type=Path)
    one.add_argument("--every-point", action="store_true")
    gsm = sub.add_parser("gsm8k")
    gsm.add_argument("--data", type=Path, default=DEFAULT_DATA)
    gsm.add_argument("--points", type=int, default=3)
    gsm.add_argument("--samples", type=int, default=4)
    gsm.add_argument("--chars", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "comparison":
        time_comparison(args.dir, args.every_point)
    else:
        time_gsm8k(args.data, args.points, args.samples, args.chars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
