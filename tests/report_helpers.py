"""Synthetic comparison folders shaped like ``rlbench compare`` output, small and deterministic (no training)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from rlbench.results import token_hash

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40}
COMMAND = "rlbench compare --task arith --algos em-pg,grpo,ppo,reinforce --seeds 1,2,3 --budget samples=96 --out X"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_comparison(root: Path, skill: dict[str, float], seeds: tuple[int, ...] = (1, 2, 3), task: str = "arith",
                    problems: int = 30, samples: int = 2, steps: int = 6, points: int = 3, batch: int = 16,
                    texts: dict[str, str] | None = None, twin: dict[str, str] | None = None) -> Path:
    """Write manifest.json, audit.json and runs/<algo>-s<seed>/* for algorithms whose P(correct) is ``skill[algo]``.

    ``twin`` maps an algorithm to another whose per-problem results it copies exactly (an identical algorithm).
    ``texts`` gives an algorithm's completion text (default: tiny-lab-like arithmetic).
    """
    algos = list(skill)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": COMMAND.replace("arith", task), "task": task, "model": "tiny", "algos": algos, "seeds": list(seeds),
        "budget": {"samples": steps * batch, "tokens": None, "steps": None, "seconds": None},
        "config": {"sampling": SAMPLING},
        "code_version": "abc123", "packages": {"torch": "2.4"}, "machine": {"cpus": 2},
        "created": "2025-01-01T00:00:00+00:00",
        "eval": {"split": "test", "problems": problems, "samples": samples, "greedy": True, "points": points},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    audit_runs = {}
    for algo in algos:
        for seed in seeds:
            name = f"{algo}-s{seed}"
            source = (twin or {}).get(algo, algo)
            run = root / "runs" / name
            run.mkdir(parents=True)
            usage = _write_run(run, algo, source, seed, skill[source], problems, samples, steps, points, batch,
                               (texts or {}).get(algo))
            _write_config(run, algo, seed, manifest["budget"], problems, samples, batch)
            audit_runs[name] = {"algo": algo, "seed": seed, "status": "completed", **usage,
                                "prompt_hash": f"hash{seed}", "batch_size": batch}
    (root / "audit.json").write_text(json.dumps({"matched": True, "runs": audit_runs, "problems": []}))
    return root


def _write_run(run: Path, algo: str, source: str, seed: int, skill: float, problems: int, samples: int, steps: int,
               points: int, batch: int, text: str | None) -> dict[str, Any]:
    rng = random.Random(f"{source}/{seed}")
    records = []
    for i in range(problems):
        greedy_ok = rng.random() < skill
        oks = [rng.random() < skill for _ in range(samples)]
        completion = text or " 3+4=7 #### 7"
        records.append({
            "id": f"arith-test-{i}",
            "greedy": {"completion": completion, "reward": float(greedy_ok), "correct": greedy_ok,
                       "reason": "correct" if greedy_ok else "wrong", "tokens": 8 + i % 3},
            "samples": [{"completion": completion, "reward": float(ok), "correct": ok,
                         "reason": "correct" if ok else "wrong", "tokens": 9} for ok in oks],
        })
    _write_jsonl(run / "eval_records.jsonl", records)
    greedy_acc = sum(r["greedy"]["reason"] == "correct" for r in records) / problems
    sampled_acc = sum(s["reason"] == "correct" for r in records for s in r["samples"]) / (problems * samples)
    metrics, tokens, seconds = [], 0, 0.0
    for step in range(1, steps + 1):
        tokens += batch * (10 + step + seed)
        seconds += 2.0
        metrics.append({
            "step": step, "reward_mean": skill, "accuracy": skill, "length_mean": 10.0 + step + seed,
            "prompt_ids_hash": token_hash([seed, step]),
            "time": {"generate": 1.0, "grade": 0.1, "logprobs": 0.2, "update": 0.5, "sync": 0.05},
            "gen_tokens_per_s": batch * 10.0, "usage": {"prompts": step * batch // 2, "samples": step * batch,
                                                        "tokens": tokens, "steps": step, "seconds": seconds},
        })
    _write_jsonl(run / "metrics.jsonl", metrics)
    evals = []
    for point in range(points + 1):
        frac = point / points
        k = round(frac * steps)
        used = metrics[k - 1]["usage"] if k else {"prompts": 0, "samples": 0, "tokens": 0, "steps": 0, "seconds": 0.0}
        evals.append({
            "point": point, "step": k, "usage": used, "problems": problems,
            "greedy": {"accuracy": 0.1 + frac * (greedy_acc - 0.1), "reasons": {}, "length_mean": 9.0,
                       "length_correct": 8.5, "length_wrong": 9.5, "truncated_frac": 0.0},
            "sampled": {"k": samples, "accuracy": 0.1 + frac * (sampled_acc - 0.1), "length_mean": 9.0,
                        "length_correct": 8.5, "length_wrong": 9.5, "truncated_frac": 0.0},
        })
    _write_jsonl(run / "eval.jsonl", evals)
    usage = metrics[-1]["usage"]
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "stop_reason": "samples", "algo": algo, "task": "arith", "seed": seed, "usage": usage,
        "wall_seconds": seconds + 5.0, "initial": {"greedy": 0.1, "sampled": 0.1},
        "final": {"greedy": greedy_acc, "sampled": sampled_acc}, "final_length": 9.0,
    }))
    return {k: usage[k] for k in ("samples", "tokens", "steps", "seconds")}


def _write_config(run: Path, algo: str, seed: int, budget: dict[str, Any], problems: int, samples: int,
                  batch: int) -> None:
    """config.yaml and fingerprint.json as the trainer writes them, so that the audit finds the runs matched."""
    config = {"model": "tiny", "algo": {"name": algo}, "task": {"name": "arith"}, "seed": seed, "out": str(run),
              "rollout": {"batch_size": batch, "samples_per_prompt": 2, "sample_stream": 0}, "sampling": SAMPLING,
              "optim": {"lr": 1e-4}, "budget": budget, "eval": {"limit": problems, "samples": samples}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ids = [f"arith-test-{i}" for i in range(problems)]
    fingerprint = {"config": {k: v for k, v in config.items() if k not in ("algo", "seed", "out")},
                   "algo": config["algo"], "seed": seed, "init_weights": "w0",
                   "eval_set": {"count": problems, "ids_sha256": token_hash(ids, 64), "prompts_sha256": "p0"}}
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
