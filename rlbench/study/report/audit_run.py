"""The audit of one run against itself and against the manifest (rlbench.study.report.audit runs it for every run).

What a run's files say about itself is checked into ``problems``. What it says against the manifest (its row's
algorithm and settings, the shared settings, the budget rule) goes into ``claims`` instead, keyed by the manifest
statement it contradicts: a statement that every run it governs contradicts is the manifest's error, not theirs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from rlbench.core.config import EXECUTION_KEYS
from rlbench.core.configure import first_difference, parse_yaml, value_at
from rlbench.core.results import CONFIG, FINGERPRINT, token_hash
from rlbench.engine.budget import UNITS
from rlbench.study.report.inputs import RunFiles

# what may differ between the runs of one comparison (trackers, EXECUTION_KEYS, are not in a run's fingerprint)
SHARED_EXCLUDED = ("algo", "seed", "out", *EXECUTION_KEYS)
PER_ROW = (("rollout", "sample_stream"),)  # the A/A control's own stream


@dataclass
class Findings:
    """One run's audit: its problems; ``claims``, (manifest statement, row label or None for all rows) -> what the
    run contradicts in it; and ``unchecked``, checks its files did not allow (never a problem)."""

    problems: list[str] = field(default_factory=list)
    claims: dict[tuple[str, str | None], str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

    def claim(self, statement: str, row: str | None, message: str) -> None:
        self.claims.setdefault((statement, row), message)


def row_settings(row: Any) -> dict[tuple[str, ...], Any]:
    """A manifest row's own run settings (``optim.lr`` chosen by tuning or set on the row), by key path; the
    algorithm's options are checked through the row's resolved algorithm instead."""
    own = row.get("settings") if isinstance(row, dict) and isinstance(row.get("settings"), dict) else {}
    return {tuple(str(k).split(".")): v for k, v in own.items() if not str(k).startswith("algo.")}


def check_settings(run: RunFiles, config: dict[str, Any], own: dict[tuple[str, ...], Any], found: Findings) -> None:
    for path, value in own.items():
        actual = value_at(config, path)
        if actual != value and not _coerced_equal(actual, value):
            key = ".".join(path)
            found.claim(
                f"row {run.algo}: {key} = {value!r}",
                run.algo,
                f"{run.name}: {key} = {actual!r}, but its row {run.algo} runs {value!r}",
            )


def facts(run: RunFiles, found: Findings, varied: list[tuple[str, ...]] = ()) -> dict[str, Any] | None:
    """The audited facts of one run, or None (with the reason) when its files cannot be read."""
    problems = found.problems
    if run.status != "completed":
        problems.append(f"{run.name}: status {run.status}")
        return None
    try:
        config = parse_yaml((run.path / CONFIG).read_text(encoding="utf-8"))
        fingerprint = json.loads((run.path / FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        problems.append(
            f"{run.name}: {getattr(exc, 'filename', None) or 'config.yaml/fingerprint.json'} "
            f"unreadable or missing ({type(exc).__name__})"
        )
        return None
    if not isinstance(config, dict) or not isinstance(fingerprint, dict):
        problems.append(f"{run.name}: config.yaml or fingerprint.json is not a mapping")
        return None
    shared = {k: v for k, v in config.items() if k not in SHARED_EXCLUDED}
    for *section, key in [*PER_ROW, *varied]:
        shared = _without(shared, tuple(section), key)
    return {
        "config": config,
        "fingerprint": fingerprint,
        "shared config": shared,
        "init_weights": fingerprint.get("init_weights"),
        "eval_set": fingerprint.get("eval_set"),
        "prompts": [row.get("prompt_ids_hash") for row in run.metrics],
    }


def check_own(
    run: RunFiles,
    f: dict[str, Any],
    row: dict[str, Any] | None,
    budget: dict[str, Any],
    manifest: dict[str, Any],
    found: Findings,
) -> None:
    config, fp = f["config"], f["fingerprint"]
    say = found.problems.append
    own = {k: v for k, v in config.items() if k not in SHARED_EXCLUDED}
    # fingerprints written before a key joined EXECUTION_KEYS still hold it: it never said what a run computes
    recorded = (
        {k: v for k, v in fp.get("config").items() if k not in EXECUTION_KEYS}
        if isinstance(fp.get("config"), dict)
        else fp.get("config")
    )
    if recorded != own:
        say(f"{run.name}: config.yaml {first_difference(recorded, own)} differs from fingerprint.json")
    if fp.get("algo") != config.get("algo") or fp.get("seed") != config.get("seed"):
        say(f"{run.name}: algo or seed in config.yaml differs from fingerprint.json")
    if config.get("seed") != run.seed:
        say(f"{run.name}: seed {config.get('seed')!r} in config.yaml, but the folder is seed {run.seed}")
    expected_algo = row.get("resolved") if row else {"name": run.algo}
    algo = config.get("algo") if isinstance(config.get("algo"), dict) else {}
    for key, value in (expected_algo or {}).items():
        if algo.get(key) != value:
            found.claim(
                f"row {run.algo}: algo.{key} = {value!r}",
                run.algo,
                f"{run.name}: algo.{key} = {algo.get(key)!r}, but its row {run.algo} runs {value!r}",
            )
    stream = (config.get("rollout") or {}).get("sample_stream", 0)
    # the A/A control draws from stream 1; every other row, the positive control included (lr_scale), from stream 0
    own_stream = bool(row and row.get("control") and row.get("lr_scale") is None)
    if stream != int(own_stream):
        found.claim(
            f"row {run.algo}: an A/A control = {own_stream}",
            run.algo,
            f"{run.name}: rollout.sample_stream = {stream!r} does not fit its row",
        )
    own = row_settings(row)
    for path, value in _leaves(manifest.get("config") if isinstance(manifest.get("config"), dict) else {}):
        actual = value_at(config, path)
        if path in own:
            continue  # its row sets it (checked against the row)
        if path[0] not in SHARED_EXCLUDED and actual != value and not _coerced_equal(actual, value):
            key = ".".join(path)
            found.claim(
                f"config {key} = {value!r}", None, f"{run.name}: {key} = {actual!r}, but the manifest says {value!r}"
            )
    _check_steps(run, config, f["prompts"], budget, found)
    check_eval_set(run, fp.get("eval_set"), found.problems, config)


def _check_steps(
    run: RunFiles, config: dict[str, Any], prompts: list[Any], budget: dict[str, Any], found: Findings
) -> None:
    problems = found.problems
    batch = (config.get("rollout") or {}).get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        problems.append(f"{run.name}: config.yaml has no rollout.batch_size")
        return
    steps = [row.get("step") for row in run.metrics]
    if steps != list(range(1, len(steps) + 1)):
        gap = next((i + 1 for i, s in enumerate(steps) if s != i + 1), len(steps))
        problems.append(
            f"{run.name}: metrics.jsonl steps are not 1..{len(steps)} (line {gap} is step {steps[gap - 1]!r})"
        )
        return
    if any(not isinstance(p, str) or not p for p in prompts):
        line = next(i + 1 for i, p in enumerate(prompts) if not isinstance(p, str) or not p)
        problems.append(f"{run.name}: metrics.jsonl line {line} has no prompt hash")
    rule = "budget " + ", ".join(f"{k}={v}" for k, v in budget.items() if v is not None)
    before = dict.fromkeys(UNITS, 0)
    for row in run.metrics:
        used = row.get("usage") or {}
        step, tokens = row["step"], used.get("tokens", 0) - before["tokens"]
        if not _allowed(before, budget, batch):
            found.claim(rule, None, f"{run.name}: step {step} was taken after the budget was spent")
            break
        if used.get("samples", 0) - before["samples"] != batch or used.get("steps") != step:
            problems.append(f"{run.name}: step {step} usage does not add one batch of {batch} samples")
            break
        length = row.get("length_mean")
        if not isinstance(length, (int, float)) or abs(tokens - length * batch) > 0.5 + 1e-9 * abs(tokens):
            problems.append(
                f"{run.name}: step {step} counts {tokens} tokens, but {batch} completions of mean length "
                f"{length} make {length * batch if isinstance(length, (int, float)) else '?'}"
            )
            break
        before = {k: used.get(k, 0) for k in before}
    if run.metrics and _allowed(before, budget, batch, final=True):
        found.claim(
            rule, None, f"{run.name}: stopped at step {before['steps']} with budget left (another step was allowed)"
        )
    summary_usage = (run.summary or {}).get("usage") or {}
    logged = (run.metrics[-1].get("usage") or {}) if run.metrics else {}
    # the loop clock runs on after the last metrics row is written, so only the counters must agree
    for key in (u for u in UNITS if u != "seconds"):
        if summary_usage.get(key) != logged.get(key, 0):
            problems.append(
                f"{run.name}: summary.json says {key} = {summary_usage.get(key)!r}, metrics.jsonl adds "
                f"up to {logged.get(key, 0)!r}"
            )


def _allowed(used: dict[str, Any], budget: dict[str, Any], batch: int, final: bool = False) -> bool:
    """The trainer's stopping rule (rlbench.engine.budget), from logged usage: may another step start?"""
    if budget.get("steps") is not None and used["steps"] + 1 > budget["steps"]:
        return False
    if budget.get("samples") is not None and used["samples"] + batch > budget["samples"]:
        return False
    if budget.get("tokens") is not None and used["tokens"] >= budget["tokens"]:
        return False
    # logged seconds are read a moment before the trainer's check; at the end, allow for that moment
    slack = 0.01 * budget["seconds"] if final and budget.get("seconds") is not None else 0.0
    return not (budget.get("seconds") is not None and used["seconds"] + slack >= budget["seconds"])


