"""Where a comparison's CPU time went, read from its own files: process start-up, the training steps by stage, and
the rest of each run (evaluations, model loading, logging), per row and in all.

    python benchmarks/job_time.py results/tiny-arith

Per run: the process's seconds come from the ``end`` line of ``placements.jsonl``; the run's own wall time from its
``summary.json`` (``wall_seconds``, from loading the model to the last file written); its steps' stages from
``metrics.jsonl`` (``time``: generate, grade, logprobs, update, sync). Start-up is process minus run wall time
(Python, torch and transformers imports, argument checks); "evaluations, load, logging" is the run's wall time minus
its steps' stages. Nothing is rerun: these are the seconds the comparison itself measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

from rlbench.core.results import METRICS, RUNS, SUMMARY, read_jsonl
from rlbench.study.executors import PLACEMENTS


def split(folder: Path) -> tuple[dict[str, dict[str, list[float]]], float]:
    """Per row, per part: each seed's seconds; and the comparison's elapsed seconds (first start to last end)."""
    placements = read_jsonl(folder / PLACEMENTS)
    process = {e["run"]: e["seconds"] for e in placements if e["event"] == "end" and e.get("seconds") is not None}
    times = [datetime.fromisoformat(e["time"]) for e in placements if e["event"] in ("start", "end")]
    elapsed = (max(times) - min(times)).total_seconds() if times else float("nan")
    rows: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in sorted((folder / RUNS).iterdir()):
        if run.name not in process:
            sys.exit(f"{folder / PLACEMENTS}: no end line with seconds for run {run.name}")
        wall = json.loads((run / SUMMARY).read_text())["wall_seconds"]
        stages: collections.Counter[str] = collections.Counter()
        for step in read_jsonl(run / METRICS):
            stages.update(step["time"])
        parts = rows[run.name.rsplit("-s", 1)[0]]
        parts["process"].append(process[run.name])
        parts["start-up"].append(process[run.name] - wall)
        for stage, seconds in stages.items():
            parts[f"step: {stage}"].append(seconds)
        parts["evaluations, load, logging"].append(wall - sum(stages.values()))
    return rows, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a comparison folder (with placements.jsonl and runs/)")
    folder = parser.parse_args().folder
    rows, elapsed = split(folder)
    parts = [p for p in next(iter(rows.values())) if p != "process"]
    print(f"{folder}: mean seconds per run, by row (process = start-up + steps + evaluations, load, logging)")
    print("| row | seeds | process | " + " | ".join(parts) + " |")
    print("|---" * (len(parts) + 3) + "|")
    totals: collections.Counter[str] = collections.Counter()
    for row, seconds in rows.items():
        cells = [f"{statistics.mean(seconds[p]):.1f}" for p in ["process", *parts]]
        print(f"| {row} | {len(seconds['process'])} | " + " | ".join(cells) + " |")
        totals.update({p: sum(v) for p, v in seconds.items()})
    print(f"\nall runs: {totals['process']:.0f} process-seconds; the comparison's elapsed time {elapsed:.0f} s")
    for part in parts:
        print(f"  {part}: {totals[part]:.0f} s ({totals[part] / totals['process']:.0%})")


if __name__ == "__main__":
    main()
