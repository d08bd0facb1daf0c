"""``rlbench report``: the leaderboard of one or more comparison folders (leaderboard.md, index.html, report.json).

Bad input (no manifest.json, a file that does not parse) exits with code 2 and one line naming the file, and the
line for JSONL files. Unfinished runs are not an error: the report lists them as incomplete.

Folders that hold seeds of one comparison (same manifest but for seeds and provenance) are pooled into one
leaderboard, as if they had been run as one; runs whose fingerprints differ are refused, naming the field.
"""

from __future__ import annotations

from pathlib import Path

import click

from rlbench.cli.errors import fail
from rlbench.core.results import INDEX_HTML, LEADERBOARD, REPORT_JSON
from rlbench.study.report.inputs import CI_METHODS, DEFAULT_REFERENCE, ReportInputError
from rlbench.study.report.runs import METRICS


@click.command(
    "report",
    epilog="""\b
Examples:
  rlbench report runs/tiny-arith
  rlbench report runs/tiny-arith --metric sampled --ci bootstrap --out /tmp/sampled
  rlbench report runs/seeds-1-5 runs/seeds-6-10 --out runs/pooled   # one comparison split over folders""",
)
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: the comparison folder; required with several, pooled or not).",
)
@click.option(
    "--reference",
    default=None,
    help=f"Algorithm the others are compared with (default: {DEFAULT_REFERENCE} where compared, else the first).",
)
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default=None,
    help="Accuracy that ranks, is tested and is plotted (default: the comparison's eval.rank_by, which is "
    "greedy unless its config says otherwise).",
)
@click.option(
    "--ci",
    type=click.Choice(CI_METHODS),
    default="t",
    show_default=True,
    help="Interval over seeds: Student-t, or percentile bootstrap.",
)
@click.option(
    "--include-flagged",
    is_flag=True,
    help="Keep runs the audit flags in the means and tests (they are left out by default).",
)
@click.option(
    "--no-pool",
    is_flag=True,
    help="Report every folder as a comparison of its own, even folders that hold seeds of one comparison.",
)
def report(
    dirs: tuple[Path, ...],
    out: Path | None,
    reference: str | None,
    metric: str | None,
    ci: str,
    include_flagged: bool,
    no_pool: bool,
) -> None:
    """Leaderboard of comparison folders written by `rlbench compare` (one folder per task; folders holding seeds
    of one comparison are pooled into one)."""
    from rlbench.study.report.build import write_report

    if out is None:
        if len(dirs) > 1:
            fail("--out is required with several comparison folders")
        out = dirs[0]
    notes: list[str] = []
    try:
        data = write_report(
            list(dirs),
            out,
            reference=reference,
            metric=metric,
            ci=ci,
            include_flagged=include_flagged,
            pool=not no_pool,
            notes=notes,
        )
    except ReportInputError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out}: cannot write ({exc.strerror})")
    for note in notes:
        click.echo(f"note: {note}")
    metric = data["metric"]  # the one the report chose when --metric was left out
    for task in data["tasks"]:
        if task.get("pooled_from"):
            click.echo(
                f"{task['label']}: pooled from "
                + " + ".join(f"{p['dir']} (seeds {', '.join(map(str, p['seeds']))})" for p in task["pooled_from"])
            )
        audit = task["audit"]
        verdict = "no audit" if not audit["present"] else "matched" if audit["matched"] else "NOT matched"
        if audit.get("unchecked"):
            verdict += f", {len(audit['unchecked'])} check(s) not made"
        ranked = ", ".join(
            f"{r['rank'] or ('control' if r['control'] else '-')} {r['algo']} {_pct(r['accuracy'][metric])}"
            for r in task["algorithms"]
        )
        incomplete = f"; incomplete: {', '.join(task['incomplete_runs'])}" if task["incomplete_runs"] else ""
        click.echo(f"{task['label']} ({metric}, audit {verdict}): {ranked}{incomplete}")
    click.echo(f"report: {out / LEADERBOARD}, {out / INDEX_HTML}, {out / REPORT_JSON}")


def _pct(cell: dict | None) -> str:
    return "–" if not cell else f"{100 * cell['mean']:.1f}%"
