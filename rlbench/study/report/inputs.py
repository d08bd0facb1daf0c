"""Reading a comparison folder (written by ``rlbench compare``) for the report, with one-line errors for bad files.

Layout::

    DIR/manifest.json  DIR/audit.json  DIR/runs/<algo>-s<seed>/{summary.json, metrics.jsonl, eval.jsonl, samples.jsonl,
                                                               eval_records/point-NNNN.jsonl.gz}

Each evaluation's per-problem records are in ``eval_records/`` (one gzip file per evaluation point); runs written
before that kept only the final evaluation's, in ``eval_records.jsonl``, and are still read.

A missing or broken ``manifest.json`` and any file that exists but cannot be parsed is a :class:`ReportInputError`
(the CLI prints its one line and exits 2). A run that is missing, still running or interrupted is *not* an error:
it is loaded with its status so the report can list it as incomplete.

Folders that hold seeds of one comparison (run apart, on several machines) are pooled into one by
:func:`pool_comparisons`: same design (:data:`DESIGN_KEYS`), disjoint seeds, and every run's fingerprint the same
as the first folder's for its row, algorithm and seed aside (else a :class:`ReportInputError` naming the field).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlbench.core.config import EXECUTION_KEYS, ConfigError
from rlbench.core.configure import first_difference, value_at
from rlbench.core.results import (
    AUDIT,
    EVAL_RECORDS,
    EVALS,
    FINGERPRINT,
    MANIFEST,
    METRICS,
    RUNS,
    SAMPLES,
    SUMMARY,
    read_jsonl,
    read_records,
    record_points,
    run_name,
)

MANIFEST_KEYS = ("task", "algos", "seeds")
# What makes two folders one comparison: the manifest keys `rlbench compare` refuses to change on a rerun, the rows'
# labels and the evaluation protocol (the trackers in config.report_to aside). The rest of a manifest is its seeds
# and provenance (command, created, code_version, packages, machine), which may differ between the pooled folders.
# the row the others are compared with when a comparison names none, and the interval methods over seeds
DEFAULT_REFERENCE = "em-pg"
CI_METHODS = ("t", "bootstrap")
DESIGN_KEYS = ("task", "model", "algos", "rows", "reference", "budget", "config", "algo_options", "eval", "tuning")


class ReportInputError(ConfigError):
    """A bad input file; the message is one line naming the file (and line, for JSONL).

    A ConfigError so that any rlbench command that writes a report (``compare`` does, at its end) prints the one
    line and exits 2 through the CLI's existing handler.
    """


@dataclass
class RunFiles:
    """One training run of a comparison. ``status``: completed, interrupted, running (logs, no summary) or missing."""

    name: str
    algo: str
    seed: int
    path: Path
    status: str
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # the final evaluation's, one per problem
    samples: list[dict[str, Any]] = field(default_factory=list)  # logged training rollouts (samples.jsonl)
    # evaluation point -> its records file; {} for a run folder that kept only the final ones (eval_records.jsonl)
    record_files: dict[int, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Finished its budget and has its final evaluation."""
        return self.status == "completed" and bool(self.evals)


@dataclass
class ComparisonFiles:
    path: Path
    manifest: dict[str, Any]
    audit: dict[str, Any] | None
    runs: list[RunFiles]
    extra_runs: list[str]  # folders under runs/ that the manifest does not name
    controls: list[str] = field(default_factory=list)  # labels of A/A control rows (never ranked)
    sources: list[ComparisonFiles] = field(default_factory=list)  # the folders pooled into this one; [] = one folder

    @property
    def folders(self) -> list[Path]:
        """The comparison folders this comparison's runs come from."""
        return [s.path for s in self.sources] or [self.path]

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def final_mean_of(self) -> int:
        """K of the run score (mean of the last K evaluations); 1, the final evaluation, for older manifests."""
        k = (self.manifest.get("eval") or {}).get("final_mean_of")
        return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def load_comparison(path: Path) -> ComparisonFiles:
    """Read every file of a comparison folder; raise :class:`ReportInputError` for the first broken one."""
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a directory")
    manifest = _read_json(path / MANIFEST, required=True)
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise ReportInputError(f"{path / MANIFEST}: missing key '{key}'")
    algos, seeds = manifest["algos"], manifest["seeds"]
    if not isinstance(algos, list) or not algos or not all(isinstance(a, str) for a in algos):
        raise ReportInputError(f"{path / MANIFEST}: 'algos' must be a non-empty list of algorithm names")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ReportInputError(f"{path / MANIFEST}: 'seeds' must be a non-empty list of integers")
    audit = _read_json(path / AUDIT, required=False)
    folders, controls = _row_folders(path, manifest)
    runs = [load_run(path / RUNS / run_name(folders[a], s), a, s) for a in manifest["algos"] for s in manifest["seeds"]]
    named = {r.name for r in runs}
    runs_dir = path / RUNS
    extra = (
        sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in named) if runs_dir.is_dir() else []
    )
    return ComparisonFiles(path, manifest, audit, runs, extra, controls)


