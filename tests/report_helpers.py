"""Synthetic comparison folders shaped like ``rlbench compare`` output, small and deterministic (no training).

Every number in them is what the trainer would have written for the completions they hold: the completions are real
arith problems' worked solutions, right or wrong at random, graded by the arith task; each evaluation's row in
eval.jsonl is ``summarize`` of its records; usage adds up; summary.json hashes the other files. So an untouched
folder passes the audit, and any edit is something the audit must find.
"""

from __future__ import annotations

import json
import random
import statistics
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from rlbench.tasks.base import Example

from rlbench.core.configure import build_task
from rlbench.core.results import EVAL_RECORDS, read_records, record_points, records_path, token_hash, write_records
from rlbench.engine.file_hashes import file_hashes
from rlbench.run.eval.metrics import Scored, summarize

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40}
COMMAND = "rlbench compare --task arith --algos em-pg,grpo,ppo,reinforce --seeds 1,2,3 --budget samples=96 --out X"


@cache
def arith() -> Any:
    """The arith task at its defaults, as the helper's runs' config.yaml names it."""
    return build_task({"name": "arith"})


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def graded(example: Example, ok: bool, tokens: int, text: str | None = None) -> dict[str, Any]:
    """A completion of ``example`` that is right (``ok``) or off by one, with the grade the arith task gives it;
    ``text`` replaces the worked steps before the final ``#### answer``."""
    steps = text if text is not None else example.solution.rsplit("####", 1)[0].rstrip()
    completion = f"{steps} #### {int(example.answer) + (0 if ok else 1)}"
    return Scored(completion, tokens, False, arith().grade(completion, example)).record()


def rollout(step: int, example: Example, ok: bool, text: str | None = None) -> dict[str, Any]:
    """A samples.jsonl row as the trainer logs it."""
    item = graded(example, ok, 9, text)
    return {
        "step": step,
        "id": example.id,
        "prompt": arith().prompt(example),
        "completion": item["completion"],
        "reward": item["reward"],
        "reason": item["reason"],
    }


def seal(run: Path) -> None:
    """Record the hashes of the run's files in its summary.json, as the trainer does when a run finishes."""
    summary = json.loads((run / "summary.json").read_text())
    summary["files"] = file_hashes(run)
    (run / "summary.json").write_text(json.dumps(summary))


def final_records(run: Path) -> list[dict[str, Any]]:
    """The records of a run's final evaluation (either layout)."""
    points = record_points(run)
    if points:
        return read_records(points[max(points)])
    return [json.loads(line) for line in (run / EVAL_RECORDS).read_text().splitlines()]


