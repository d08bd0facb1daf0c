"""`rlbench plan`'s arithmetic against memory measured on the CPU: the tiny lab's model trained by PPO (a critic of its
own), its resident, generation and update terms each within 15% of the tensors alive (tests/memory_helpers.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from memory_helpers import LiveBytes

from rlbench.core.config import TinyConfig
from rlbench.core.configure import build_run_config
from rlbench.run.plan import CUDA_OVERHEAD, plan_run
from rlbench.run.tiny.model import build_tiny_model
from rlbench.run.tiny.tokenizer import build_char_tokenizer
from rlbench.run.training import build_trainer

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def tiny_lab_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    path = tmp_path_factory.mktemp("tiny-lab")
    build_tiny_model(TinyConfig(), tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _resident(plan) -> float:
    return sum(t.bytes for t in plan.terms if t.phase == "resident")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_terms_match_the_measured_peaks(checkpointing, tiny_lab_dir, tmp_path):
    config = build_run_config(
        {
            "model": str(tiny_lab_dir),
            "algo": {"name": "ppo"},
            "out": str(tmp_path / "run"),
            "threads": 1,
            "gradient_checkpointing": checkpointing,
            "rollout": {"batch_size": 32, "samples_per_prompt": 4, "micro_batch_size": 8, "generation_batch_size": 32},
            "sampling": {"max_new_tokens": 64},
            "task": {"name": "arith", "train_size": 64, "test_size": 8},
            "budget": {"steps": 2},
            "eval": {"limit": 2, "samples": 0, "every": 0},
        }
    )
    trainer = build_trainer(config, progress=False)
    # the plan budgets every row at full length through the model's own forward, as FSDP and checkpointing run it
    # (the packed fast path, when on, needs less); so does this measurement
    trainer.policy.fast = trainer.policy.share_prompts = False
    trainer.out.mkdir(parents=True)
    trainer.step()  # AdamW's states exist from the first optimiser step on
    trainer.optimizer.zero_grad(set_to_none=True)
    with LiveBytes() as meter:
        meter.hold(
            [
                *trainer.policy.parameters(),
                *(t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)),
            ]
        )
        resident = meter.now
        batch, _, _ = trainer.rollout(1, {})
        generate = meter.peak
        trainer._fill_logprobs(batch, {})
        trainer.algo.compute_advantages(batch)
        meter.reset_peak()
        trainer.update(batch, {})
        update = meter.peak
    # the plan of the batch this step drew: its prompt and completion lengths
    drawn = copy.deepcopy(config)
    drawn.sampling.max_new_tokens = batch.response_mask.shape[1]
    drawn._algorithm = config.algorithm
    plan = plan_run(drawn, batch.prompt_len, 80.0)
    assert {"critic (model)", "critic activations", "critic gradients"} <= {t.name for t in plan.terms}
    for name, measured, planned in (
        ("resident", resident, _resident(plan)),
        ("generate", generate, plan.total("generate") - CUDA_OVERHEAD),
        ("update", update, plan.total("update") - CUDA_OVERHEAD),
    ):
        assert planned == pytest.approx(measured, rel=TOLERANCE), (name, measured, planned)
