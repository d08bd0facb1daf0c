"""The leaderboard of one or more comparison folders: ``report.json``, ``leaderboard.md`` and ``index.html``.

:func:`build_report` turns comparison folders into one JSON-able dict holding every number; the markdown and HTML
writers only format that dict, so the three outputs can never disagree. How each number is computed is documented
in docs/report.md.

Over 400 lines on purpose: this is the one place where the report's dict gets its shape (rows, paired deltas,
curves, options, protocol, provenance); the tests and the statistics live elsewhere (``stats``, ``power``,
``verdicts``), and cutting the assembly in two would split a single schema across files.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlbench.core.provenance import version_differences
from rlbench.core.results import INDEX_HTML, LEADERBOARD, MANIFEST, REPORT_JSON, write_json, write_text_atomic
from rlbench.study.report import behaviours, stats, verdicts
from rlbench.study.report.audit import audit_comparison
from rlbench.study.report.critic import critic_fit
from rlbench.study.report.curves import eval_curves, training_curves
from rlbench.study.report.examples import examples
from rlbench.study.report.inputs import (
    CI_METHODS,
    DEFAULT_REFERENCE,
    ComparisonFiles,
    ReportInputError,
    RunFiles,
    load_comparison,
    pool_comparisons,
)
from rlbench.study.report.runs import METRICS, STAGES, audit_flags, completions, dig, number, record_scores, run_row
from rlbench.study.variants import control_source

ACCURACY_RANGE = (0.0, 1.0)
LENGTH_KEYS = ("length_mean", "length_correct", "length_wrong", "truncated_frac")
COST_KEYS = ("gen_tokens_per_s", "seconds_per_step", *(f"{s}_pct" for s in (*STAGES, "other")))


def write_report(
    dirs: Sequence[Path],
    out: Path,
    reference: str | None = None,
    metric: str | None = None,
    ci: str = "t",
    include_flagged: bool = False,
    pool: bool = True,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Read the comparison folders, write report.json, leaderboard.md and index.html into ``out``; return the data.

    Folders holding seeds of one comparison are pooled into one (``pool``; see
    :func:`rlbench.study.report.inputs.pool_comparisons`); ``notes`` receives a line per same-task folder kept apart.
    """
    from rlbench.study.report.html import render_html
    from rlbench.study.report.markdown import render_markdown

    data = build_report(
        [load_comparison(Path(d)) for d in dirs], reference, metric, ci, out, include_flagged, pool=pool, notes=notes
    )
    _refuse_foreign_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_JSON, data)  # atomic: a report being rebuilt is never seen half written
    write_text_atomic(out / LEADERBOARD, render_markdown(data))
    write_text_atomic(out / INDEX_HTML, render_html(data))
    return data


#: How each output file begins when rlbench wrote it; any other file of that name is the user's and is kept.
OUTPUT_SIGNATURES = {
    REPORT_JSON: '{\n  "report_command"',
    LEADERBOARD: "# RL algorithm leaderboard",
    INDEX_HTML: '<!DOCTYPE html>\n<html lang="en">\n<head>',
}


def rank_by(comparisons: Sequence[ComparisonFiles]) -> str:
    """The metric the comparisons were designed to rank by; one line naming the folders if they disagree."""
    chosen = {str(dig(c.manifest, "eval", "rank_by") or "greedy"): c.path for c in comparisons}
    if len(chosen) > 1:
        raise ReportInputError(
            "the folders rank by different metrics ("
            + ", ".join(f"{m}: {p}" for m, p in chosen.items())
            + "); pass --metric"
        )
    return next(iter(chosen), "greedy")


def _refuse_foreign_outputs(out: Path) -> None:
    """Never overwrite a report.json, leaderboard.md or index.html that rlbench did not write."""
    for name, start in OUTPUT_SIGNATURES.items():
        path = out / name
        if path.is_file():
            with path.open("rb") as handle:
                head = handle.read(len(start.encode())).decode("utf-8", "replace")
            if head != start:
                raise ReportInputError(
                    f"--out {out}: {name} there was not written by rlbench; it is kept, so choose another --out"
                )


