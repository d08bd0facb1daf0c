"""The audit of a comparison, recomputed from the run folders themselves: were the runs matched, and which was not?

Each run folder holds ``config.yaml``, ``fingerprint.json`` (settings, initial-weights hash, evaluation set; written
by the trainer), ``metrics.jsonl`` (per step: cumulative usage and the hash of the step's prompt token ids),
``summary.json`` and ``eval_records.jsonl``. The audit checks, and blames the run that breaks it:

* each run against itself: its files agree with each other, its steps are 1..N with every usage increment what one
  batch produces, and it stopped exactly where the budget rule says;
* each run against the manifest: its algorithm and options are its row's, its seed its folder's, the shared
  settings those the manifest names;
* runs against each other: the same settings, initial weights and evaluation set, and per seed the same prompt
  stream (for ``tokens``/``seconds`` budgets, where runs legitimately stop at different steps: prefixes of one).

Where runs disagree, the value most runs share (or the manifest's) is taken as right and the others are blamed.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import yaml

from rlbench.config import TRACKING_KEYS, first_difference, parse_yaml, value_at
from rlbench.engine.budget import UNITS
from rlbench.report.inputs import ComparisonFiles, RunFiles
from rlbench.report.runs import usage
from rlbench.results import CONFIG, FINGERPRINT, token_hash

# what may differ between the runs of one comparison (trackers, TRACKING_KEYS, are not in a run's fingerprint)
SHARED_EXCLUDED = ("algo", "seed", "out", *TRACKING_KEYS)
PER_ROW = (("rollout", "sample_stream"),)  # the A/A control's own stream


def audit_comparison(comp: ComparisonFiles) -> dict[str, Any]:
    rows = {r.get("label"): r for r in comp.manifest.get("rows") or [] if isinstance(r, dict)}
    budget = comp.manifest.get("budget") if isinstance(comp.manifest.get("budget"), dict) else {}
    blame: dict[str, list[str]] = {run.name: [] for run in comp.runs}
    settings = {label: _row_settings(row) for label, row in rows.items()}
    varied = sorted({path for own in settings.values() for path in own})  # settings some row sets for itself
    facts = {run.name: _facts(run, blame[run.name], varied) for run in comp.runs}
    for run in comp.runs:
        f = facts[run.name]
        if f is not None:
            _check_own(run, f, rows.get(run.algo), budget, comp.manifest, blame[run.name])
            _check_settings(run, f["config"], settings.get(run.algo, {}), blame[run.name])
    present = [run for run in comp.runs if facts[run.name] is not None]
    for field in ("shared config", "init_weights", "eval_set"):
        _majority(field, {run.name: facts[run.name][field] for run in present}, blame)
    for path in varied:  # the rows that leave a setting alone share its value
        _majority(".".join(path), {run.name: value_at(facts[run.name]["config"], path) for run in present
                                   if path not in settings.get(run.algo, {})}, blame)
    for seed in sorted({run.seed for run in present}):
        chains = {run.name: facts[run.name]["prompts"] for run in present if run.seed == seed}
        _prompt_streams(seed, chains, budget, blame)
    problems = [p for run in comp.runs for p in blame[run.name]]
    runs = {run.name: {"algo": run.algo, "seed": run.seed, "status": run.status,
                       **{k: usage(run).get(k) for k in UNITS},
                       "matched": not blame[run.name], "problems": blame[run.name]} for run in comp.runs}
    return {"matched": not problems, "runs": runs, "problems": problems}


# ------------------------------------------------------------------------------------------------ one run


def _row_settings(row: Any) -> dict[tuple[str, ...], Any]:
    """A manifest row's own run settings (``optim.lr`` chosen by tuning or set on the row), by key path; the
    algorithm's options are checked through the row's resolved algorithm instead."""
    own = row.get("settings") if isinstance(row, dict) and isinstance(row.get("settings"), dict) else {}
    return {tuple(str(k).split(".")): v for k, v in own.items() if not str(k).startswith("algo.")}


def _check_settings(run: RunFiles, config: dict[str, Any], own: dict[tuple[str, ...], Any],
                    problems: list[str]) -> None:
    for path, value in own.items():
        actual = value_at(config, path)
        if actual != value and not _coerced_equal(actual, value):
            problems.append(f"{run.name}: {'.'.join(path)} = {actual!r}, but its row {run.algo} runs {value!r}")


def _facts(run: RunFiles, problems: list[str], varied: list[tuple[str, ...]] = ()) -> dict[str, Any] | None:
    """The audited facts of one run, or None (with the reason) when its files cannot be read."""
    if run.status != "completed":
        problems.append(f"{run.name}: status {run.status}")
        return None
    try:
        config = parse_yaml((run.path / CONFIG).read_text(encoding="utf-8"))
        fingerprint = json.loads((run.path / FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{run.name}: {getattr(exc, 'filename', None) or 'config.yaml/fingerprint.json'} "
                        f"unreadable or missing ({type(exc).__name__})")
        return None
    if not isinstance(config, dict) or not isinstance(fingerprint, dict):
        problems.append(f"{run.name}: config.yaml or fingerprint.json is not a mapping")
        return None
    shared = {k: v for k, v in config.items() if k not in SHARED_EXCLUDED}
    for *section, key in [*PER_ROW, *varied]:
        shared = _without(shared, tuple(section), key)
    return {"config": config, "fingerprint": fingerprint, "shared config": shared,
            "init_weights": fingerprint.get("init_weights"), "eval_set": fingerprint.get("eval_set"),
            "prompts": [row.get("prompt_ids_hash") for row in run.metrics]}


def _check_own(run: RunFiles, f: dict[str, Any], row: dict[str, Any] | None, budget: dict[str, Any],
               manifest: dict[str, Any], problems: list[str]) -> None:
    config, fp = f["config"], f["fingerprint"]
    say = problems.append
    own = {k: v for k, v in config.items() if k not in SHARED_EXCLUDED}
    if fp.get("config") != own:
        say(f"{run.name}: config.yaml {first_difference(fp.get('config'), own)} differs from fingerprint.json")
    if fp.get("algo") != config.get("algo") or fp.get("seed") != config.get("seed"):
        say(f"{run.name}: algo or seed in config.yaml differs from fingerprint.json")
    if config.get("seed") != run.seed:
        say(f"{run.name}: seed {config.get('seed')!r} in config.yaml, but the folder is seed {run.seed}")
    expected_algo = row.get("resolved") if row else {"name": run.algo}
    algo = config.get("algo") if isinstance(config.get("algo"), dict) else {}
    for key, value in (expected_algo or {}).items():
        if algo.get(key) != value:
            say(f"{run.name}: algo.{key} = {algo.get(key)!r}, but its row {run.algo} runs {value!r}")
    stream = (config.get("rollout") or {}).get("sample_stream", 0)
    if stream != (1 if row and row.get("control") else 0):
        say(f"{run.name}: rollout.sample_stream = {stream!r} does not fit its row")
    own = _row_settings(row)
    for path, value in _leaves(manifest.get("config") if isinstance(manifest.get("config"), dict) else {}):
        actual = value_at(config, path)
        if path in own:
            continue  # its row sets it (checked against the row)
        if path[0] not in SHARED_EXCLUDED and actual != value and not _coerced_equal(actual, value):
            say(f"{run.name}: {'.'.join(path)} = {actual!r}, but the manifest says {value!r}")
    _check_steps(run, config, f["prompts"], budget, problems)
    _check_eval_set(run, fp.get("eval_set"), problems)


def _check_steps(run: RunFiles, config: dict[str, Any], prompts: list[Any], budget: dict[str, Any],
                 problems: list[str]) -> None:
    batch = (config.get("rollout") or {}).get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        problems.append(f"{run.name}: config.yaml has no rollout.batch_size")
        return
    steps = [row.get("step") for row in run.metrics]
    if steps != list(range(1, len(steps) + 1)):
        gap = next((i + 1 for i, s in enumerate(steps) if s != i + 1), len(steps))
        problems.append(f"{run.name}: metrics.jsonl steps are not 1..{len(steps)} "
                        f"(line {gap} is step {steps[gap - 1]!r})")
        return
    if any(not isinstance(p, str) or not p for p in prompts):
        line = next(i + 1 for i, p in enumerate(prompts) if not isinstance(p, str) or not p)
        problems.append(f"{run.name}: metrics.jsonl line {line} has no prompt hash")
    before = dict.fromkeys(UNITS, 0)
    for row in run.metrics:
        used = row.get("usage") or {}
        step, tokens = row["step"], used.get("tokens", 0) - before["tokens"]
        if not _allowed(before, budget, batch):
            problems.append(f"{run.name}: step {step} was taken after the budget was spent")
            break
        if used.get("samples", 0) - before["samples"] != batch or used.get("steps") != step:
            problems.append(f"{run.name}: step {step} usage does not add one batch of {batch} samples")
            break
        length = row.get("length_mean")
        if not isinstance(length, (int, float)) or abs(tokens - length * batch) > 0.5 + 1e-9 * abs(tokens):
            problems.append(f"{run.name}: step {step} counts {tokens} tokens, but {batch} completions of mean length "
                            f"{length} make {length * batch if isinstance(length, (int, float)) else '?'}")
            break
        before = {k: used.get(k, 0) for k in before}
    if run.metrics and _allowed(before, budget, batch, final=True):
        problems.append(f"{run.name}: stopped at step {before['steps']} with budget left (another step was allowed)")
    summary_usage = (run.summary or {}).get("usage") or {}
    logged = (run.metrics[-1].get("usage") or {}) if run.metrics else {}
    # the loop clock runs on after the last metrics row is written, so only the counters must agree
    for key in (u for u in UNITS if u != "seconds"):
        if summary_usage.get(key) != logged.get(key, 0):
            problems.append(f"{run.name}: summary.json says {key} = {summary_usage.get(key)!r}, metrics.jsonl adds "
                            f"up to {logged.get(key, 0)!r}")


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


def _check_eval_set(run: RunFiles, eval_set: Any, problems: list[str]) -> None:
    if not isinstance(eval_set, dict):
        problems.append(f"{run.name}: fingerprint.json has no eval_set")
        return
    ids = [str(r.get("id")) for r in run.records]
    if len(ids) != eval_set.get("count") or token_hash(ids, 64) != eval_set.get("ids_sha256"):
        problems.append(f"{run.name}: eval_records.jsonl holds {len(ids)} problems that are not the "
                        f"{eval_set.get('count')} of its evaluation set")
    for row in run.evals:
        if row.get("problems") not in (None, eval_set.get("count")):
            problems.append(f"{run.name}: eval.jsonl point {row.get('point')} evaluated {row.get('problems')} "
                            f"problems, not {eval_set.get('count')}")
            break


# ------------------------------------------------------------------------------------------------ across runs


def _majority(field: str, values: dict[str, Any], blame: dict[str, list[str]]) -> None:
    """Blame the runs whose ``field`` differs from the value most runs share (all of them on a tie)."""
    if len(values) < 2:
        return
    keys = {name: json.dumps(v, sort_keys=True) for name, v in values.items()}
    counts = Counter(keys.values()).most_common()
    top = counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None
    for name, key in keys.items():
        if key != top and len(counts) > 1:
            other = next(n for n, k in keys.items() if k != key)
            where = first_difference(values[name], values[other]) if field == "shared config" else field
            blame[name].append(f"{name}: {where} differs from the other runs'" if top else
                               f"{name}: {where} differs ({len(counts)} different values, no majority)")


def _prompt_streams(seed: int, chains: dict[str, list[Any]], budget: dict[str, Any],
                    blame: dict[str, list[str]]) -> None:
    """Per seed, one prompt stream: equal for samples/steps budgets, prefixes of one for tokens/seconds."""
    exact = budget.get("tokens") is None and budget.get("seconds") is None

    def fits(a: list[Any], b: list[Any]) -> bool:
        return a == b if exact else a[: len(b)] == b[: len(a)]

    support = {n: sum(fits(c, other) for other in chains.values()) for n, c in chains.items()}
    if not support or min(support.values()) == len(chains):
        return
    best = max(support.values())
    leaders = [n for n in chains if support[n] == best]
    agreed = all(fits(chains[a], chains[b]) for a in leaders for b in leaders)  # else no stream has a majority
    for name, chain in chains.items():
        if agreed and fits(chain, chains[leaders[0]]):
            continue
        other = chains[leaders[0]] if name != leaders[0] else chains[next(n for n in chains if n != name)]
        step = next((i + 1 for i, (a, b) in enumerate(zip(chain, other)) if a != b), None)
        blame[name].append(f"{name}: its prompts differ from the other seed-{seed} runs'"
                           + (f" from step {step} on" if step else f" ({len(chain)} steps, not {len(other)})")
                           + ("" if agreed else " (no stream has a majority)"))


# ------------------------------------------------------------------------------------------------ helpers


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