def design(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's :data:`DESIGN_KEYS`: equal for two folders of one comparison."""
    out = {key: manifest.get(key) for key in DESIGN_KEYS}
    if isinstance(out["config"], dict):
        out["config"] = {k: v for k, v in out["config"].items() if k not in EXECUTION_KEYS}
    return out


def pool_comparisons(comps: Sequence[ComparisonFiles]) -> tuple[list[ComparisonFiles], list[str]]:
    """Pool the folders that hold seeds of one comparison; returns the comparisons (in the order first named) and
    notes naming folders of one task that were kept apart, with the manifest field that differs.

    Folders pool when their manifests agree on :data:`DESIGN_KEYS`. Pooled folders must hold disjoint seeds, and each
    run's fingerprint (algorithm and seed aside) must equal the first folder's for its row: a
    :class:`ReportInputError` names the seed, or the run's fingerprint.json and the field, otherwise.
    """
    named: dict[Path, Path] = {}
    for comp in comps:
        where = comp.path.resolve()
        if where in named:
            raise ReportInputError(f"{comp.path}: named twice (as {named[where]})")
        named[where] = comp.path
    groups: list[list[ComparisonFiles]] = []
    for comp in comps:
        group = next((g for g in groups if design(g[0].manifest) == design(comp.manifest)), None)
        if group is None:
            groups.append([comp])
        else:
            group.append(comp)
    notes = []
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            a, b = group[0], other[0]
            if a.task == b.task:
                field_ = first_difference(design(a.manifest), design(b.manifest))
                notes.append(
                    f"{b.path} is not pooled with {a.path}: their manifests differ in {field_}, so they are "
                    "reported as two comparisons"
                )
    return [g[0] if len(g) == 1 else merge_comparisons(g) for g in groups], notes


def merge_comparisons(group: Sequence[ComparisonFiles]) -> ComparisonFiles:
    """One comparison from folders of the same design: the union of their seeds (ascending) and of their runs."""
    first = group[0]
    owner: dict[int, ComparisonFiles] = {}
    for comp in group:
        for seed in comp.manifest["seeds"]:
            if seed in owner:
                raise ReportInputError(
                    f"{comp.path / MANIFEST}: seed {seed} is also in {owner[seed].path}; folders "
                    "of one comparison pool only with disjoint seeds (--no-pool reports them side "
                    "by side)"
                )
            owner[seed] = comp
    _check_fingerprints(group)
    seeds = sorted(owner)
    runs = {(run.algo, run.seed): run for comp in group for run in comp.runs}
    return ComparisonFiles(
        path=first.path,
        manifest={**first.manifest, "seeds": seeds},
        audit=None,
        runs=[runs[(algo, seed)] for algo in first.manifest["algos"] for seed in seeds],
        extra_runs=[f"{comp.path.name}/{name}" for comp in group for name in comp.extra_runs],
        controls=list(first.controls),
        sources=list(group),
    )


def _check_fingerprints(group: Sequence[ComparisonFiles]) -> None:
    """Every run's fingerprint, algorithm and seed aside, is the one most of the first folder's runs of its row have.

    Runs without a readable fingerprint are skipped here (the audit lists them); disagreement inside one folder is
    the audit's to flag, as for a single folder. Across folders it is refused: those runs were not run alike.
    """
    reference: dict[str, tuple[ComparisonFiles, dict[str, Any]]] = {}
    for comp in group:
        for algo in comp.manifest["algos"]:
            prints = [
                (run, fp) for run in comp.runs if run.algo == algo for fp in [_fingerprint(run)] if fp is not None
            ]
            if not prints:
                continue
            if algo not in reference:
                counts = Counter(json.dumps(fp, sort_keys=True) for _, fp in prints)
                reference[algo] = (comp, json.loads(counts.most_common(1)[0][0]))
                continue
            where, expected = reference[algo]
            for run, fp in prints:
                if fp != expected:
                    field_ = first_difference(expected, fp)
                    keys = field_.split(".")
                    raise ReportInputError(
                        f"{run.path / FINGERPRINT}: {field_} differs from {where.path}'s ({value_at(expected, keys)!r} "
                        f"there, {value_at(fp, keys)!r} here); the runs of one comparison must agree on everything "
                        "but algorithm and seed, so these folders cannot be pooled"
                    )


def _fingerprint(run: RunFiles) -> dict[str, Any] | None:
    """A run's fingerprint.json without its algorithm and seed; None where it is missing or unreadable."""
    try:
        data = json.loads((run.path / FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return {k: v for k, v in data.items() if k not in ("algo", "seed")} if isinstance(data, dict) else None


def _row_folders(path: Path, manifest: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Row label -> folder slug, and the control rows' labels (a manifest without rows: label = algorithm = slug)."""
    rows = manifest.get("rows")
    if rows is None:
        return {a: a for a in manifest["algos"]}, []
    where = path / MANIFEST
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("label"), str) and isinstance(r.get("slug"), str) for r in rows
    ):
        raise ReportInputError(f"{where}: 'rows' must be a list of objects with a 'label' and a 'slug'")
    folders = {r["label"]: r["slug"] for r in rows}
    if sorted(folders) != sorted(manifest["algos"]) or len(folders) != len(rows):
        raise ReportInputError(f"{where}: 'rows' labels do not match 'algos'")
    return folders, [r["label"] for r in rows if r.get("control")]


def load_run(path: Path, algo: str, seed: int) -> RunFiles:
    run = RunFiles(path.name, algo, seed, path, "missing")
    if not path.is_dir():
        return run
    run.summary = _read_json(path / SUMMARY, required=False)
    run.metrics = _read_rows(path / METRICS, ("usage",))
    run.evals = _read_rows(path / EVALS, ("usage",))
    if run.summary is not None:
        run.status = str(run.summary.get("status", "unknown"))
    elif run.metrics or run.evals:
        run.status = "running"  # or killed: logs but no summary; a rerun of the comparison resumes it
    if run.status == "completed":
        run.record_files = record_points(path)
        run.records = _final_records(run) if run.record_files else _read_rows(path / EVAL_RECORDS, ("id",))
        run.samples = _read_rows(path / SAMPLES, ())  # optional: older runs lack it, or its prompt and reward
    return run


def _final_records(run: RunFiles) -> list[dict[str, Any]]:
    """The records of the run's last evaluation ([] when that evaluation kept none)."""
    point = run.evals[-1].get("point") if run.evals else None
    path = run.record_files.get(point) if isinstance(point, int) else None
    if path is None:
        return []
    try:
        rows = read_records(path)
    except ValueError as exc:  # names the file and line
        raise ReportInputError(str(exc)) from None
    for number, row in enumerate(rows, 1):
        if "id" not in row:
            raise ReportInputError(f"{path}:{number}: field 'id' missing")
    return rows


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.exists():
        if required:
            raise ReportInputError(f"{path}: missing (is {path.parent} a comparison folder?)")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """JSONL rows (a torn last line is dropped, as the writers may have been killed mid-line)."""
    try:
        rows = read_jsonl(path)
    except ValueError as exc:  # read_jsonl names the file and line
        raise ReportInputError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read ({exc})") from None
    if not rows:
        return rows
    # read_jsonl skips blank lines; map rows back to file line numbers for the error message
    numbers = [i for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if line.strip()]
    for row, number in zip(rows, numbers):
        if not isinstance(row, dict):
            raise ReportInputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise ReportInputError(f"{path}:{number}: field '{key}' missing")
    return rows