def build_report(
    comparisons: Sequence[ComparisonFiles],
    reference: str | None,
    metric: str | None,
    ci: str,
    out: Path | None = None,
    include_flagged: bool = False,
    pool: bool = True,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """``metric`` None: the one the comparisons' manifests rank by (``eval.rank_by``; greedy for older ones)."""
    if metric is None:
        metric = rank_by(comparisons)
    if metric not in METRICS:
        raise ReportInputError(f"--metric {metric!r}: must be one of {', '.join(METRICS)}")
    if ci not in CI_METHODS:
        raise ReportInputError(f"--ci {ci!r}: must be one of {', '.join(CI_METHODS)}")
    if not comparisons:
        raise ReportInputError("no comparison folders given")
    named = [folder for comp in comparisons for folder in comp.folders]
    if pool:
        comparisons, kept_apart = pool_comparisons(comparisons)
        if notes is not None:
            notes.extend(kept_apart)
    if reference is not None:
        for comp in comparisons:
            if reference not in comp.manifest["algos"]:
                raise ReportInputError(
                    f"--reference {reference}: not compared in {comp.path / MANIFEST} "
                    f"(algos: {', '.join(comp.manifest['algos'])})"
                )
    if metric == "sampled":
        for comp in comparisons:
            if dig(comp.manifest, "eval", "samples") == 0:
                raise ReportInputError(
                    f"--metric sampled: {comp.path / MANIFEST} says eval.samples = 0 "
                    "(no sampled evaluation); use --metric greedy"
                )
    labels = _labels(comparisons)
    tasks = [analyse_task(c, label, reference, metric, ci, include_flagged) for c, label in zip(comparisons, labels)]
    return {
        "report_command": _command(named, out, reference, metric, ci, include_flagged, pool),
        "include_flagged": include_flagged,
        "metric": metric,
        "reference": reference,
        "intervals": {
            "method": ci,
            "level": stats.DEFAULT_LEVEL,
            "resamples": stats.DEFAULT_RESAMPLES,
            "rng_seed": stats.DEFAULT_SEED,
        },
        "paired_test": {
            "method": "paired t over seeds, Holm-adjusted across the rows tested against the reference; "
            "exact sign-flip permutation over seeds alongside where it can reach p < 0.05",
            "unit": "seed",
            "alpha": verdicts.ALPHA,
            "sided": "two",
            "secondary": {
                "method": "paired bootstrap over problems of the final evaluation and seeds, "
                "conditional on the trained models (descriptive, not a test of the "
                "algorithms)",
                "resamples": stats.DEFAULT_RESAMPLES,
                "rng_seed": stats.DEFAULT_SEED,
            },
        },
        "behaviour_patterns": {k: list(v) for k, v in behaviours.PATTERNS.items()},
        "tasks": tasks,
        "summary": _summary(tasks, metric),
    }


def analyse_task(
    comp: ComparisonFiles, label: str, reference: str | None, metric: str, ci: str, include_flagged: bool = False
) -> dict[str, Any]:
    """One comparison's numbers. The audit is recomputed from the run files (audit.json is only its record), and
    the runs it flags are left out of every mean and test unless ``include_flagged``."""
    m = comp.manifest
    algos: list[str] = list(m["algos"])
    ref = reference or m.get("reference") or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in algos else algos[0])
    audit = audit_comparison(comp)
    flags = audit_flags(audit, [r.name for r in comp.runs])
    if not include_flagged:
        comp = dataclasses.replace(comp, runs=[_set_aside(r) if flags[r.name] and r.complete else r for r in comp.runs])
    runs = {r.name: {**run_row(r, flags[r.name], comp.final_mean_of), "critic": critic_fit(r)} for r in comp.runs}
    by_algo = {a: [r for r in comp.runs if r.algo == a] for a in algos}
    rows = [_algo_row(a, by_algo[a], runs, by_algo[ref], a == ref, metric, ci) for a in algos]
    for row in rows:
        row["control"] = row["algo"] in comp.controls
    rows.sort(key=lambda r: (r["control"], -r["accuracy"][metric]["mean"] if r["accuracy"][metric] else float("inf")))
    scores = {row["algo"]: row["seed_scores"][metric] for row in rows}
    ranked = [row["algo"] for row in rows if not row["control"] and row["accuracy"][metric]]
    verdict = verdicts.verdicts(scores, ranked, ref, {c: control_source(c) for c in comp.controls})
    verdict["power_by_metric"] = verdicts.power_by_metric(
        {m: {row["algo"]: row["seed_scores"][m] for row in rows if row["seed_scores"][m]} for m in METRICS}, ranked, ref
    )
    for row in rows:
        row["rank"] = verdict["ranks"].get(row["algo"])
        row["test"] = (
            verdict["control"].get(row["algo"]) if row["control"] else verdict["vs_reference"].get(row["algo"])
        )
    return {
        "label": label,
        "task": comp.task,
        "dir": " + ".join(str(folder) for folder in comp.folders),
        "model": m.get("model"),
        "command": _provenance(comp, "command", "; "),
        "budget": m.get("budget"),
        "seeds": m["seeds"],
        "eval": _eval_protocol(m),
        "tuning": m.get("tuning") if isinstance(m.get("tuning"), dict) else None,
        "code_version": _provenance(comp, "code_version", ", "),
        "created": _provenance(comp, "created", ", "),
        "packages": m.get("packages"),
        # what each run itself ran with (summary.json): runs pooled from several folders or machines may differ
        "package_differences": version_differences(
            {r.name: dig(r.summary, "packages") for r in comp.runs if r.summary}
        ),
        **({"pooled_from": _pooled_from(comp)} if comp.sources else {}),
        "reference": ref,
        "metric": metric,
        "final_mean_of": comp.final_mean_of,
        "row_options": _row_options(m),
        "verdicts": {k: verdict[k] for k in ("alpha", "power", "power_by_metric", "statement", "control")},
        "not_above_start": _not_above_start([r for r in runs.values() if r["complete"]], metric),
        "audit": {
            "present": audit is not None,
            "matched": bool(audit.get("matched")) if audit else None,
            "problems": [str(p) for p in audit.get("problems") or []] if audit else [],
            "unchecked": [str(p) for p in audit.get("unchecked") or []] if audit else [],
            "flagged_runs": sorted(name for name, why in flags.items() if why),
        },
        "extra_run_folders": comp.extra_runs,
        "incomplete_runs": [r.name for r in comp.runs if not r.complete],
        "algorithms": rows,
        "runs": list(runs.values()),
    }


