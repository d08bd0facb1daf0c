"""The ``rlbench`` command line: train, list, warm-start (and the commands other modules add)."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from rlbench.config import ConfigError, resolve
from rlbench.results import RunFileError

EXIT_DIVERGED = 3  # distinct from 2 (bad input): the inputs were valid, the training itself blew up
CONFIG_HELP = "YAML config file (RunConfig keys); --set and the shorthand flags override it."
SET_HELP = "Override any config key, e.g. --set optim.lr=1e-4 --set algo.baseline=rloo (repeatable)."


class OneLineErrors(click.Group):
    """Usage, config and file errors print one line naming the bad flag, key or file, and exit 2."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:
        try:
            return super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(2)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "rlbench"
            click.echo(f"{where}: error: {exc.format_message()}", err=True)
            sys.exit(2)
        except (ConfigError, RunFileError) as exc:
            click.echo(f"rlbench: error: {exc}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("rlbench: interrupted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("rlbench: interrupted; finished results were kept", err=True)
            sys.exit(130)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """rlbench: race RL algorithms for LLM reasoning under matched budgets.

    \b
    Exit codes: 0 done; 2 bad flag, config value or file (one line names it, e.g. a full disk);
    3 the training run diverged (non-finite loss, gradient norm or weights); 130 interrupted.
    """


def run_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP),
            click.option("--algo", help="Algorithm name (see `rlbench list`)."),
            click.option("--task", help="Task name (see `rlbench list`)."),
            click.option("--model", help="'tiny' (the tiny lab), a hub id, or a local model directory."),
            click.option("--seed", type=int),
            click.option("--out", type=click.Path(file_okay=False), help="Run directory."),
            click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP),
        ]
    ):
        func = option(func)
    return func


@main.command()
@run_options
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (a finished run is kept).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config_file: str | None, algo: str | None, task: str | None, model: str | None, seed: int | None,
          out: str | None, overrides: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Train one model with one algorithm on one task until the budget is spent.

    A run whose loss, gradient norm or weights stop being finite ends with status "diverged" in summary.json, keeps
    its last good state, saves no final model and exits with code 3.
    """
    from rlbench.lifeline import follow_parent

    follow_parent()  # a run started by `compare` must not outlive it
    config = resolve(config_file, list(overrides), {"algo": algo, "task": task, "model": model, "seed": seed, "out": out})
    from rlbench.engine.trainer import train as run_training

    summary = run_training(config, progress=not quiet, resume=resume)
    if summary["status"] == "diverged":
        click.echo(f"rlbench: error: run diverged at {summary['stop_reason']}", err=True)
        sys.exit(EXIT_DIVERGED)
    click.echo(json.dumps({k: summary[k] for k in ("status", "stop_reason", "initial", "final", "score", "usage", "wall_seconds")}, indent=2))


@main.command("list")
def list_() -> None:
    """Registered algorithms and tasks, with their options and defaults."""
    from rlbench import registry

    for title, table in (("algorithms", registry.algorithms()), ("tasks", registry.tasks())):
        click.echo(f"{title}:")
        for name, cls in table.items():
            click.echo(f"  {name:<12} {cls.description}")
            opts = ", ".join(f"{k}={v!r}" for k, v in cls.options().items())
            if opts:
                click.echo(f"  {'':<12}   options: {opts}")


@main.command()
@run_options
def warmstart(config_file: str | None, algo: str | None, task: str | None, model: str | None, seed: int | None,
              out: str | None, overrides: tuple[str, ...]) -> None:
    """Build (or find in the cache) the tiny lab's SFT warm-start and print where it is."""
    config = resolve(config_file, list(overrides), {"algo": algo, "task": task, "model": model, "seed": seed, "out": out})
    from rlbench import registry
    from rlbench.tiny.warmstart import ensure_warmstart

    task_obj = registry.get_task(config.task_name).from_options({k: v for k, v in config.task.items() if k != "name"})
    path = ensure_warmstart(config.tiny, task_obj, config.sampling)
    report = json.loads((path / "warmstart.json").read_text())
    report.pop("history", None)
    click.echo(json.dumps({"path": str(path), **report}, indent=2))


