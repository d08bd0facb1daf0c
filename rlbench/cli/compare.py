"""``rlbench compare``: algorithms x seeds at one matched budget, audited, with the leaderboard at the end."""

from __future__ import annotations

from typing import Any

import click

from rlbench.cli.errors import RUNS_FAILED, fail
from rlbench.cli.train import CONFIG_HELP, SET_HELP
from rlbench.core.config import ConfigError
from rlbench.core.results import INDEX_HTML, LEADERBOARD


def comparison_options(func: Any) -> Any:
    """The flags every command that runs a comparison (``compare``, ``tune``) takes: what is shared and where it runs."""
    for option in reversed(
        [
            click.option("--task", help="Task name (overrides the config file)."),
            click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated integer seeds."),
            click.option(
                "--budget",
                "budget_text",
                help="Matched budget, e.g. samples=3840 (or tokens=, steps=, seconds=; comma-joined).",
            ),
            click.option("--out", type=click.Path(file_okay=False), required=True, help="Comparison directory."),
            click.option(
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help=CONFIG_HELP + " May hold algo_options: {NAME: {...}}.",
            ),
            click.option("--model", help="'tiny', a hub id or a local model directory."),
            click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP),
            click.option(
                "--jobs",
                type=int,
                default=None,
                help="Runs side by side at most (default: one per GPU slice with GPUs; one per CPU core, at most "
                "2, without).",
            ),
            click.option(
                "--devices",
                default=None,
                metavar="auto|0,1,...",
                help="GPUs to place runs on: 'auto' (every GPU torch sees) or indices. Each run gets its own slice "
                "of --gpus-per-run of them as CUDA_VISIBLE_DEVICES; runs queue until a slice is free. "
                "Default: auto when there are GPUs and no --jobs.",
            ),
            click.option(
                "--gpus-per-run",
                type=int,
                default=None,
                metavar="K",
                help="GPUs per run (default 1); K > 1 trains each run data-parallel in K processes "
                "(rlbench train --processes K, which needs rollout.seed_rows=true).",
            ),
            click.option(
                "--executor",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="local: child processes on this machine; ray: one Ray task per run, on any node of a Ray "
                "cluster (--out on a filesystem every node sees at the same path; pip install "
                "'rlbench[ray]').",
            ),
            click.option(
                "--ray-address",
                default=None,
                help="Ray cluster to join ('auto': the one `ray start` made here; default: start a local Ray "
                "instance).",
            ),
            click.option(
                "--max-retries",
                type=int,
                default=3,
                show_default=True,
                help="Ray: times a run is restarted after its worker died or it was killed (it resumes its last "
                "state).",
            ),
            click.option("--quiet", is_flag=True),
        ]
    ):
        func = option(func)
    return func


