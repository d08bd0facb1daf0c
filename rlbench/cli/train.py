"""``rlbench train``, ``warmstart`` and ``list``: one run, the tiny lab's warm-start, and what can be run."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from rlbench.cli.errors import DIVERGED, fail
from rlbench.core.configure import build_task, resolve

CONFIG_HELP = "YAML config file (RunConfig keys); --set and the shorthand flags override it."
SET_HELP = "Override any config key, e.g. --set optim.lr=1e-4 --set algo.baseline=rloo (repeatable)."
REPORT_TO_HELP = (
    "Also log to experiment trackers: comma-separated tensorboard, wandb, trackio ('none' for none); "
    "the config key report_to."
)


def report_to_overrides(report_to: str | None) -> list[str]:
    """``--report-to a,b`` as the ``--set`` override it stands for (none when the flag is not given)."""
    if report_to is None:
        return []
    names = "" if report_to.strip().lower() == "none" else report_to.replace(" ", "")
    return [f"report_to=[{names}]"]


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


@click.command(
    epilog="""\b
Examples:
  rlbench train --algo em-pg --task arith --out runs/em-pg-s1
  rlbench train --config tiny-arith --algo grpo --seed 2 --set optim.lr=2e-4 --out runs/grpo-s2
  rlbench train --resume --out runs/grpo-s2
  rlbench train --config configs/gsm8k-qwen2.5-1.5b.yaml --set lora.rank=16 --out runs/gsm8k-lora
  rlbench train --processes 2 --set rollout.seed_rows=true --algo grpo --task arith --out runs/dp"""
)
@run_options
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (a finished run is kept)."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train data-parallel in N processes (one per GPU; gloo on CPU) through `accelerate launch`.",
)
@click.option(
    "--fsdp",
    is_flag=True,
    help="With --processes N: shard the model, gradients and optimiser N ways (FSDP) instead of a whole "
    "copy per process; what configs/accelerate/fsdp.yaml does.",
)
@click.option("--report-to", "report_to", metavar="TRACKERS", help=REPORT_TO_HELP)
def train(
    config_file: str | None,
    algo: str | None,
    task: str | None,
    model: str | None,
    seed: int | None,
    out: str | None,
    overrides: tuple[str, ...],
    resume: bool,
    quiet: bool,
    processes: int,
    fsdp: bool,
    report_to: str | None,
) -> None:
    """Train one model with one algorithm on one task until the budget is spent.

    A run whose loss, gradient norm or weights stop being finite ends with status "diverged" in summary.json, keeps
    its last good state, saves no final model and exits with code 3.
    """
    from rlbench.core.lifeline import follow_parent
    from rlbench.engine.distributed import launched_world

    overrides = (*overrides, *report_to_overrides(report_to))  # a --set, so a relaunch below carries it too
    config = resolve(
        config_file, list(overrides), {"algo": algo, "task": task, "model": model, "seed": seed, "out": out}
    )
    if fsdp and processes < 2 and launched_world() == 1:
        fail("--fsdp shards the model across processes: give --processes N (N >= 2)")
    if processes > 1 and launched_world() == 1:
        from rlbench.engine.build import check_launch
        from rlbench.engine.distributed import Ranks
        from rlbench.run.training import check_processes

        # one line here, not one per process and a launcher trace
        check_launch(config, processes, sharded=fsdp)
        check_processes(config, Ranks(world=processes))
        named = {
            "--config": config_file,
            "--algo": algo,
            "--task": task,
            "--model": model,
            "--seed": seed,
            "--out": out,
        }
        args = [a for k, v in named.items() if v is not None for a in (k, str(v))]
        args += [a for o in overrides for a in ("--set", o)] + ["--resume"] * resume + ["--quiet"] * quiet
        launch(processes, ["train", *args], fsdp=fsdp)
    follow_parent()  # a run started by `compare` must not outlive it
    from rlbench.run.training import train as run_training

    summary = run_training(config, progress=not quiet, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports for the run
    if summary["status"] == "diverged":
        fail(f"run diverged at {summary['stop_reason']}", DIVERGED)
    click.echo(
        json.dumps(
            {k: summary[k] for k in ("status", "stop_reason", "initial", "final", "score", "usage", "wall_seconds")},
            indent=2,
        )
    )


def launch(processes: int, args: list[str], fsdp: bool = False) -> NoReturn:
    """Become ``accelerate launch`` of the rlbench command ``args`` in ``processes`` processes (its exit code is this
    command's); the launcher and its processes still end when a ``compare`` that started this one does.

    ``--multi_gpu`` is accelerate's name for "several processes": on a machine without GPUs they join a gloo group.
    ``--use_fsdp`` launches them the same way and exports ``ACCELERATE_USE_FSDP=true``, which shards the model
    (rlbench.engine.sharding does the sharding itself; accelerate's other FSDP settings are not read).
    """
    mode = ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *mode,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "rlbench.cli",
        *args,
    ]
    from rlbench.core.lifeline import exec_launcher

    exec_launcher(command)


@click.command(
    "list",
    epilog="""\b
Examples:
  rlbench list
  rlbench config --algo ppo   # every key with its type, default and help""",
)
def list_() -> None:
    """Registered algorithms and tasks, with their options and defaults."""
    from rlbench.core import registry

    for title, table in (("algorithms", registry.algorithms()), ("tasks", registry.tasks())):
        click.echo(f"{title}:")
        for name, cls in table.items():
            click.echo(f"  {name:<12} {cls.description}")
            opts = ", ".join(f"{k}={v!r}" for k, v in cls.options().items())
            if opts:
                click.echo(f"  {'':<12}   options: {opts}")


@click.command(
    epilog="""\b
Examples:
  rlbench warmstart                      # the pinned reference: where it is, its sha256 and accuracy
  rlbench warmstart --rebuild            # SFT a new one with the recipe (about 5 minutes on one core)
  rlbench warmstart --set tiny.warmstart=build --set tiny.sft_steps=600"""
)
@run_options
@click.option(
    "--rebuild",
    is_flag=True,
    help="Run the SFT recipe now (replacing any cached build of these settings) "
    "and say how the result compares with the pinned reference.",
)
def warmstart(
    config_file: str | None,
    algo: str | None,
    task: str | None,
    model: str | None,
    seed: int | None,
    out: str | None,
    overrides: tuple[str, ...],
    rebuild: bool,
) -> None:
    """Print the tiny lab's starting model (the pinned reference, or the cached build with tiny.warmstart=build)."""
    config = resolve(
        config_file, list(overrides), {"algo": algo, "task": task, "model": model, "seed": seed, "out": out}
    )
    from rlbench.run.tiny.warmstart import REFERENCE_DIR, REFERENCE_SHA256, REPORT_FILE, ensure_warmstart

    task_obj = build_task(config.task)
    path = ensure_warmstart(config.tiny, task_obj, config.sampling, rebuild=rebuild)
    report = json.loads((path / REPORT_FILE).read_text())
    report.pop("history", None)
    click.echo(json.dumps({"path": str(path), **report}, indent=2))
    if rebuild:
        ref = json.loads((REFERENCE_DIR / REPORT_FILE).read_text())
        same = report["sha256"] == REFERENCE_SHA256
        click.echo(
            f"rebuild: {'the same bits as' if same else 'differs from'} the pinned reference "
            f"(validation greedy {report['greedy_accuracy']:.3f} vs {ref['greedy_accuracy']:.3f}, sampled "
            f"{report['sampled_accuracy']:.4f} vs {ref['sampled_accuracy']:.4f})"
        )
        if not same:
            click.echo(
                f"to pin it: copy {path}/* into {REFERENCE_DIR}/ and set REFERENCE_SHA256 = "
                f'"{report["sha256"]}" in rlbench/run/tiny/warmstart.py; then rerun the tuning and the main job'
            )