def _algo_row(
    algo: str, runs: list[RunFiles], rows: dict[str, dict], ref_runs: list[RunFiles], is_ref: bool, metric: str, ci: str
) -> dict[str, Any]:
    done = [r for r in runs if r.complete]
    done_rows = [rows[r.name] for r in done]
    accuracy, seed_scores = {}, {}
    for m in METRICS:
        seed_scores[m] = {row["seed"]: row["score"][m] for row in done_rows if row["score"][m] is not None}
        values = list(seed_scores[m].values())
        accuracy[m] = (
            {**stats.interval(values, ci, bounds=ACCURACY_RANGE).to_dict(), "values": values} if values else None
        )
    return {
        "algo": algo,
        "runs": len(runs),
        "complete": len(done),
        "incomplete": [{"name": r.name, "status": r.status} for r in runs if not r.complete],
        "flagged": sorted(r.name for r in runs if rows[r.name]["audit_flags"]),
        "accuracy": accuracy,
        "seed_scores": seed_scores,
        "problem_delta": None
        if is_ref
        else {m: paired_delta(done, [r for r in ref_runs if r.complete], m) for m in METRICS},
        "length": {
            m: {k: stats.mean_of_present(row["length"][m][k] for row in done_rows) for k in LENGTH_KEYS}
            for m in METRICS
        },
        "cost": {k: stats.mean_of_present(row["throughput"][k] for row in done_rows) for k in COST_KEYS}
        | {
            "wall_seconds": stats.mean_of_present(row["wall_seconds"] for row in done_rows),
            "train_seconds": stats.mean_of_present(number(row["usage"]["seconds"]) for row in done_rows),
        },
        "behaviours": {m: behaviours.rates(t for r in done for t in completions(r, m)) for m in METRICS},
        "curves": _curves(done, metric, ci),
        "training": training_curves(done),
        "examples": examples(done),
    }