def make_comparison(
    root: Path,
    skill: dict[str, float],
    seeds: tuple[int, ...] = (1, 2, 3),
    task: str = "arith",
    problems: int = 30,
    samples: int = 2,
    steps: int = 6,
    points: int = 3,
    batch: int = 16,
    texts: dict[str, str] | None = None,
    twin: dict[str, str] | None = None,
    rollouts: int = 0,
    final_mean_of: int = 1,
    legacy: bool = False,
) -> Path:
    """Write manifest.json, audit.json and runs/<algo>-s<seed>/* for algorithms whose P(correct) is ``skill[algo]``.

    ``twin`` maps an algorithm to another whose per-problem results it copies exactly (an identical algorithm).
    ``texts`` gives an algorithm's worked steps (default: the problem's own). ``rollouts`` training rollouts per step
    go to samples.jsonl; a run's score is the mean of its last ``final_mean_of`` evaluations. ``legacy``: a run folder as written before every evaluation kept its records (the final
    evaluation's in eval_records.jsonl, no file hashes in summary.json).
    """
    algos = list(skill)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": COMMAND.replace("arith", task),
        "task": task,
        "model": "tiny",
        "algos": algos,
        "seeds": list(seeds),
        "budget": {"samples": steps * batch, "tokens": None, "steps": None, "seconds": None},
        "config": {"sampling": SAMPLING},
        "code_version": "abc123",
        "packages": {"torch": "2.4"},
        "machine": {"cpus": 2},
        "created": "2025-01-01T00:00:00+00:00",
        "eval": {
            "split": "test",
            "problems": problems,
            "samples": samples,
            "greedy": True,
            "points": points,
            "final_mean_of": final_mean_of,
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    audit_runs = {}
    shape = dict(
        problems=problems,
        samples=samples,
        steps=steps,
        points=points,
        batch=batch,
        rollouts=rollouts,
        final_mean_of=final_mean_of,
        legacy=legacy,
    )
    for algo in algos:
        for seed in seeds:
            name = f"{algo}-s{seed}"
            source = (twin or {}).get(algo, algo)
            run = root / "runs" / name
            run.mkdir(parents=True)
            _write_config(run, algo, seed, manifest["budget"], problems, samples, batch, final_mean_of)
            usage = _write_run(run, algo, source, seed, skill[source], (texts or {}).get(algo), **shape)
            if not legacy:
                seal(run)
            audit_runs[name] = {
                "algo": algo,
                "seed": seed,
                "status": "completed",
                **usage,
                "prompt_hash": f"hash{seed}",
                "batch_size": batch,
            }
    (root / "audit.json").write_text(json.dumps({"matched": True, "runs": audit_runs, "problems": []}))
    return root


def _records(
    source: str, seed: int, point: int, final: bool, skill: float, problems: int, samples: int, text: str | None
) -> list[dict[str, Any]]:
    # the final evaluation draws from the run's own stream, so a twin's copies its source's exactly
    rng = random.Random(f"{source}/{seed}" if final else f"{source}/{seed}/{point}")
    out = []
    for i, example in enumerate(arith().load("test")[:problems]):
        greedy_ok = rng.random() < skill
        oks = [rng.random() < skill for _ in range(samples)]
        out.append(
            {
                "id": example.id,
                "greedy": graded(example, greedy_ok, 8 + i % 3, text),
                "samples": [graded(example, ok, 9, text) for ok in oks],
            }
        )
    return out


def _write_run(
    run: Path,
    algo: str,
    source: str,
    seed: int,
    skill: float,
    text: str | None,
    *,
    problems: int,
    samples: int,
    steps: int,
    points: int,
    batch: int,
    rollouts: int,
    final_mean_of: int,
    legacy: bool,
) -> dict[str, Any]:
    metrics, tokens, seconds, logged = [], 0, 0.0, []
    # runs of one seed see one prompt stream but spend different tokens (here: one more per step for even-length
    # names), as real runs do at every step; small enough that a 1,000-token budget still ends every run at step 5
    extra = (1 - len(source) % 2) / batch
    train = arith().load("train") if rollouts else []
    rng = random.Random(f"{source}/{seed}/rollouts")
    for step in range(1, steps + 1):
        length = 10.0 + step + seed + extra
        tokens += round(batch * length)
        seconds += 2.0
        metrics.append(
            {
                "step": step,
                "reward_mean": skill,
                "accuracy": skill,
                "length_mean": length,
                "prompt_ids_hash": token_hash([seed, step]),
                "time": {"generate": 1.0, "grade": 0.1, "logprobs": 0.2, "update": 0.5, "sync": 0.05},
                "gen_tokens_per_s": batch * 10.0,
                "usage": {
                    "prompts": step * batch // 2,
                    "samples": step * batch,
                    "tokens": tokens,
                    "steps": step,
                    "seconds": seconds,
                },
            }
        )
        logged += [
            rollout(step, train[(seed * 1000 + step * rollouts + i) % len(train)], rng.random() < skill)
            for i in range(rollouts)
        ]
    _write_jsonl(run / "metrics.jsonl", metrics)
    if rollouts:
        _write_jsonl(run / "samples.jsonl", logged)
    evals = []
    for point in range(points + 1):
        frac = point / points
        k = round(frac * steps)
        used = metrics[k - 1]["usage"] if k else {"prompts": 0, "samples": 0, "tokens": 0, "steps": 0, "seconds": 0.0}
        records = _records(source, seed, point, point == points, 0.1 + frac * (skill - 0.1), problems, samples, text)
        if legacy and point == points:
            _write_jsonl(run / EVAL_RECORDS, records)
        elif not legacy:
            write_records(records_path(run, point), [{"point": point, "step": k, **r} for r in records])
        row = summarize(records, ks=range(1, samples + 1), temperature=1.0, top_p=1.0)
        evals.append({"point": point, "step": k, "usage": used, **row})
    _write_jsonl(run / "eval.jsonl", evals)
    usage = metrics[-1]["usage"]
    final = {m: evals[-1][m]["accuracy"] for m in ("greedy", "sampled")}
    scored = evals[1:][-final_mean_of:]
    (run / "summary.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "stop_reason": "samples",
                "algo": algo,
                "task": "arith",
                "seed": seed,
                "usage": usage,
                "wall_seconds": seconds + 5.0,
                "initial": {m: evals[0][m]["accuracy"] for m in ("greedy", "sampled")},
                "final": final,
                "score": {m: statistics.fmean(row[m]["accuracy"] for row in scored) for m in final},
                "score_steps": [row["step"] for row in scored],
                "final_length": evals[-1]["sampled"]["length_mean"],
            }
        )
    )
    return {k: usage[k] for k in ("samples", "tokens", "steps", "seconds")}


def _write_config(
    run: Path, algo: str, seed: int, budget: dict[str, Any], problems: int, samples: int, batch: int, final_mean_of: int
) -> None:
    """config.yaml and fingerprint.json as the trainer writes them, so that the audit finds the runs matched."""
    config = {
        "model": "tiny",
        "algo": {"name": algo},
        "task": {"name": "arith"},
        "seed": seed,
        "out": str(run),
        "rollout": {"batch_size": batch, "samples_per_prompt": 2, "sample_stream": 0},
        "sampling": SAMPLING,
        "optim": {"lr": 1e-4},
        "budget": budget,
        "eval": {"limit": problems, "samples": samples, "final_mean_of": final_mean_of},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ids = [e.id for e in arith().load("test")[:problems]]
    fingerprint = {
        "config": {k: v for k, v in config.items() if k not in ("algo", "seed", "out")},
        "algo": config["algo"],
        "seed": seed,
        "init_weights": "w0",
        "eval_set": {"count": problems, "ids_sha256": token_hash(ids, 64), "prompts_sha256": "p0"},
    }
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
