"""The leaderboard of one or more comparison folders: ``report.json``, ``leaderboard.md`` and ``index.html``.

:func:`build_report` turns comparison folders into one JSON-able dict holding every number; the markdown and HTML
writers only format that dict, so the three outputs can never disagree. How each number is computed is documented
in docs/report.md.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from rlbench import behaviours, stats
from rlbench.report_inputs import ComparisonFiles, ReportInputError, RunFiles, load_comparison
from rlbench.report_runs import METRICS, STAGES, audit_flags, completions, dig, number, record_scores, run_row

DEFAULT_REFERENCE = "em-pg"
CI_METHODS = ("t", "bootstrap")
ACCURACY_RANGE = (0.0, 1.0)
LENGTH_KEYS = ("length_mean", "length_correct", "length_wrong", "truncated_frac")
COST_KEYS = ("gen_tokens_per_s", "seconds_per_step", *(f"{s}_pct" for s in (*STAGES, "other")))


def write_report(dirs: Sequence[Path], out: Path, reference: str | None = None, metric: str = "greedy",
                 ci: str = "t") -> dict[str, Any]:
    """Read the comparison folders, write report.json, leaderboard.md and index.html into ``out``; return the data."""
    from rlbench.report_html import render_html
    from rlbench.report_markdown import render_markdown

    data = build_report([load_comparison(Path(d)) for d in dirs], reference, metric, ci, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out / "leaderboard.md").write_text(render_markdown(data), encoding="utf-8")
    (out / "index.html").write_text(render_html(data), encoding="utf-8")
    return data


def build_report(comparisons: Sequence[ComparisonFiles], reference: str | None, metric: str, ci: str,
                 out: Path | None = None) -> dict[str, Any]:
    if metric not in METRICS:
        raise ReportInputError(f"--metric {metric!r}: must be one of {', '.join(METRICS)}")
    if ci not in CI_METHODS:
        raise ReportInputError(f"--ci {ci!r}: must be one of {', '.join(CI_METHODS)}")
    if not comparisons:
        raise ReportInputError("no comparison folders given")
    if reference is not None:
        for comp in comparisons:
            if reference not in comp.manifest["algos"]:
                raise ReportInputError(f"--reference {reference}: not compared in {comp.path / 'manifest.json'} "
                                       f"(algos: {', '.join(comp.manifest['algos'])})")
    if metric == "sampled":
        for comp in comparisons:
            if dig(comp.manifest, "eval", "samples") == 0:
                raise ReportInputError(f"--metric sampled: {comp.path / 'manifest.json'} says eval.samples = 0 "
                                       "(no sampled evaluation); use --metric greedy")
    labels = _labels(comparisons)
    tasks = [analyse_task(c, label, reference, metric, ci) for c, label in zip(comparisons, labels)]
    return {
        "report_command": _command(comparisons, out, reference, metric, ci),
        "metric": metric,
        "reference": reference,
        "intervals": {"method": ci, "level": stats.DEFAULT_LEVEL, "resamples": stats.DEFAULT_RESAMPLES,
                      "rng_seed": stats.DEFAULT_SEED},
        "paired_test": {"method": "paired bootstrap, crossed over seeds and problems", "resamples": stats.DEFAULT_RESAMPLES,
                        "rng_seed": stats.DEFAULT_SEED, "sided": "two"},
        "behaviour_patterns": {k: list(v) for k, v in behaviours.PATTERNS.items()},
        "tasks": tasks,
        "summary": _summary(tasks, metric),
    }


def analyse_task(comp: ComparisonFiles, label: str, reference: str | None, metric: str, ci: str) -> dict[str, Any]:
    m = comp.manifest
    algos: list[str] = list(m["algos"])
    ref = reference if reference is not None else (DEFAULT_REFERENCE if DEFAULT_REFERENCE in algos else algos[0])
    flags = audit_flags(comp.audit, [r.name for r in comp.runs])
    runs = {r.name: run_row(r, flags[r.name]) for r in comp.runs}
    by_algo = {a: [r for r in comp.runs if r.algo == a] for a in algos}
    rows = [_algo_row(a, by_algo[a], runs, by_algo[ref], a == ref, metric, ci) for a in algos]
    rows.sort(key=lambda r: -r["accuracy"][metric]["mean"] if r["accuracy"][metric] else float("inf"))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["accuracy"][metric] else None
    audit = comp.audit
    return {
        "label": label,
        "task": comp.task,
        "dir": str(comp.path),
        "model": m.get("model"),
        "command": m.get("command"),
        "budget": m.get("budget"),
        "seeds": m["seeds"],
        "eval": _eval_protocol(m),
        "code_version": m.get("code_version"),
        "created": m.get("created"),
        "packages": m.get("packages"),
        "reference": ref,
        "audit": {
            "present": audit is not None,
            "matched": bool(audit.get("matched")) if audit else None,
            "problems": [str(p) for p in audit.get("problems") or []] if audit else [],
            "flagged_runs": sorted(name for name, why in flags.items() if why),
        },
        "extra_run_folders": comp.extra_runs,
        "incomplete_runs": [r.name for r in comp.runs if not r.complete],
        "algorithms": rows,
        "runs": list(runs.values()),
    }


def _algo_row(algo: str, runs: list[RunFiles], rows: dict[str, dict], ref_runs: list[RunFiles], is_ref: bool,
              metric: str, ci: str) -> dict[str, Any]:
    done = [r for r in runs if r.complete]
    done_rows = [rows[r.name] for r in done]
    accuracy = {}
    for m in METRICS:
        values = [v for v in (row["final"][m] for row in done_rows) if v is not None]
        accuracy[m] = {**stats.interval(values, ci, bounds=ACCURACY_RANGE).to_dict(), "values": values} if values else None
    return {
        "algo": algo,
        "runs": len(runs),
        "complete": len(done),
        "incomplete": [{"name": r.name, "status": r.status} for r in runs if not r.complete],
        "flagged": sorted(r.name for r in runs if rows[r.name]["audit_flags"]),
        "accuracy": accuracy,
        "delta": None if is_ref else {m: paired_delta(done, [r for r in ref_runs if r.complete], m) for m in METRICS},
        "length": {m: {k: _mean_of(row["length"][m][k] for row in done_rows) for k in LENGTH_KEYS} for m in METRICS},
        "cost": {k: _mean_of(row["throughput"][k] for row in done_rows) for k in COST_KEYS}
        | {"wall_seconds": _mean_of(row["wall_seconds"] for row in done_rows),
           "train_seconds": _mean_of(number(row["usage"]["seconds"]) for row in done_rows)},
        "behaviours": {m: behaviours.rates(t for r in done for t in completions(r, m)) for m in METRICS},
        "curves": _curves(done, metric, ci),
    }


def paired_delta(runs: list[RunFiles], ref_runs: list[RunFiles], metric: str) -> dict[str, Any] | None:
    """Δ = algorithm - reference on ``metric``, paired on (seed, problem id), with the paired bootstrap p-value.

    Uses the seeds both completed and the problem ids both evaluated. Without per-problem records it falls back to
    the mean over shared seeds of the per-seed accuracy difference, with no p-value.
    """
    ref_by_seed = {r.seed: r for r in ref_runs}
    shared = sorted(r.seed for r in runs if r.seed in ref_by_seed)
    if not shared:
        return None
    mine = {r.seed: r for r in runs}
    scores = {s: (record_scores(mine[s], metric), record_scores(ref_by_seed[s], metric)) for s in shared}
    ids = None
    for a, b in scores.values():
        common = [i for i in b if i in a]
        ids = common if ids is None else [i for i in ids if i in set(common)]
    if ids:
        test = stats.paired_bootstrap([[scores[s][0][i] for i in ids] for s in shared],
                                      [[scores[s][1][i] for i in ids] for s in shared])
        return {**test.to_dict(), "seed_list": shared, "paired_on": "problems"}
    diffs = [dig(mine[s].evals[-1], metric, "accuracy") for s in shared]
    refs = [dig(ref_by_seed[s].evals[-1], metric, "accuracy") for s in shared]
    pairs = [(a, b) for a, b in zip(diffs, refs) if number(a) is not None and number(b) is not None]
    if not pairs:
        return None
    return {"delta": stats.mean([a - b for a, b in pairs]), "lo": None, "hi": None, "p": None, "seeds": len(pairs),
            "problems": None, "resamples": 0, "seed_list": shared, "paired_on": "seeds (no eval_records.jsonl)"}


def _curves(runs: list[RunFiles], metric: str, ci: str) -> dict[str, Any]:
    """Accuracy at each evaluation point and training length per step, averaged over seeds (with intervals).

    Points are aligned by their order: every run of a comparison evaluates at the same budget fractions.
    """
    out: dict[str, Any] = {"eval": [], "length": []}
    if not runs:
        return out
    for j in range(min(len(r.evals) for r in runs)):
        points = [r.evals[j] for r in runs]
        accs = [v for v in (number(dig(p, metric, "accuracy")) for p in points) if v is not None]
        if not accs:
            continue
        iv = stats.interval(accs, ci, bounds=ACCURACY_RANGE)
        out["eval"].append({"samples": _mean_of(number(dig(p, "usage", "samples")) for p in points),
                            "seconds": _mean_of(number(dig(p, "usage", "seconds")) for p in points),
                            "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n})
    for k in range(min(len(r.metrics) for r in runs)):
        rows = [r.metrics[k] for r in runs]
        lengths = [v for v in (number(row.get("length_mean")) for row in rows) if v is not None]
        if lengths:
            out["length"].append({"samples": _mean_of(number(dig(row, "usage", "samples")) for row in rows),
                                  "mean": stats.mean(lengths)})
    return out


def _summary(tasks: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Algorithm x task: final accuracy interval on the chosen metric (None where an algorithm was not compared)."""
    algos: list[str] = []
    for task in tasks:
        algos.extend(row["algo"] for row in task["algorithms"] if row["algo"] not in algos)
    cells = {a: {t["label"]: next((r["accuracy"][metric] for r in t["algorithms"] if r["algo"] == a), None)
                 for t in tasks} for a in algos}
    return {"metric": metric, "tasks": [t["label"] for t in tasks], "algos": algos, "cells": cells}


