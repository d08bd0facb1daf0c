"""Experiment tracking: a run's training metrics, evaluations and config, also sent to TensorBoard, Weights & Biases
or trackio (``report_to: [tensorboard, wandb, trackio]``, or ``rlbench train --report-to tensorboard,wandb``).

Each tracker is a trainer listener (:data:`rlbench.engine.run_log.Listener`): rank 0 tells it every ``metrics.jsonl``
and ``eval.jsonl`` row once the row is on disk. The run's own files stay the record; a tracker is a view of them:

* one tracker run per rlbench run, named after the run folder (``grpo-s1``) and grouped by its comparison (the
  comparison folder's name: wandb's group, trackio's project; standalone runs go to project ``rlbench``);
* per step, every number of the metrics row at its step (``reward_mean``, ``loss``; nested ``usage`` and ``time``
  flattened with ``/``: ``usage/tokens``, ``time/generate``), and every evaluation under ``eval/`` at the step it
  was taken (``eval/greedy/accuracy``, ``eval/sampled/accuracy``, ``eval/sampled/length_mean``, ``eval/sampled/pass@4``);
* the run config, once (TensorBoard: a ``config`` text and the hparams; wandb and trackio: the run's config).

Offline, no server needed: TensorBoard writes event files to ``RUN/tensorboard/`` (``tensorboard --logdir
DIR/runs`` shows a comparison's runs side by side); wandb runs in the mode wandb itself picks (online once logged in;
``WANDB_MODE=offline`` writes files in ``RUN/wandb/`` for ``wandb sync``), and in project ``$WANDB_PROJECT`` or
``rlbench``; trackio
logs to its local database (``$TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``; ``trackio show``).

A resumed run continues its tracker runs (TensorBoard purges the events from the first re-logged step on). A tracker
that fails while the run trains prints one warning and is dropped: a dashboard must never cost a benchmark run.
``report_to`` is not part of a run's fingerprint, so adding or dropping a tracker never makes a run "different".
Each tracker's package is an extra named after it (``pip install 'rlbench[tensorboard]'``); the config refuses a
tracker whose package is missing, before any work (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlbench.core.results import MANIFEST, RUNS, TENSORBOARD_DIR, WANDB_DIR

STANDALONE_PROJECT = "rlbench"
WANDB_ID_FILE = "rlbench-run-id"  # in RUN/wandb/: the wandb run a resume continues


def build_trackers(config: Any, out: Path) -> list[Tracker]:
    """One listener per tracker in ``config.report_to`` (opened lazily, at the run's first row)."""
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}
    settings = config.to_dict()
    return [kinds[name](Path(out), settings) for name in dict.fromkeys(config.report_to)]


def close_trackers(listeners: Sequence[Any]) -> None:
    """Finish every tracker among ``listeners`` (each failure is a warning: the run's result stands)."""
    for listener in listeners:
        if isinstance(listener, Tracker):
            listener.close()


