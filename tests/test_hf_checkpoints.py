"""Periodic Hugging Face checkpoints: checkpoint-N/ every checkpoint_every steps, the newest keep_checkpoints kept, each
loadable with from_pretrained (model and tokenizer)."""

from __future__ import annotations

import re

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from rlbench.cli import main

PROGRESS_BAR = re.compile(r"\d+%\|")


def _train(model, out, *extra):
    return CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(model),
            "--out",
            str(out),
            "--algo",
            "em-pg",
            "--quiet",
            "--set",
            "device=cpu",
            "--set",
            "rollout.batch_size=8",
            "--set",
            "rollout.samples_per_prompt=2",
            "--set",
            "sampling.max_new_tokens=8",
            "--set",
            "eval.limit=2",
            "--set",
            "eval.samples=0",
            "--set",
            "task.train_size=40",
            "--set",
            "task.test_size=8",
            # a random model earns no reward: the entropy bonus makes every step change the weights
            "--set",
            "optim.lr=1e-2",
            "--set",
            "algo.entropy_coef=0.01",
            *extra,
        ],
    )


def test_the_last_k_checkpoints_are_kept_and_load_like_hub_models(tiny_qwen_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    result = _train(
        tiny_qwen_dir, out, "--set", "budget.steps=4", "--set", "checkpoint_every=1", "--set", "keep_checkpoints=2"
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint", "checkpoint-3", "checkpoint-4"]
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))
    for name in ("checkpoint-3", "checkpoint-4"):
        model = AutoModelForCausalLM.from_pretrained(out / name)
        tokenizer = AutoTokenizer.from_pretrained(out / name)
        ids = torch.tensor([tokenizer("1+2=")["input_ids"]])
        assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    three, four, final = (
        load_file(out / name / "model.safetensors") for name in ("checkpoint-3", "checkpoint-4", "checkpoint")
    )
    assert all(torch.equal(four[k], final[k]) for k in final)  # the last step's checkpoint is the final model
    assert any(not torch.equal(three[k], four[k]) for k in four)  # and step 3's is an earlier one


def test_keep_checkpoints_0_writes_none(tiny_qwen_dir, tmp_path):
    out = tmp_path / "run"
    result = _train(tiny_qwen_dir, out, "--set", "budget.steps=2", "--set", "checkpoint_every=1")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.glob("checkpoint*")] == ["checkpoint"]


def test_keep_checkpoints_needs_checkpoint_every(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--out", str(tmp_path / "run"), "--set", "checkpoint_every=0", "--set", "keep_checkpoints=2"]
    )
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.exit_code == 2 and len(lines) == 1 and "keep_checkpoints=2: needs checkpoint_every > 0" in lines[0]
