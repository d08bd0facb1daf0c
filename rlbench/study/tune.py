"""Equal-effort tuning on the validation split: every algorithm gets the same grid, seeds and budget per trial.

``rlbench tune`` runs one comparison whose rows are the trials (``grpo[optim.lr=2e-4]``: an algorithm with one grid
point of run settings), every run evaluated on ``eval.split=validation``. Each trial is scored as a leaderboard
scores a row (the mean over seeds of each run's score, the mean of its last ``eval.final_mean_of`` evaluations);
each algorithm keeps its best trial (the first listed among equals). ``tuned.yaml`` holds the choice and how it was
made; ``rlbench compare --tuned tuned.yaml`` runs each algorithm with its choice and the leaderboard states the
protocol. Nothing here reads the test split.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from rlbench.core.config import ConfigError
from rlbench.core.configure import parse_yaml, value_at
from rlbench.core.results import write_text_atomic
from rlbench.study.report.inputs import ComparisonFiles
from rlbench.study.report.runs import run_score
from rlbench.study.variants import Row, option_text, parse_rows

TUNED = "tuned.yaml"
TUNING_TABLE = "tuning.md"
SPLIT = "validation"


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``("optim.lr=5e-5,1e-4", ...)`` -> ``{"optim.lr": [5e-05, 0.0001]}``; one line naming the bad ``--grid``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"--grid {item!r}: expected SECTION.KEY=v1,v2,... (e.g. optim.lr=5e-5,1e-4,2e-4)")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice")
        parsed = [parse_yaml(v.strip()) for v in values.split(",") if v.strip()]
        if not parsed or any(isinstance(v, (dict, list)) or v is None for v in parsed):
            raise ConfigError(f"--grid {item!r}: expected a comma-separated list of values")
        if len({repr(v) for v in parsed}) != len(parsed):
            raise ConfigError(f"--grid {key}: a value is listed twice")
        grid[key] = parsed
    if not grid:
        raise ConfigError("--grid: give at least one KEY=v1,v2,...")
    return grid


def trial_rows(algos: str, grid: dict[str, list[Any]]) -> list[Row]:
    """One row per algorithm and grid point, in the order given (algorithm-major)."""
    given = parse_rows(algos)
    names = [row.algo for row in given]
    if any(row.options for row in given):
        raise ConfigError(f"--algos {algos}: name plain algorithms; the grid says what varies")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    spec = ",".join(
        f"{name}[{','.join(f'{k}={option_text(v)}' for k, v in point.items())}]" for name in names for point in points
    )
    return parse_rows(spec)


def score_trials(comp: ComparisonFiles, rows: list[Row], metric: str) -> dict[str, list[dict[str, Any]]]:
    """Per algorithm, its trials in grid order: settings, per-seed scores and their mean (None if a run is missing)."""
    k = comp.final_mean_of
    by_label: dict[str, dict[int, float | None]] = {}
    for run in comp.runs:
        by_label.setdefault(run.algo, {})[run.seed] = run_score(run, metric, k)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        scores = by_label.get(row.label, {})
        values = list(scores.values())
        mean = statistics.fmean(values) if values and all(v is not None for v in values) else None
        out.setdefault(row.algo, []).append({"settings": row.settings, "scores": scores, "mean": mean})
    return out


def choose(trials: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each algorithm's best trial by mean score; the first listed wins a tie. Refuses an incomplete trial."""
    chosen = {}
    for algo, options in trials.items():
        missing = [t for t in options if t["mean"] is None]
        if missing:
            raise ConfigError(
                f"{algo} {_label(missing[0]['settings'])}: a run did not complete, so the trials are "
                "not equal; rerun the same command to finish them"
            )
        best = max(options, key=lambda t: t["mean"])  # max keeps the first of equals
        chosen[algo] = dict(best["settings"])
    return chosen


def tuned_document(
    trials: dict[str, list[dict[str, Any]]], grid: dict[str, list[Any]], manifest: dict[str, Any], metric: str
) -> dict[str, Any]:
    seeds = manifest["seeds"]
    k = (manifest.get("eval") or {}).get("final_mean_of", 1)
    return {
        "tuned": choose(trials),
        "protocol": {
            "task": manifest["task"],
            "model": manifest.get("model"),
            "split": SPLIT,
            "metric": metric,
            "score": f"mean over seeds of each run's mean {metric} accuracy over its last {k} evaluations",
            "grid": grid,
            "trials_per_algorithm": math.prod(len(v) for v in grid.values()),
            "seeds": seeds,
            "budget_per_run": {u: v for u, v in (manifest.get("budget") or {}).items() if v is not None},
            "command": manifest.get("command"),
        },
        "trials": {
            algo: [
                {"settings": t["settings"], "mean": t["mean"], "scores": {int(s): v for s, v in t["scores"].items()}}
                for t in options
            ]
            for algo, options in trials.items()
        },
    }


def write_tuned(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / TUNED
    head = (
        "# rlbench tune: per-algorithm settings chosen on the validation split (equal grid, seeds and budget per\n"
        "# algorithm); every trial's score is in tuning.md. Use with: rlbench compare ... --tuned THIS_FILE\n"
    )
    write_text_atomic(path, head + yaml.safe_dump(document, sort_keys=False))
    write_text_atomic(folder / TUNING_TABLE, tuning_table(document))
    return path


def tuning_table(document: dict[str, Any]) -> str:
    p = document["protocol"]
    seeds = p["seeds"]
    lines = [
        f"# Tuning on {p['task']}/{p['split']}",
        "",
        f"{p['trials_per_algorithm']} trials per algorithm x {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
        f"each run at {_budget(p['budget_per_run'])}; score: {p['score']}.",
        "",
        "| algorithm | trial | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | chosen |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for algo, options in document["trials"].items():
        for t in options:
            cells = [_pct(t["scores"].get(s)) for s in seeds]
            mark = "**yes**" if t["settings"] == document["tuned"][algo] else ""
            lines.append(
                f"| {algo} | {_label(t['settings'])} | " + " | ".join(cells) + f" | {_pct(t['mean'])} | {mark} |"
            )
    return "\n".join(lines) + "\n"


def load_tuned(path: Path, task: str, algos: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The choices and protocol of a ``tuned.yaml`` for a comparison of ``algos`` on ``task``; one line naming the
    file and the problem otherwise (a missing algorithm would make the comparison's tuning unequal)."""
    try:
        document = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--tuned {path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--tuned {path}: not YAML ({str(exc).splitlines()[0]})") from None
    tuned, protocol = value_at(document, ["tuned"]), value_at(document, ["protocol"])
    if not isinstance(tuned, dict) or not isinstance(protocol, dict):
        raise ConfigError(f"--tuned {path}: expected the 'tuned' and 'protocol' mappings `rlbench tune` writes")
    if protocol.get("task") != task:
        raise ConfigError(f"--tuned {path}: tuned on task {protocol.get('task')!r}, but this comparison is on {task!r}")
    for algo in algos:
        if not isinstance(tuned.get(algo), dict):
            raise ConfigError(
                f"--tuned {path}: has no tuned settings for {algo}; tune every compared algorithm "
                "(equal effort), or leave --tuned out"
            )
    return {a: dict(tuned[a]) for a in algos}, {**protocol, "tuned": {a: dict(tuned[a]) for a in algos}}


def _label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={option_text(v)}" for k, v in settings.items())


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _budget(budget: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in budget.items()) or "the config's budget"