def _eval_protocol(manifest: dict[str, Any]) -> dict[str, Any]:
    ev = manifest.get("eval") if isinstance(manifest.get("eval"), dict) else {}
    sampling = dig(manifest, "config", "sampling") or {}
    return {**ev, **{k: sampling.get(k) for k in ("temperature", "top_p", "max_new_tokens")}}


def _labels(comparisons: Sequence[ComparisonFiles]) -> list[str]:
    """Section names: the task, or task (folder) when two folders hold the same task."""
    tasks = [c.task for c in comparisons]
    return [t if tasks.count(t) == 1 else f"{t} ({c.path.name})" for t, c in zip(tasks, comparisons)]


def _command(comparisons: Sequence[ComparisonFiles], out: Path | None, reference: str | None, metric: str,
             ci: str) -> str:
    """The ``rlbench report`` command that rebuilds this report (whoever called it: the CLI or ``compare``)."""
    parts = ["rlbench", "report", *(str(c.path) for c in comparisons)]
    if out is not None and not (len(comparisons) == 1 and Path(out) == comparisons[0].path):
        parts += ["--out", str(out)]
    if reference is not None:
        parts += ["--reference", reference]
    parts += ["--metric", metric, "--ci", ci]
    return " ".join(shlex.quote(p) for p in parts)


def _mean_of(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return stats.mean(found) if found else None
