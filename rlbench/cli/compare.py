"""``rlbench compare``: algorithms x seeds at one matched budget, audited, with the leaderboard at the end."""
from __future__ import annotations

import click

from rlbench.cli.errors import RUNS_FAILED, fail
from rlbench.cli.train import CONFIG_HELP, SET_HELP
from rlbench.config import ConfigError
from rlbench.results import INDEX_HTML, LEADERBOARD


@click.command()
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
@click.option("--jobs", type=int, default=None,
              help="Runs side by side at most (default: one per GPU slice with GPUs; one per CPU core, at most 2, "
                   "without).")
@click.option("--devices", default=None, metavar="auto|0,1,...",
              help="GPUs to place runs on: 'auto' (every GPU torch sees) or indices. Each run gets its own slice of "
                   "--gpus-per-run of them as CUDA_VISIBLE_DEVICES; runs queue until a slice is free. Default: auto "
                   "when there are GPUs and no --jobs.")
@click.option("--gpus-per-run", type=int, default=None, metavar="K",
              help="GPUs per run (default 1); K > 1 trains each run data-parallel in K processes "
                   "(rlbench train --processes K, which needs rollout.seed_rows=true).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: child processes on this machine; ray: one Ray task per run, on any node of a Ray cluster "
                   "(--out on a filesystem every node sees at the same path; pip install 'rlbench[ray]').")
@click.option("--ray-address", default=None,
              help="Ray cluster to join ('auto': the one `ray start` made here; default: start a local Ray instance).")
@click.option("--max-retries", type=int, default=3, show_default=True,
              help="Ray: times a run is restarted after its worker died or it was killed (it resumes its last state).")
@click.option("--no-report", is_flag=True, help="Skip writing the leaderboard at the end.")
@click.option("--quiet", is_flag=True)
def compare(task: str | None, algos: str, seeds: str, budget_text: str | None, out: str, config_file: str | None,
            model: str | None, overrides: tuple[str, ...], reference: str | None, control: bool, jobs: int | None,
            devices: str | None, gpus_per_run: int | None, executor: str, ray_address: str | None, max_retries: int,
            no_report: bool, quiet: bool) -> None:
    """Run algorithms x seeds at one matched budget (resumable: rerun the same command to finish)."""
    import dataclasses
    from pathlib import Path

    from rlbench.compare import (
        Comparison, check_placement, command_line, is_comparison_folder, parse_budget, run_comparison,
    )
    from rlbench.config import load_yaml, merge_overrides
    from rlbench.executors import placement_from_flags
    from rlbench.locks import hold, refuse_foreign, refuse_several_ranks
    from rlbench.report.build import DEFAULT_REFERENCE
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
    placement = placement_from_flags(executor, jobs, devices, gpus_per_run, ray_address, max_retries)
    comp.validate()  # before the folder is made: a bad command leaves nothing behind
    check_placement([comp.run_config(r, s) for s in comp.seeds for r in comp.rows], placement)
    refuse_foreign(comp.out, "comparison", is_comparison_folder(comp.out))
    with hold(comp.out, "comparison"):  # one writer for the whole comparison, report included
        audit = run_comparison(comp, progress=not quiet, placement=placement)
        click.echo(f"audit: {'matched' if audit['matched'] else 'NOT matched: ' + '; '.join(audit['problems'])}")
        if not no_report:
            from rlbench.report.build import write_report

            write_report([Path(out)], Path(out))
            click.echo(f"report: {Path(out) / LEADERBOARD}, {Path(out) / INDEX_HTML}")
        if audit["failed_runs"]:
            fail(f"{len(audit['failed_runs'])} run(s) did not complete: " + "; ".join(audit["failed_runs"]),
                 RUNS_FAILED)
