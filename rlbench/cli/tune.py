"""``rlbench tune``: the same grid, seeds and budget for every algorithm, scored on the validation split."""

from __future__ import annotations

from typing import Any

import click

from rlbench.cli.compare import comparison_options, execute, fail_on_failed_runs, parse_seeds, shared_tree
from rlbench.core.config import ConfigError
from rlbench.study.report.runs import METRICS


@click.command(
    epilog="""\b
Examples:
  rlbench tune --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce \\
      --grid optim.lr=5e-5,1e-4,2e-4 --seeds 101,102 --out runs/tiny-arith-tuning
  rlbench compare ... --tuned runs/tiny-arith-tuning/tuned.yaml
  rlbench tune --task arith --algos grpo,ppo --grid optim.lr=1e-4,2e-4 --grid optim.warmup_steps=0,10 \\
      --seeds 101,102 --budget samples=3200 --out runs/tune-2d"""
)
@click.option("--algos", required=True, help="Comma-separated algorithm names; each gets every grid point.")
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="Run setting and the values to try, e.g. optim.lr=5e-5,1e-4,2e-4 (repeatable: the trials are the "
    "product of every --grid).",
)
@comparison_options
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default=None,
    help="Accuracy the trials are scored on (default: the config's eval.rank_by, the metric its comparison ranks by).",
)
def tune(algos: str, grid_items: tuple[str, ...], metric: str | None, **flags: Any) -> None:
    """Tune each algorithm with equal effort on the validation split; writes tuned.yaml for `compare --tuned`.

    Every algorithm x grid point x seed is one run of an ordinary comparison in --out (resumable: rerun the same
    command), evaluated on eval.split=validation. A trial scores the mean over seeds of its runs' scores; each
    algorithm keeps its best trial. The test split is never read.
    """
    from pathlib import Path

    from rlbench.core.locks import refuse_several_ranks
    from rlbench.study.compare import Comparison, command_line
    from rlbench.study.tune import (
        SPLIT,
        TUNING_TABLE,
        parse_grid,
        score_trials,
        trial_rows,
        tuned_document,
        write_tuned,
    )

    refuse_several_ranks()
    grid = parse_grid(grid_items)
    tree, algo_options = shared_tree(
        flags["config_file"], flags["task"], flags["model"], flags["budget_text"], flags["overrides"]
    )
    asked = [o.split("=", 1)[1].strip() for o in flags["overrides"] if o.split("=", 1)[0].strip() == "eval.split"]
    if any(split != SPLIT for split in asked):
        raise ConfigError(f"--set eval.split={asked[-1]}: tuning scores on the {SPLIT} split, never on another")
    tree.setdefault("eval", {})["split"] = SPLIT  # whatever the config file evaluates the comparison on
    rows = trial_rows(algos, grid)
    comp = Comparison(
        Path(flags["out"]), tree, rows, parse_seeds(flags["seeds"]), algo_options, command_line(), rows[0].label
    )
    audit = execute(comp, flags, report=False)
    fail_on_failed_runs(audit)
    if not audit["matched"]:
        raise ConfigError(f"{comp.out}: the trials' runs are not matched ({audit['problems'][0]}); nothing was chosen")
    from rlbench.study.report.inputs import load_comparison

    files = load_comparison(comp.out)
    if metric is None:
        from rlbench.core.configure import build_run_config

        metric = build_run_config(tree).eval.rank_by
    document = tuned_document(score_trials(files, rows, metric), grid, files.manifest, metric)
    path = write_tuned(comp.out, document)
    chosen = "; ".join(f"{a}: " + ", ".join(f"{k}={v}" for k, v in s.items()) for a, s in document["tuned"].items())
    click.echo(f"tuned: {chosen}")
    click.echo(f"wrote {path} and {comp.out / TUNING_TABLE}")