def paired_delta(runs: list[RunFiles], ref_runs: list[RunFiles], metric: str) -> dict[str, Any] | None:
    """Δ = algorithm - reference on ``metric`` in the final evaluation, paired on (seed, problem id): descriptive.

    Its bootstrap interval treats the trained models as given (conditional on them); it is not a test of the
    algorithms, whose replicates are seeds (rlbench.study.report.verdicts), and the leaderboard never ranks on it.

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
        test = stats.paired_bootstrap(
            [[scores[s][0][i] for i in ids] for s in shared], [[scores[s][1][i] for i in ids] for s in shared]
        )
        return {**test.to_dict(), "seed_list": shared, "paired_on": "problems"}
    diffs = [dig(mine[s].evals[-1], metric, "accuracy") for s in shared]
    refs = [dig(ref_by_seed[s].evals[-1], metric, "accuracy") for s in shared]
    pairs = [(a, b) for a, b in zip(diffs, refs) if number(a) is not None and number(b) is not None]
    if not pairs:
        return None
    return {
        "delta": stats.mean([a - b for a, b in pairs]),
        "lo": None,
        "hi": None,
        "p": None,
        "seeds": len(pairs),
        "problems": None,
        "resamples": 0,
        "seed_list": shared,
        "paired_on": "seeds (no eval_records.jsonl)",
    }


def _curves(runs: list[RunFiles], metric: str, ci: str) -> dict[str, Any]:
    """Accuracy at each evaluation point (mean over seeds with intervals, and each seed's own curve) and training
    length per step averaged over seeds; see :func:`rlbench.study.report.curves.eval_curves`."""
    out: dict[str, Any] = {"eval": [], "eval_seeds": {}, "length": []}
    if not runs:
        return out
    accuracy = eval_curves(runs, metric, ci, ACCURACY_RANGE)
    out["eval"], out["eval_seeds"] = accuracy["points"], accuracy["seeds"]
    for k in range(min(len(r.metrics) for r in runs)):
        rows = [r.metrics[k] for r in runs]
        lengths = [v for v in (number(row.get("length_mean")) for row in rows) if v is not None]
        if lengths:
            samples = stats.mean_of_present(number(dig(row, "usage", "samples")) for row in rows)
            out["length"].append({"samples": samples, "mean": stats.mean(lengths)})
    return out


def _summary(tasks: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Algorithm x task: final accuracy interval on the chosen metric (None where an algorithm was not compared)."""
    algos: list[str] = []
    for task in tasks:
        algos.extend(row["algo"] for row in task["algorithms"] if row["algo"] not in algos)
    cells = {
        a: {t["label"]: next((r["accuracy"][metric] for r in t["algorithms"] if r["algo"] == a), None) for t in tasks}
        for a in algos
    }
    return {"metric": metric, "tasks": [t["label"] for t in tasks], "algos": algos, "cells": cells}


def _not_above_start(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Runs whose score is not above their evaluation before training: they did not learn on this metric."""
    return [
        r["name"]
        for r in rows
        if r["score"][metric] is not None
        and r["start"][metric] is not None
        and r["score"][metric] <= r["start"][metric]
    ]


def _row_options(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's algorithm and every option it ran with (defaults included), from the manifest."""
    out = []
    for row in manifest.get("rows") or []:
        resolved = row.get("resolved") if isinstance(row.get("resolved"), dict) else {}
        settings = row.get("settings") if isinstance(row.get("settings"), dict) else {}
        out.append(
            {
                "label": row.get("label"),
                "algo": row.get("algo"),
                "control": bool(row.get("control")),
                "given": row.get("options") or {},
                "options": {k: v for k, v in resolved.items() if k != "name"},
                "settings": settings,
                "lr_scale": row.get("lr_scale"),
            }
        )
    return out


def _eval_protocol(manifest: dict[str, Any]) -> dict[str, Any]:
    ev = manifest.get("eval") if isinstance(manifest.get("eval"), dict) else {}
    sampling = dig(manifest, "config", "sampling") or {}
    return {**ev, **{k: sampling.get(k) for k in ("temperature", "top_p", "max_new_tokens")}}


def _labels(comparisons: Sequence[ComparisonFiles]) -> list[str]:
    """Section names: the task, or task (folder) when two folders hold the same task."""
    tasks = [c.task for c in comparisons]
    return [t if tasks.count(t) == 1 else f"{t} ({c.path.name})" for t, c in zip(tasks, comparisons)]


def _set_aside(run: RunFiles) -> RunFiles:
    """A flagged run, reported as such and kept out of the numbers (its files are left as they are)."""
    return dataclasses.replace(run, status="flagged")


def _command(
    folders: Sequence[Path],
    out: Path | None,
    reference: str | None,
    metric: str,
    ci: str,
    include_flagged: bool = False,
    pool: bool = True,
) -> str:
    """The ``rlbench report`` command that rebuilds this report (whoever called it: the CLI or ``compare``)."""
    parts = ["rlbench", "report", *(str(f) for f in folders)]
    if out is not None and not (len(folders) == 1 and Path(out) == folders[0]):
        parts += ["--out", str(out)]
    if reference is not None:
        parts += ["--reference", reference]
    parts += ["--metric", metric, "--ci", ci] + (["--include-flagged"] if include_flagged else [])
    parts += ["--no-pool"] if not pool and len(folders) > 1 else []
    return " ".join(shlex.quote(p) for p in parts)


def _provenance(comp: ComparisonFiles, key: str, sep: str) -> Any:
    """A manifest's ``key``; for pooled folders, their distinct values joined (None where none has one)."""
    if not comp.sources:
        return comp.manifest.get(key)
    values = [str(s.manifest[key]) for s in comp.sources if s.manifest.get(key) is not None]
    return sep.join(dict.fromkeys(values)) or None


def _pooled_from(comp: ComparisonFiles) -> list[dict[str, Any]]:
    """Each pooled folder: its seeds and provenance."""
    return [
        {
            "dir": str(s.path),
            "seeds": s.manifest["seeds"],
            **{k: s.manifest.get(k) for k in ("command", "created", "code_version", "packages", "machine")},
        }
        for s in comp.sources
    ]
