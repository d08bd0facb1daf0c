"""The evaluation protocol of a run: which evaluations enter the score, the cheaper curve-only ones, and common random
numbers across runs (a problem's j-th sample draws the same uniforms whatever the batch, chunking or subset)."""

from __future__ import annotations

import pytest
import torch
from rlbench.tasks.arith import Arith

from rlbench.core.config import ConfigError
from rlbench.core.configure import build_run_config
from rlbench.engine.decoder import Decoder
from rlbench.engine.policy import Policy
from rlbench.run.eval.evaluate import evaluate
from rlbench.run.training import RunEvaluator, scored_steps


def _config(**eval_settings):
    return build_run_config(
        {
            "task": {"name": "arith"},
            "budget": {"samples": 640},
            "rollout": {"batch_size": 64},
            "eval": {"every": 3, "final_mean_of": 2, **eval_settings},
        }
    )


def test_the_scored_steps_are_the_last_k_evaluations_after_training_started():
    assert scored_steps(_config()) == {9, 10}  # evaluations at 3, 6, 9 and the end (10 steps of 64 samples)
    assert scored_steps(_config(final_mean_of=1)) == {10}
    assert scored_steps(build_run_config({"task": {"name": "arith"}, "budget": {"tokens": 5000}})) is None


def test_curve_evaluations_are_smaller_and_scored_ones_full(tiny_qwen_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _config(limit=12, samples=4, curve_limit=5, curve_samples=0)
    evaluator = RunEvaluator(config, Arith())
    policy = Policy(
        AutoModelForCausalLM.from_pretrained(tiny_qwen_dir),
        AutoTokenizer.from_pretrained(tiny_qwen_dir),
        torch.device("cpu"),
        precision="fp32",
    )
    curve = evaluator(Decoder(policy), step=3)
    scored = evaluator(Decoder(policy), step=10)
    assert curve["problems"] == 5 and "sampled" not in curve and len(curve["records"]) == 5
    assert scored["problems"] == 12 and scored["sampled"]["k"] == 4 and len(scored["records"]) == 12


def test_a_problems_samples_do_not_depend_on_the_other_problems_in_the_evaluation(tiny_qwen_dir):
    """Per-problem seeds: a subset, another batch size and chunking give every shared (problem, j) the same text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = Policy(
        AutoModelForCausalLM.from_pretrained(tiny_qwen_dir),
        AutoTokenizer.from_pretrained(tiny_qwen_dir),
        torch.device("cpu"),
        precision="fp32",
    )
    task = Arith()
    problems = task.load("test")[:10]
    settings = dict(max_new_tokens=12, samples=4, greedy=False, seed=5, keep_records=True)
    whole = evaluate(Decoder(policy, batch_size=40), task, problems, **settings)["records"]
    part = evaluate(Decoder(policy, batch_size=7), task, problems[3:6], **settings)["records"]
    chunked = evaluate(Decoder(policy), task, problems, chunk_size=3, **settings)["records"]
    texts = lambda rec: [s["completion"] for s in rec["samples"]]  # noqa: E731
    assert [texts(r) for r in part] == [texts(r) for r in whole[3:6]]
    assert [texts(r) for r in chunked] == [texts(r) for r in whole]
    other = evaluate(Decoder(policy), task, problems, **{**settings, "seed": 6})["records"]
    assert [texts(r) for r in other] != [texts(r) for r in whole]


def test_curve_settings_are_checked():
    with pytest.raises(ConfigError, match="eval.curve_limit"):
        _config(limit=10, curve_limit=20)
    with pytest.raises(ConfigError, match="eval.rank_by"):
        _config(samples=0, rank_by="sampled")