@main.command()
@click.option("--task", help="Task name (overrides the config file).")
@click.option("--algos", required=True,
              help="Comma-separated rows: algorithm names, or NAME[key=value,...] for an algorithm with other options, "
                   "e.g. 'em-pg,em-pg[baseline=mean],grpo,ppo'.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated integer seeds.")
@click.option("--budget", "budget_text", help="Matched budget, e.g. samples=3840 (or tokens=, steps=, seconds=; comma-joined).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Comparison directory.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP + " May hold algo_options: {NAME: {...}}.")
@click.option("--model", help="'tiny', a hub id or a local model directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--reference", default=None, help="Row the others are tested against (default: em-pg, else the first).")
@click.option("--control", is_flag=True,
              help="Add an A/A control: a second copy of the reference whose rollouts draw from an independent random "
                   "stream (same prompts, same budget). Its gap to the reference is the measured noise floor.")
@click.option("--jobs", type=int, default=None, help="Runs side by side (default: one per CPU core, at most 2; 1 on GPU).")
@click.option("--no-report", is_flag=True, help="Skip writing the leaderboard at the end.")
@click.option("--quiet", is_flag=True)
def compare(task: str | None, algos: str, seeds: str, budget_text: str | None, out: str, config_file: str | None,
            model: str | None, overrides: tuple[str, ...], reference: str | None, control: bool, jobs: int | None,
            no_report: bool, quiet: bool) -> None:
    """Run algorithms x seeds at one matched budget (resumable: rerun the same command to finish)."""
    import dataclasses
    from pathlib import Path

    from rlbench.compare import Comparison, command_line, is_comparison_folder, parse_budget, run_comparison
    from rlbench.config import load_yaml, merge_overrides
    from rlbench.locks import hold, refuse_foreign, refuse_several_ranks
    from rlbench.report import DEFAULT_REFERENCE
    from rlbench.variants import control_of, parse_rows

    refuse_several_ranks()
    tree = load_yaml(config_file) if config_file else {}
    algo_options = tree.pop("algo_options", {}) or {}
    if not isinstance(algo_options, dict):
        raise ConfigError("algo_options: expected a mapping of algorithm name to hyperparameters")
    tree.pop("algo", None)
    if task:
        tree["task"] = {"name": task}
    if model:
        tree["model"] = model
    if budget_text:
        tree["budget"] = {k: v for k, v in dataclasses.asdict(parse_budget(budget_text)).items() if v is not None}
    tree.setdefault("threads", 1)  # the same for every run, whatever --jobs is: results do not depend on it
    tree = merge_overrides(tree, list(overrides))
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    rows = parse_rows(algos)
    labels = [r.label for r in rows]
    if reference is not None and reference not in labels:
        raise ConfigError(f"--reference {reference}: not one of the rows ({', '.join(labels)})")
    ref = reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in labels else labels[0])
    if control:
        rows.append(control_of(next(r for r in rows if r.label == ref)))
    comp = Comparison(Path(out), tree, rows, seed_list, algo_options, command_line(), ref)
    if jobs is None:
        import os

        import torch

        jobs = 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    comp.validate()  # before the folder is made: a bad command leaves nothing behind
    refuse_foreign(comp.out, "comparison", is_comparison_folder(comp.out))
    with hold(comp.out, "comparison"):  # one writer for the whole comparison, report included
        audit = run_comparison(comp, jobs=jobs, progress=not quiet)
        click.echo(f"audit: {'matched' if audit['matched'] else 'NOT matched: ' + '; '.join(audit['problems'])}")
        if not no_report:
            try:
                from rlbench.report import write_report
            except ModuleNotFoundError:
                return
            write_report([Path(out)], Path(out))
            click.echo(f"report: {Path(out) / 'leaderboard.md'}, {Path(out) / 'index.html'}")
        if audit["failed_runs"]:
            click.echo(f"rlbench: error: {len(audit['failed_runs'])} run(s) did not complete: "
                       + "; ".join(audit["failed_runs"]), err=True)
            sys.exit(1)


def _add_optional_commands() -> None:
    """Commands that live in their own modules."""
    import importlib

    for module, name in (("rlbench.cli_grade", "grade"), ("rlbench.cli_eval", "eval"), ("rlbench.cli_report", "report")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        main.add_command(getattr(mod, name))


_add_optional_commands()

if __name__ == "__main__":
    main()
