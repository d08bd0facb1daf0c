"""``rlbench reproduce``: does one comparison folder reproduce another (the committed reference result, say)?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rlbench.cli.errors import fail
from rlbench.study.report.inputs import ReportInputError
from rlbench.study.report.runs import METRICS

DIFFERS = 1  # like diff(1): 0 the same within noise, 1 different, 2 bad input


@click.command(
    "reproduce",
    epilog="""\b
Examples:
  rlbench reproduce results/tiny-arith runs/tiny-arith
  rlbench reproduce results/tiny-arith runs/tiny-arith --json runs/tiny-arith/reproduction.json""",
)
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    "metrics",
    type=click.Choice(METRICS),
    multiple=True,
    help="Metric to check (repeatable; default: every accuracy the leaderboard shows).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the whole check as JSON to this file.",
)
def reproduce(reference: Path, candidate: Path, metrics: tuple[str, ...], json_out: Path | None) -> None:
    """Test, row by row and metric by metric, whether CANDIDATE's per-seed scores differ from REFERENCE's by more
    than seed noise (Welch t, Holm across all tests). Prints the table, the smallest shift it could detect and
    `reproduced` or the rows that differ; exits 0 when reproduced, 1 when not, 2 on bad input."""
    from rlbench.core.results import write_json
    from rlbench.study.report.inputs import load_comparison
    from rlbench.study.report.reproduce import render
    from rlbench.study.report.reproduce import reproduce as check

    try:
        result = check(load_comparison(reference), load_comparison(candidate), metrics or METRICS)
    except ReportInputError as exc:
        fail(str(exc))
    click.echo(render(result))
    if json_out is not None:
        write_json(json_out, result)
    sys.exit(0 if result["reproduced"] else DIFFERS)
