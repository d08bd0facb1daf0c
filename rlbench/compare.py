"""Matched-budget comparisons: algorithms x seeds, same model, prompts, sampling and budget; resumable; audited.

Every run is an ordinary ``rlbench train`` run in ``DIR/runs/<algo>-s<seed>``, started as a child process with
``--resume``: rerunning the same comparison skips finished runs and continues unfinished ones from their last state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from rlbench import registry
from rlbench.config import BudgetConfig, ConfigError, RunConfig, build_dataclass, build_run_config
from rlbench.results import METRICS, SUMMARY, read_jsonl, write_json

MANIFEST = "manifest.json"
AUDIT = "audit.json"
RUNS = "runs"
PACKAGES = ("rlbench", "torch", "transformers", "accelerate", "datasets", "math-verify", "sympy", "click")


def parse_budget(text: str) -> BudgetConfig:
    """``samples=3840`` or ``steps=50,seconds=600`` -> BudgetConfig (validated)."""
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"--budget {text!r}: expected kind=amount, kind one of samples, tokens, steps, seconds")
        key, value = part.split("=", 1)
        options[key.strip()] = value.strip()
    budget = build_dataclass(BudgetConfig, options, prefix="budget")
    budget.validate()
    return budget


def run_name(algo: str, seed: int) -> str:
    return f"{algo}-s{seed}"


@dataclasses.dataclass
class Comparison:
    out: Path
    base: dict[str, Any]  # RunConfig tree shared by every run (algo and seed excluded)
    algos: list[str]
    seeds: list[int]
    algo_options: dict[str, dict[str, Any]]  # per-algorithm hyperparameters
    command: str

    def run_config(self, algo: str, seed: int) -> RunConfig:
        tree = json.loads(json.dumps(self.base))
        tree["algo"] = {"name": algo, **self.algo_options.get(algo, {})}
        tree["seed"] = seed
        tree["out"] = str(self.out / RUNS / run_name(algo, seed))
        return build_run_config(tree)

    def validate(self) -> None:
        if not self.algos:
            raise ConfigError("--algos: name at least one algorithm")
        if not self.seeds:
            raise ConfigError("--seeds: name at least one seed")
        for name in self.algo_options:
            if name not in self.algos:
                raise ConfigError(f"algo_options.{name}: not one of the compared algorithms ({', '.join(self.algos)})")
        for algo in self.algos:
            self.run_config(algo, self.seeds[0])  # raises ConfigError naming the bad key

    def manifest(self) -> dict[str, Any]:
        config = build_run_config(self.base)
        return {
            "command": self.command,
            "task": config.task_name,
            "model": config.model,
            "algos": self.algos,
            "seeds": self.seeds,
            "budget": dataclasses.asdict(config.budget),
            "config": self.base,
            "algo_options": self.algo_options,
            "eval": {"split": config.eval.split, "problems": config.eval.limit, "samples": config.eval.samples,
                     "greedy": config.eval.greedy, "points": config.eval.points},
            "code_version": code_version(),
            "packages": package_versions(),
            "machine": machine(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def code_version() -> str | None:
    """The git commit of the rlbench source tree (with ``+dirty`` when it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def _check_manifest(path: Path, fresh: dict[str, Any]) -> None:
    """A rerun must be the same comparison; otherwise its runs would not be comparable."""
    old = json.loads(path.read_text())
    for key in ("task", "model", "algos", "seeds", "budget", "config", "algo_options"):
        if old.get(key) != fresh.get(key):
            raise ConfigError(f"{key}: differs from the comparison already in {path.parent} ({old.get(key)!r} there); "
                              "use another --out")


def _spawn(config: RunConfig, jobs_log: Path) -> subprocess.Popen:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    request = out / "request.yaml"
    request.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    cmd = [sys.executable, "-m", "rlbench.cli", "train", "--config", str(request), "--resume", "--quiet"]
    log = open(jobs_log, "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(config.threads or 1)})


def _finished(config: RunConfig) -> bool:
    path = Path(config.out) / SUMMARY
    return path.exists() and json.loads(path.read_text()).get("status") == "completed"


def run_comparison(comp: Comparison, jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run (or finish) every algorithm x seed, then write the audit. Returns the audit."""
    comp.validate()
    comp.out.mkdir(parents=True, exist_ok=True)
    manifest = comp.manifest()
    path = comp.out / MANIFEST
    if path.exists():
        _check_manifest(path, manifest)
        manifest["created"] = json.loads(path.read_text()).get("created", manifest["created"])
    write_json(path, manifest)
    configs = [comp.run_config(a, s) for s in comp.seeds for a in comp.algos]
    _prepare_model(configs[0], progress)
    todo = [c for c in configs if not _finished(c)]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="comparison runs", unit="run", disable=not progress)
    running: list[tuple[RunConfig, subprocess.Popen, float]] = []
    failed: list[str] = []
    log = comp.out / "runs.log"
    try:
        while todo or running:
            while todo and len(running) < jobs:
                config = todo.pop(0)
                running.append((config, _spawn(config, log), time.time()))
            time.sleep(0.2)
            for item in list(running):
                config, proc, started = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                name = Path(config.out).name
                if proc.returncode != 0:
                    failed.append(f"{name} (exit {proc.returncode}; see {log})")
                bar.update(1)
                bar.write(f"{name}: {'done' if proc.returncode == 0 else 'FAILED'} in {time.time() - started:.0f} s")
    except KeyboardInterrupt:
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, _ in running:
            proc.wait()
        raise
    finally:
        bar.close()
    audit = write_audit(comp.out, configs)
    if failed:
        raise RuntimeError("runs failed: " + "; ".join(failed))
    return audit


def _prepare_model(config: RunConfig, progress: bool) -> None:
    """Build the tiny lab's warm-start once, in the parent, rather than in racing children."""
    if config.model == "tiny":
        import torch

        from rlbench.engine.trainer import resolve_model_path

        if config.threads:
            # the same thread count as the runs: CPU results depend on it, and it avoids oversubscribing the cores
            torch.set_num_threads(config.threads)

        task = registry.get_task(config.task_name).from_options({k: v for k, v in config.task.items() if k != "name"})
        resolve_model_path(config, task, progress)


def write_audit(out: Path, configs: list[RunConfig]) -> dict[str, Any]:
    """Did every run consume the same budget (to within one batch) and see the same prompts for its seed?"""
    runs: dict[str, Any] = {}
    problems: list[str] = []
    for config in configs:
        run = Path(config.out)
        name = run.name
        summary = json.loads((run / SUMMARY).read_text()) if (run / SUMMARY).exists() else {}
        rows = read_jsonl(run / METRICS)
        digest = hashlib.sha256()
        for row in rows:
            digest.update(str(row.get("prompt_ids_hash")).encode())
        usage = summary.get("usage", {})
        runs[name] = {"algo": config.algo_name, "seed": config.seed, "status": summary.get("status", "missing"),
                      **{k: usage.get(k) for k in ("samples", "tokens", "steps", "seconds")},
                      "prompt_hash": digest.hexdigest()[:16], "batch_size": config.rollout.batch_size}
        if runs[name]["status"] != "completed":
            problems.append(f"{name}: status {runs[name]['status']}")
    by_seed: dict[int, list[str]] = {}
    for name, r in runs.items():
        by_seed.setdefault(r["seed"], []).append(name)
    for seed, names in by_seed.items():
        done = [n for n in names if runs[n]["status"] == "completed"]
        if len({runs[n]["prompt_hash"] for n in done}) > 1:
            problems.append(f"seed {seed}: runs saw different prompts: " + ", ".join(f"{n}={runs[n]['prompt_hash']}" for n in done))
    done = [r for r in runs.values() if r["status"] == "completed"]
    if done:
        for key in ("samples", "tokens", "steps"):
            values = [r[key] for r in done if r[key] is not None]
            if not values:
                continue
            spread = max(values) - min(values)
            allowed = {"samples": done[0]["batch_size"], "steps": 1, "tokens": None}[key]
            if allowed is not None and spread > allowed:
                problems.append(f"{key}: runs consumed {min(values)}..{max(values)}, more than one batch apart")
    audit = {"matched": not problems, "runs": runs, "problems": problems}
    write_json(out / AUDIT, audit)
    return audit


def command_line() -> str:
    return "rlbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