def shared_tree(
    config_file: str | None, task: str | None, model: str | None, budget_text: str | None, overrides: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run config every row shares, and the config file's per-algorithm options (``algo_options``)."""
    import dataclasses

    from rlbench.core.configure import load_yaml, merge_overrides
    from rlbench.study.compare import parse_budget

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
    if "name" in (tree.get("algo") or {}):
        raise ConfigError(
            "--set algo.name: the rows name the algorithms (--algos); --set algo.KEY=VALUE sets an "
            "option of every row's algorithm"
        )
    return tree, algo_options


def parse_seeds(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected comma-separated integers") from None


def execute(comp: Any, flags: dict[str, Any], report: bool) -> dict[str, Any]:
    """Validate, lock the folder, run every row x seed (resuming finished work), audit, and write the leaderboard."""
    from pathlib import Path

    from rlbench.core.locks import hold, refuse_foreign
    from rlbench.study.compare import check_placement, is_comparison_folder, run_comparison
    from rlbench.study.executors import placement_from_flags

    placement = placement_from_flags(
        flags["executor"],
        flags["jobs"],
        flags["devices"],
        flags["gpus_per_run"],
        flags["ray_address"],
        flags["max_retries"],
    )
    comp.validate()  # before the folder is made: a bad command leaves nothing behind
    check_placement([comp.run_config(r, s) for s in comp.seeds for r in comp.rows], placement)
    refuse_foreign(comp.out, "comparison", is_comparison_folder(comp.out))
    with hold(comp.out, "comparison"):  # one writer for the whole comparison, report included
        audit = run_comparison(comp, progress=not flags["quiet"], placement=placement)
        click.echo(f"audit: {'matched' if audit['matched'] else 'NOT matched: ' + '; '.join(audit['problems'])}")
        if report:
            from rlbench.study.report.build import write_report

            write_report([comp.out], comp.out)
            click.echo(f"report: {Path(comp.out) / LEADERBOARD}, {Path(comp.out) / INDEX_HTML}")
    return audit


def fail_on_failed_runs(audit: dict[str, Any]) -> None:
    if audit["failed_runs"]:
        fail(f"{len(audit['failed_runs'])} run(s) did not complete: " + "; ".join(audit["failed_runs"]), RUNS_FAILED)


@click.command(
    epilog="""\b
Examples:
  rlbench compare --config configs/tiny-arith.yaml --task arith --algos em-pg,grpo,ppo,reinforce \\
      --control --seeds 1,2,3,4,5 --tuned results/tiny-arith-tuning/tuned.yaml --out runs/tiny-arith
  rlbench compare --task arith --algos 'em-pg,em-pg[baseline=mean],reinforce' --seeds 1,2,3 \\
      --budget samples=3200 --out runs/variants
  rlbench compare --config configs/gsm8k-qwen2.5-1.5b.yaml --algos em-pg,grpo --seeds 1,2,3 \\
      --devices auto --out runs/gsm8k"""
)
@click.option(
    "--algos",
    required=True,
    help="Comma-separated rows: algorithm names, or NAME[key=value,...] for an algorithm with other options, "
    "e.g. 'em-pg,em-pg[baseline=mean],grpo,ppo'; a dotted key is a run setting of that row "
    "('grpo[optim.lr=2e-4]').",
)
@comparison_options
@click.option("--reference", default=None, help="Row the others are tested against (default: em-pg, else the first).")
@click.option(
    "--control",
    is_flag=True,
    help="Add an A/A control: a second copy of the reference whose rollouts draw from an independent random "
    "stream (same prompts, same budget). Its gap to the reference is the measured noise floor.",
)
@click.option(
    "--positive-control",
    "positive",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Add a positive control: a copy of the reference at FRACTION of its learning rate (e.g. 0.25), a "
    "handicap validation runs show costs accuracy. It must be found: it shows the comparison's power.",
)
@click.option(
    "--tuned",
    "tuned_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A tuned.yaml from `rlbench tune`: each algorithm runs with the settings chosen for it on the "
    "validation split (a row's own options win); the leaderboard states the tuning protocol.",
)
@click.option("--no-report", is_flag=True, help="Skip writing the leaderboard at the end.")
def compare(
    algos: str,
    reference: str | None,
    control: bool,
    positive: float | None,
    tuned_file: str | None,
    no_report: bool,
    **flags: Any,
) -> None:
    """Run algorithms x seeds at one matched budget (resumable: rerun the same command to finish)."""
    from pathlib import Path

    from rlbench.core.locks import refuse_several_ranks
    from rlbench.study.compare import Comparison, command_line
    from rlbench.study.report.inputs import DEFAULT_REFERENCE
    from rlbench.study.variants import control_of, parse_rows, positive_control_of

    refuse_several_ranks()
    tree, algo_options = shared_tree(
        flags["config_file"], flags["task"], flags["model"], flags["budget_text"], flags["overrides"]
    )
    seed_list = parse_seeds(flags["seeds"])
    rows = parse_rows(algos)
    labels = [r.label for r in rows]
    if reference is not None and reference not in labels:
        raise ConfigError(f"--reference {reference}: not one of the rows ({', '.join(labels)})")
    ref = reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in labels else labels[0])
    if control:
        rows.append(control_of(next(r for r in rows if r.label == ref)))
    if positive is not None:
        rows.append(positive_control_of(next(r for r in rows if r.label == ref), positive))
    tuned, tuning = {}, None
    if tuned_file:
        from rlbench.core.configure import build_run_config
        from rlbench.study.tune import load_tuned

        task = build_run_config(tree).task_name
        tuned, tuning = load_tuned(Path(tuned_file), task, list(dict.fromkeys(r.algo for r in rows)))
    comp = Comparison(Path(flags["out"]), tree, rows, seed_list, algo_options, command_line(), ref, tuned, tuning)
    audit = execute(comp, flags, report=not no_report)
    fail_on_failed_runs(audit)
