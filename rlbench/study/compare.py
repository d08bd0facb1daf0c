"""Matched-budget comparisons: algorithms x seeds, same model, prompts, sampling and budget; resumable; audited.

Every run is an ordinary ``rlbench train`` run in ``DIR/runs/<algo>-s<seed>``, started as a child process with
``--resume``: rerunning the same comparison skips finished runs and continues unfinished ones from their last state.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rlbench.core.config import BudgetConfig, ConfigError, RunConfig
from rlbench.core.configure import build_dataclass, build_run_config, build_task, saved_config_mismatch, set_at
from rlbench.core.lifeline import ORPHAN_GRACE_S
from rlbench.core.locks import REQUEST, hold, is_run_folder, lock_kind, refuse_foreign
from rlbench.core.provenance import code_version, machine, package_versions
from rlbench.core.results import AUDIT, CONFIG, MANIFEST, RUNS, SUMMARY, run_name, write_json, write_text_atomic
from rlbench.engine.budget import UNITS
from rlbench.study.executors import Job, Placement, make_executor
from rlbench.study.progress import Live
from rlbench.study.report.audit import audit_comparison
from rlbench.study.report.inputs import load_comparison
from rlbench.study.variants import Row

# run settings a row may not change: with them equal, the runs of one seed see the same prompts, model and budget
MATCHED_KEYS = (
    "task",
    "model",
    "model_args",
    "tiny",
    "budget",
    "eval",
    "seed",
    "out",
    "algo.name",
    "sampling",
    "rollout.sample_stream",
    "rollout.batch_size",
    "rollout.samples_per_prompt",
    "rollout.seed_rows",
)


def parse_budget(text: str) -> BudgetConfig:
    """``samples=3840`` or ``steps=50,seconds=600`` -> BudgetConfig (validated)."""
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"--budget {text!r}: expected kind=amount, kind one of {', '.join(UNITS)}")
        key, value = part.split("=", 1)
        options[key.strip()] = value.strip()
    budget = build_dataclass(BudgetConfig, options, prefix="budget")
    budget.validate()
    return budget


@dataclasses.dataclass
class Comparison:
    out: Path
    base: dict[str, Any]  # RunConfig tree shared by every run (seed excluded; its algo: options every row's takes)
    rows: list[Row]  # one per leaderboard row: an algorithm with its options, or the A/A control
    seeds: list[int]
    algo_options: dict[str, dict[str, Any]]  # per-algorithm hyperparameters (the YAML form), under each row's own
    command: str
    reference: str | None = None  # the label the others are tested against; None = the report's default
    # per-algorithm run settings chosen by `rlbench tune` (dotted keys), under each row's own; and how they were chosen
    tuned: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] | None = None

    def settings(self, row: Row) -> dict[str, Any]:
        """The run settings (dotted keys) of ``row``'s runs beyond the shared config: tuned, then the row's own; a
        positive control's learning rate is its fraction of the one its source row runs at."""
        own = {**self.tuned.get(row.algo, {}), **row.settings}
        if row.lr_scale is not None:
            lr = own.get("optim.lr", build_run_config(self.base).optim.lr)
            own["optim.lr"] = float(lr) * row.lr_scale
        return own

    @property
    def algos(self) -> list[str]:
        return [row.label for row in self.rows]

    def run_config(self, row: Row, seed: int) -> RunConfig:
        tree = json.loads(json.dumps(self.base))
        # options set for every row (--set algo.KEY), under the algorithm's own (algo_options), under the row's
        tree["algo"] = {
            "name": row.algo,
            **tree.get("algo", {}),
            **self.algo_options.get(row.algo, {}),
            **row.algo_options,
        }
        for key, value in self.settings(row).items():
            fixed = next((f for f in MATCHED_KEYS if key == f or key.startswith(f + ".")), None)
            if fixed is not None:
                raise ConfigError(
                    f"--algos {row.label}: {key} cannot differ between rows ({fixed} is what makes the "
                    "runs matched); set it for every row with --set"
                )
            set_at(tree, key.split("."), value, what=f"--algos {row.label}: {key}")
        if row.control and row.lr_scale is None:  # the A/A control; a positive control shares the reference's stream
            tree.setdefault("rollout", {})["sample_stream"] = 1
        tree["seed"] = seed
        tree["out"] = str(self.out / RUNS / run_name(row.slug, seed))
        try:
            return build_run_config(tree)
        except ConfigError as exc:
            raise ConfigError(f"--algos {row.label}: {exc}") from None

    def validate(self) -> None:
        if not self.rows:
            raise ConfigError("--algos: name at least one algorithm")
        if not self.seeds:
            raise ConfigError("--seeds: name at least one seed")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise ConfigError(f"--seeds: seed {twice[0]} is named twice; two runs would write one folder")
        names = {row.algo for row in self.rows}
        for name in self.algo_options:
            if name not in names:
                raise ConfigError(
                    f"algo_options.{name}: not one of the compared algorithms ({', '.join(sorted(names))})"
                )
        if self.reference is not None and self.reference not in self.algos:
            raise ConfigError(f"--reference {self.reference}: not one of the rows ({', '.join(self.algos)})")
        for row in self.rows:
            self.run_config(row, self.seeds[0])  # raises ConfigError naming the row and the bad key

    def manifest(self) -> dict[str, Any]:
        config = build_run_config(self.base)
        return {
            "command": self.command,
            "task": config.task_name,
            "model": config.model,
            "algos": self.algos,
            # "settings" and "tuning" only where there are some: older manifests, without them, stay the same design
            "rows": [
                {
                    **row.to_dict(),
                    "resolved": self.run_config(row, self.seeds[0]).algo,
                    **({"settings": self.settings(row)} if self.settings(row) else {}),
                }
                for row in self.rows
            ],
            **({"tuning": self.tuning} if self.tuning else {}),
            "reference": self.reference,
            "seeds": self.seeds,
            "budget": dataclasses.asdict(config.budget),
            "config": self.base,
            "algo_options": self.algo_options,
            "eval": {
                "split": config.eval.split,
                "problems": config.eval.limit,
                "samples": config.eval.samples,
                "greedy": config.eval.greedy,
                "every": config.eval.every,
                "final_mean_of": config.eval.final_mean_of,
                # only where they differ from the defaults: older manifests, without them, stay the same design
                **{
                    k: v
                    for k, v in (
                        ("curve_problems", config.eval.curve_limit),
                        ("curve_samples", config.eval.curve_samples),
                    )
                    if v is not None
                },
                **({"rank_by": config.eval.rank_by} if config.eval.rank_by != "greedy" else {}),
            },
            "code_version": code_version(),
            "packages": package_versions(),
            "machine": machine(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _check_manifest(path: Path, fresh: dict[str, Any]) -> None:
    """A rerun must be the same comparison; otherwise its runs would not be comparable."""
    old = json.loads(path.read_text())
    for key in ("task", "model", "rows", "reference", "seeds", "budget", "config", "algo_options", "tuning"):
        if old.get(key) != fresh.get(key):
            raise ConfigError(
                f"{key}: differs from the comparison already in {path.parent} ({old.get(key)!r} there); "
                "use another --out"
            )


def is_comparison_folder(folder: Path) -> bool:
    """A folder ``compare`` wrote: only then may it write (or overwrite its own report) there."""
    if (folder / MANIFEST).exists() or lock_kind(folder) == "comparison":
        return True
    # only rlbench runs, where this comparison puts its own: kept, and the manifest check names how they differ
    runs = folder / RUNS
    return (
        folder.is_dir()
        and [p.name for p in folder.iterdir()] == [RUNS]
        and runs.is_dir()
        and all(is_run_folder(p) for p in runs.iterdir())
    )


def _request(config: RunConfig) -> Job:
    """Write the run's request file (what the run is) into its folder; the run to hand to an executor."""
    out = Path(config.out)
    refuse_foreign(out, "run", is_run_folder(out), flag="run folder")
    # under the run's lock: a run of a killed comparison may still be writing (it is ending; see rlbench.core.lifeline)
    with hold(out, "run", wait=ORPHAN_GRACE_S):
        request = out / REQUEST
        write_text_atomic(request, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return Job(out.name, out, request, threads=config.threads or 1)


def _finished(config: RunConfig) -> bool:
    path = Path(config.out) / SUMMARY
    return path.exists() and json.loads(path.read_text()).get("status") == "completed"


def run_comparison(
    comp: Comparison, jobs: int | None = 1, progress: bool = True, placement: Placement | None = None
) -> dict[str, Any]:
    """Run (or finish) every row x seed, then write the audit. Returns the audit, with the runs whose process
    failed (diverged runs among them) under ``failed_runs``.

    ``placement`` says where runs execute (default: ``jobs`` local processes at once); while they do, the progress
    display shows each running run and the comparison's ETA, read from the run folders."""
    placement = placement or Placement(jobs=jobs)
    comp.validate()
    configs = [comp.run_config(row, s) for s in comp.seeds for row in comp.rows]
    check_placement(configs, placement)
    comp.out.mkdir(parents=True, exist_ok=True)
    manifest = comp.manifest()
    path = comp.out / MANIFEST
    if path.exists():
        _check_manifest(path, manifest)
        manifest["created"] = json.loads(path.read_text()).get("created", manifest["created"])
    write_json(path, manifest)
    for config in configs:
        _check_adoptable(config)
    _prepare_model(configs[0], progress)
    todo = [c for c in configs if not _finished(c)]
    display = Live(comp.out) if progress else None
    try:
        failed = _execute(comp, todo, placement, display) if todo else []
    finally:  # however it ends: what is printed next goes below the table, and the cursor shows again
        if display:
            display.close()
    audit = audit_comparison(load_comparison(comp.out))
    write_json(comp.out / AUDIT, audit)
    audit["failed_runs"] = failed  # reported by the caller after the leaderboard, which lists them as incomplete
    return audit


def _execute(comp: Comparison, todo: list[RunConfig], placement: Placement, display: Live | None) -> list[str]:
    """Run ``todo`` through the placement's executor; the runs that did not complete, with why."""
    executor = make_executor(placement, comp.out, threads=todo[0].threads or 1)
    executor.record("executor", **executor.describe())
    ended: dict[str, str] = {}
    failed: list[str] = []
    try:
        while todo or executor.in_flight():
            while todo and executor.has_room():
                executor.submit(_request(todo.pop(0)))
            for done in executor.poll(0.2):
                name = done.job.name
                ok = done.returncode == 0
                ended[name] = "done" if ok else "failed"
                if not ok:
                    why = f"exit {done.returncode}" if done.returncode is not None else done.error
                    failed.append(f"{name} ({why}; see {executor.log})")
                if display:
                    display.tracker.ended(name, done.seconds)
                    display.write(f"{name}: {'done' if ok else 'FAILED'} in {done.seconds:.0f} s")
            if display:
                display.refresh({**ended, **executor.in_flight()})
        if display:
            display.refresh(ended, force=True)
    except BaseException:  # Ctrl-C, SIGTERM's KeyboardInterrupt, or a refused run folder: no run outlives this loop
        executor.cancel()
        raise
    finally:
        executor.close()
    return failed


def check_placement(configs: list[RunConfig], placement: Placement) -> None:
    """A run given K > 1 GPUs trains in K processes: its step must split over them (before anything starts)."""
    from rlbench.engine.distributed import Ranks
    from rlbench.run.training import check_processes

    k = placement.gpus_per_run or 1
    if k > 1:
        for config in configs:
            try:
                check_processes(config, Ranks(0, k))
            except ConfigError as exc:
                raise ConfigError(f"--gpus-per-run {k}: {Path(config.out).name}: {exc}") from None


def _check_adoptable(config: RunConfig) -> None:
    """A folder already under runs/ is continued or reused only if it holds this comparison's run."""
    saved = Path(config.out) / CONFIG
    mismatch = saved_config_mismatch(saved, config, "in this comparison") if saved.exists() else None
    if mismatch:
        raise ConfigError(
            f"{saved}: {mismatch}; it is another run, so it is not adopted: remove it or use another --out"
        )


def _prepare_model(config: RunConfig, progress: bool) -> None:
    """Build the tiny lab's warm-start once, in the parent, rather than in racing children."""
    if config.model == "tiny":
        import torch

        from rlbench.run.training import resolve_model_path

        if config.threads:
            # the same thread count as the runs: CPU results depend on it, and it avoids oversubscribing the cores
            torch.set_num_threads(config.threads)

        task = build_task(config.task)
        resolve_model_path(config, task, progress)


def command_line() -> str:
    return "rlbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
