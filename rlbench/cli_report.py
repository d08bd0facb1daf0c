"""``rlbench report``: the leaderboard of one or more comparison folders (leaderboard.md, index.html, report.json).

Bad input (no manifest.json, a file that does not parse) exits with code 2 and one line naming the file, and the
line for JSONL files. Unfinished runs are not an error: the report lists them as incomplete.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rlbench.report import CI_METHODS, DEFAULT_REFERENCE
from rlbench.report_inputs import ReportInputError
from rlbench.report_runs import METRICS


def fail(message: str) -> None:
    click.echo(f"rlbench report: error: {message}", err=True)
    sys.exit(2)


@click.command("report")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: the comparison folder; required with several).")
@click.option("--reference", default=None,
              help=f"Algorithm the others are compared with (default: {DEFAULT_REFERENCE} where compared, else the first).")
@click.option("--metric", type=click.Choice(METRICS), default="greedy", show_default=True,
              help="Accuracy that ranks, is tested and is plotted.")
@click.option("--ci", type=click.Choice(CI_METHODS), default="t", show_default=True,
              help="Interval over seeds: Student-t, or percentile bootstrap.")
@click.option("--include-flagged", is_flag=True,
              help="Keep runs the audit flags in the means and tests (they are left out by default).")
def report(dirs: tuple[Path, ...], out: Path | None, reference: str | None, metric: str, ci: str,
           include_flagged: bool) -> None:
    """Leaderboard of comparison folders written by `rlbench compare` (one folder per task)."""
    from rlbench.report import write_report

    if out is None:
        if len(dirs) > 1:
            fail("--out is required with several comparison folders")
        out = dirs[0]
    try:
        data = write_report(list(dirs), out, reference=reference, metric=metric, ci=ci, include_flagged=include_flagged)
    except ReportInputError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out}: cannot write ({exc.strerror})")
    for task in data["tasks"]:
        audit = task["audit"]
        verdict = "no audit" if not audit["present"] else "matched" if audit["matched"] else "NOT matched"
        ranked = ", ".join(f"{r['rank'] or ('control' if r['control'] else '-')} {r['algo']} "
                           f"{_pct(r['accuracy'][metric])}" for r in task["algorithms"])
        incomplete = f"; incomplete: {', '.join(task['incomplete_runs'])}" if task["incomplete_runs"] else ""
        click.echo(f"{task['label']} ({metric}, audit {verdict}): {ranked}{incomplete}")
    click.echo(f"report: {out / 'leaderboard.md'}, {out / 'index.html'}, {out / 'report.json'}")


def _pct(cell: dict | None) -> str:
    return "–" if not cell else f"{100 * cell['mean']:.1f}%"
