"""``rlbench status DIR``: a comparison's runs (running, queued, done, failed) and their progress, from its files."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  rlbench status runs/tiny-arith
  watch -n 10 rlbench status runs/tiny-arith"""
)
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def status(folder: str) -> None:
    """Show a comparison's progress once: every run's state, step, last reward, last evaluation and ETA.

    It reads only the comparison's files (manifest, placements, run folders, summaries, locks), so it works while
    the comparison runs in another terminal, or on another machine writing a shared filesystem.
    """
    from pathlib import Path

    from rlbench.core.config import ConfigError
    from rlbench.core.results import MANIFEST
    from rlbench.study.progress import status_text

    if not (Path(folder) / MANIFEST).exists():
        raise ConfigError(
            f"{folder}: not a comparison folder (no {MANIFEST}); rlbench status reads what rlbench compare writes"
        )
    for line in status_text(Path(folder)):
        click.echo(line)