def check_eval_set(run: RunFiles, eval_set: Any, problems: list[str], config: dict[str, Any] | None = None) -> None:
    """The final evaluation's records are the evaluation set; every scored evaluation has its size, and the
    curve-only ones (``eval.curve_limit``) theirs."""
    if not isinstance(eval_set, dict):
        problems.append(f"{run.name}: fingerprint.json has no eval_set")
        return
    ids = [str(r.get("id")) for r in run.records]
    if len(ids) != eval_set.get("count") or token_hash(ids, 64) != eval_set.get("ids_sha256"):
        problems.append(
            f"{run.name}: the final evaluation's records hold {len(ids)} problems that are not the "
            f"{eval_set.get('count')} of its evaluation set"
        )
    scored, curve = _protocol(config)
    for row in run.evals:
        expected = eval_set.get("count")
        if scored is not None and row.get("step") not in scored and curve is not None:
            expected = min(curve, expected) if isinstance(expected, int) else curve
        if row.get("problems") not in (None, expected):
            problems.append(
                f"{run.name}: eval.jsonl point {row.get('point')} evaluated {row.get('problems')} "
                f"problems, not {expected}"
            )
            break


def _protocol(config: dict[str, Any] | None) -> tuple[set[int] | None, int | None]:
    """The steps of the scored evaluations and the curve-only evaluations' size, from the run's config.yaml."""
    from rlbench.core.config import ConfigError
    from rlbench.core.configure import build_run_config
    from rlbench.run.training import scored_steps

    try:
        built = build_run_config(config) if isinstance(config, dict) else None
    except (ConfigError, TypeError, ValueError):
        built = None
    return (scored_steps(built), built.eval.curve_limit) if built is not None else (None, None)


def _without(tree: dict[str, Any], section: tuple[str, ...], key: str) -> dict[str, Any]:
    """A copy of ``tree`` without ``section...key`` (the original is left alone)."""
    if not section:
        return {k: v for k, v in tree.items() if k != key}
    child = tree.get(section[0])
    if not isinstance(child, dict):
        return tree
    return {**tree, section[0]: _without(child, section[1:], key)}


def _leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, (*prefix, key)))
        else:
            out.append(((*prefix, key), value))
    return out


def _coerced_equal(a: Any, b: Any) -> bool:
    """1e-4 written as a string or an int in a manifest equals the float the run config holds."""
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=0)
    except (TypeError, ValueError):
        return False
