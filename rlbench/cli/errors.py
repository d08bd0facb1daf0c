"""How every ``rlbench`` command reports a failure: one line ``rlbench: error: <message>`` on stderr and an exit code.

One line naming the bad flag, key or file, so that a script (or a person) sees what to fix without a traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

BAD_INPUT = 2  # a bad flag, config value or file: nothing ran, or nothing was kept
RUNS_FAILED = 1  # inputs were fine, but some runs of a comparison did not complete
DIVERGED = 3  # distinct from 2: the inputs were valid, the training itself blew up
INTERRUPTED = 130


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    click.echo(f"rlbench: error: {message}", err=True)
    sys.exit(code)
