"""LoRA through peft: only the adapters (and PPO's value head) train, the reference is the base model with the
adapters off, the final checkpoint is a merged from_pretrained folder, and a resumed run is the same run bit for bit."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.configure import build_run_config
from rlbench.engine import fastpath
from rlbench.engine.policy import Policy, load_model
from rlbench.run.training import build_trainer

pytest.importorskip("peft")

RANK = 4
# the tiny Qwen2 (hidden 32, MLP 64, 4 heads of 8, 2 KV heads): rank x (in + out) per targeted projection, 2 layers
ADAPTER_PARAMS = 2 * RANK * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 3 * (32 + 64))
ROW_CLOCK = {"time", "gen_tokens_per_s", "train_tokens_per_s", "usage"}  # wall-clock fields of a metrics row


def _config(tiny_qwen_dir, tmp_path, algo: dict, **extra):
    return build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": algo,
            "out": str(tmp_path / "run"),
            "device": "cpu",
            "rollout": {"batch_size": 8, "samples_per_prompt": 2},
            "sampling": {"max_new_tokens": 8},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 1},
            "eval": {"limit": 2, "samples": 0},
            "optim": {"lr": 1e-2},
            "lora": {"rank": RANK},
            **extra,
        }
    )


def _trained_one_step(trainer):
    """One update on a batch with spread rewards, so every algorithm has a non-zero gradient."""
    times: dict[str, float] = {}
    batch, _, _ = trainer.rollout(0, times)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    trainer._fill_logprobs(batch, times)
    trainer.algo.compute_advantages(batch)
    trainer.update(batch, times)
    return batch


def test_only_the_adapters_and_the_value_head_train(tiny_qwen_dir, tmp_path):
    # critic: head, the LoRA-sized critic (the default, critic: model, trains a full copy of the transformer)
    trainer = build_trainer(_config(tiny_qwen_dir, tmp_path, {"name": "ppo", "critic": "head"}), progress=False)
    model, head = trainer.policy.model, trainer.policy.value_head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == ADAPTER_PARAMS
    assert trainer.parameter_counts["trainable"] == ADAPTER_PARAMS + 32 + 1  # + the value head's weight and bias
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad} | {id(p) for p in head.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head_before = head.proj.weight.detach().clone()
    _trained_one_step(trainer)
    for name, p in model.named_parameters():
        if name in trainable:
            if ".lora_B." in name:  # B starts at zero, so every B moves; A's gradient is zero while B is zero
                assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    assert not torch.equal(head.proj.weight, head_before), "the value head did not train"


def test_fast_paths_stay_off_a_peft_model(tiny_qwen_dir, tmp_path):
    trainer = build_trainer(_config(tiny_qwen_dir, tmp_path, {"name": "reinforce"}), progress=False)
    base, _ = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"))
    assert fastpath.supports(base, 64)  # the same model without adapters takes the fast path
    assert not fastpath.supports(trainer.policy.model, 64)


def test_the_reference_is_the_base_model_with_the_adapters_off(tiny_qwen_dir, tmp_path):
    trainer = build_trainer(_config(tiny_qwen_dir, tmp_path, {"name": "grpo", "kl_loss_coef": 0.1}), progress=False)
    assert trainer.reference.model is trainer.policy.model  # no second copy of the weights
    batch = _trained_one_step(trainer)
    base_model, tok = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"))
    base = Policy(base_model, tok, torch.device("cpu"), fast=False)
    with torch.no_grad():
        reference = trainer.reference.forward(batch).logprobs
        expected = base.forward(batch).logprobs
        trained = trainer.policy.forward(batch).logprobs
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-6)
    assert (trained - expected).abs().max() > 1e-4  # the adapters moved: the check above is not vacuous


def test_the_final_checkpoint_is_the_merged_model(tiny_qwen_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = build_trainer(_config(tiny_qwen_dir, tmp_path, {"name": "reinforce"}), progress=False)
    _trained_one_step(trainer)
    path = trainer.save_checkpoint()
    assert not list(path.glob("adapter_*"))  # a plain model folder, not a peft adapter
    merged = AutoModelForCausalLM.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    ids = torch.randint(5, 30, (2, 12))
    with torch.no_grad():
        live, saved, untrained = (m(input_ids=ids).logits for m in (trainer.policy.model, merged, base))
    torch.testing.assert_close(saved, live, rtol=0, atol=1e-5)
    assert (saved - untrained).abs().max() > 1e-3  # the adapters' update is in the saved weights


def _cli(model, out, *extra):
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
            "--set",
            "budget.steps=4",
            "--set",
            "checkpoint_every=2",
            "--set",
            "optim.lr=1e-2",
            # a random model earns no reward: the entropy bonus gives the adapters a gradient; the KL uses the reference
            "--set",
            f"lora.rank={RANK}",
            "--set",
            "algo.kl_loss_coef=0.1",
            "--set",
            "algo.entropy_coef=0.01",
            "--set",
            "device=cpu",
            *extra,
        ],
    )


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ROW_CLOCK} for line in path.read_text().splitlines()]


def test_a_lora_run_resumes_bit_for_bit(tiny_qwen_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from rlbench.engine.trainer import Trainer

    whole = tmp_path / "whole"
    assert _cli(tiny_qwen_dir, whole).exit_code == 0
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["parameters"]["trainable"] == ADAPTER_PARAMS

    save_state = Trainer.save_state

    def save_then_stop(self, evals_done):  # a Ctrl-C right after the state of step 2 is on disk
        save_state(self, evals_done)
        if self.meter.used.steps == 2:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    monkeypatch.setattr(Trainer, "save_state", save_then_stop)
    assert _cli(tiny_qwen_dir, broken).exit_code == 130
    monkeypatch.setattr(Trainer, "save_state", save_state)
    assert json.loads((broken / "summary.json").read_text())["status"] == "interrupted"
    resumed = _cli(tiny_qwen_dir, broken, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _rows(broken / "metrics.jsonl") == _rows(whole / "metrics.jsonl")
    a, b = (load_file(run / "checkpoint" / "model.safetensors") for run in (whole, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(re.search(r"lora_|base_layer", k) for k in a)
    base = load_file(tiny_qwen_dir / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in base)  # it trained: equal runs are not trivially equal