def run_identity(out: Path) -> tuple[str, str | None]:
    """(run name, comparison name): a run of ``rlbench compare`` lives in ``DIR/runs/<name>`` next to DIR/manifest.json."""
    path = Path(os.path.abspath(out))
    comparison = path.parent.parent
    grouped = path.parent.name == RUNS and (comparison / MANIFEST).exists()
    return path.name, comparison.name if grouped else None


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) row, keys joined with ``/``; strings, lists, booleans and None are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def scalars(kind: str, row: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """(step, numbers) of a metrics row ("step") or an evaluation ("eval", under ``eval/``); None for other kinds."""
    if kind not in ("step", "eval") or not isinstance(row.get("step"), int):
        return None
    rest = {k: v for k, v in row.items() if k != "step"}
    return row["step"], flatten(rest, "eval/" if kind == "eval" else "")


class Tracker:
    """A listener that opens its tracker run at the first row and logs every row's numbers at the row's step."""

    name = "tracker"

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.out, self.config = out, config
        self.run_name, self.comparison = run_identity(out)
        self.opened = self.failed = False

    def __call__(self, kind: str, row: dict[str, Any]) -> None:
        found = scalars(kind, row)
        if found is None or self.failed:
            return
        step, numbers = found
        try:
            if not self.opened:
                # a fresh run starts with the evaluation before training; anything else continues a resumed one
                self.open(resumed=not (kind == "eval" and row.get("point") == 0), first_step=step)
                self.opened = True
            self.log(step, numbers)
        except Exception as exc:  # noqa: BLE001 - a tracker is a view of the run's files, never a reason to stop it
            self._drop(exc)

    def close(self) -> None:
        if self.opened and not self.failed:
            try:
                self.finish()
            except Exception as exc:  # noqa: BLE001
                self._drop(exc)
        self.opened = False

    def _drop(self, exc: Exception) -> None:
        self.failed = True
        first = str(exc).strip().split("\n")[0] or type(exc).__name__
        print(
            f"rlbench: warning: {self.name} tracking stopped ({first}); the run goes on, its files are the record",
            file=sys.stderr,
        )

    def open(self, resumed: bool, first_step: int) -> None:
        raise NotImplementedError

    def log(self, step: int, numbers: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in ``RUN/tensorboard/`` (torch's SummaryWriter; needs the ``tensorboard`` package)."""

    name = "tensorboard"

    def open(self, resumed: bool, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        logdir = self.out / TENSORBOARD_DIR
        earlier = logdir.is_dir() and any(logdir.iterdir())
        # a resumed (or restarted) run re-logs the steps after its last state: drop the events it logged for them
        self.writer = SummaryWriter(str(logdir), purge_step=first_step if earlier else None)
        if not earlier:
            self.writer.add_text("config", "```yaml\n" + _yaml(self.config) + "```", global_step=0)
            flat = {
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in _dotted(self.config).items()
            }
            for summary in hparams(flat, {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, step: int, numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, global_step=step)

    def finish(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run in wandb's own mode (``WANDB_MODE``, ``wandb login`` / ``wandb offline``); files in
    ``RUN/wandb/``."""

    name = "wandb"

    def open(self, resumed: bool, first_step: int) -> None:
        import wandb

        folder = self.out / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else None
        if not run_id:
            seed = f"{os.path.abspath(self.out)}|{os.getpid()}|{os.urandom(8).hex()}"
            run_id = hashlib.sha256(seed.encode()).hexdigest()[:16]
            id_file.write_text(run_id + "\n")
        options = {
            "project": os.environ.get("WANDB_PROJECT") or STANDALONE_PROJECT,
            "group": self.comparison,
            "name": self.run_name,
            "id": run_id,
            "resume": "allow",
            "dir": str(self.out),
            "config": self.config,
            "reinit": "create_new",
        }  # no mode: wandb reads WANDB_MODE and its settings
        self.run = wandb.init(**_accepted(wandb.init, options))

    def log(self, step: int, numbers: dict[str, float]) -> None:
        self.run.log(numbers, step=step)

    def finish(self) -> None:
        self.run.finish()


class TrackioTracker(Tracker):
    """A trackio run in its local database (project: the comparison, or ``rlbench``); no server is started."""

    name = "trackio"

    def open(self, resumed: bool, first_step: int) -> None:
        import trackio

        options = {
            "project": self.comparison or STANDALONE_PROJECT,
            "name": self.run_name,
            "group": self.comparison,
            "config": self.config,
            "resume": "allow" if resumed else "never",
            "embed": False,
            "auto_log_gpu": False,
            "auto_log_cpu": False,
        }  # no sampling threads beside a timed run
        with contextlib.redirect_stdout(sys.stderr):  # trackio talks on stdout, where `rlbench train` prints its JSON
            self.run = trackio.init(**_accepted(trackio.init, options))

    def log(self, step: int, numbers: dict[str, float]) -> None:
        self.run.log(numbers, step=step)

    def finish(self) -> None:
        import trackio

        current = getattr(getattr(trackio, "context_vars", None), "current_run", None)
        with contextlib.redirect_stdout(sys.stderr):
            if current is not None and current.get() is self.run:
                trackio.finish()  # also forgets the run, so trackio's exit hook does not finish (and print) it again
            else:
                self.run.finish()


def _accepted(func: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``func`` takes (older tracker versions lack some), with None values left to its defaults."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {k: v for k, v in options.items() if v is not None}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {k: v for k, v in options.items() if v is not None}
    return {k: v for k, v in options.items() if k in params and v is not None}


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _yaml(tree: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)
