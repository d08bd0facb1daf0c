"""Reading a comparison folder (written by ``rlbench compare``) for the report, with one-line errors for bad files.

Layout::

    DIR/manifest.json  DIR/audit.json  DIR/runs/<algo>-s<seed>/{summary.json, metrics.jsonl, eval.jsonl, eval_records.jsonl}

A missing or broken ``manifest.json`` and any file that exists but cannot be parsed is a :class:`ReportInputError`
(the CLI prints its one line and exits 2). A run that is missing, still running or interrupted is *not* an error:
it is loaded with its status so the report can list it as incomplete.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlbench.config import ConfigError
from rlbench.results import EVAL_RECORDS, EVALS, METRICS, SUMMARY, read_jsonl

MANIFEST = "manifest.json"
AUDIT = "audit.json"
RUNS = "runs"
MANIFEST_KEYS = ("task", "algos", "seeds")


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
    records: list[dict[str, Any]] = field(default_factory=list)

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

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def final_mean_of(self) -> int:
        """K of the run score (mean of the last K evaluations); 1, the final evaluation, for older manifests."""
        k = (self.manifest.get("eval") or {}).get("final_mean_of")
        return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def run_name(algo: str, seed: int) -> str:
    """The folder name ``rlbench compare`` gives a run."""
    return f"{algo}-s{seed}"


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
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ReportInputError(f"{path / MANIFEST}: 'seeds' must be a non-empty list of integers")
    audit = _read_json(path / AUDIT, required=False)
    folders, controls = _row_folders(path, manifest)
    runs = [load_run(path / RUNS / run_name(folders[a], s), a, s) for a in manifest["algos"] for s in manifest["seeds"]]
    named = {r.name for r in runs}
    runs_dir = path / RUNS
    extra = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in named) if runs_dir.is_dir() else []
    return ComparisonFiles(path, manifest, audit, runs, extra, controls)


def _row_folders(path: Path, manifest: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Row label -> folder slug, and the control rows' labels (a manifest without rows: label = algorithm = slug)."""
    rows = manifest.get("rows")
    if rows is None:
        return {a: a for a in manifest["algos"]}, []
    where = path / MANIFEST
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("label"), str)
                                             and isinstance(r.get("slug"), str) for r in rows):
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
        run.records = _read_rows(path / EVAL_RECORDS, ("id",))
    return run


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
