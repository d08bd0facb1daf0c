"""The shared maths of algorithms/base.py, the registry of algorithms, and option validation."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
from algo_helpers import close, make_batch, policy_output
from rlbench.algorithms import base
from rlbench.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    agg_loss,
    clipped_pg_loss,
    gae,
    masked_mean,
    outcome_token_rewards,
    returns_to_go,
    whiten,
)

from rlbench.core import registry
from rlbench.core.config import ConfigError
from rlbench.core.configure import build_algorithm
from rlbench.core.registry import register_algorithm
from rlbench.engine import maths
from rlbench.engine.batch import PolicyOutput, RolloutBatch


@pytest.mark.parametrize("module", [base, maths], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------- the maths


def test_agg_loss_gradient_weights():
    # a valid token's gradient is its weight: 1/N, 1/(B L_i), 1/B, 1/(B T)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = {
        "token-mean": [[0.25, 0.25, 0.25], [0.25, 0.0, 0.0]],
        "seq-mean-token-mean": [[1 / 6, 1 / 6, 1 / 6], [0.5, 0.0, 0.0]],
        "seq-mean-token-sum": [[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]],
        "seq-mean-token-sum-norm": [[1 / 6, 1 / 6, 1 / 6], [1 / 6, 0.0, 0.0]],
    }
    for mode, weights in expected.items():
        x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, float("inf")]], requires_grad=True)
        agg_loss(x, mask, mode).backward()
        close(x.grad, weights)


def test_masked_mean_of_an_empty_row_is_zero():
    close(masked_mean(torch.tensor([[5.0, 6.0]]), torch.zeros(1, 2), dim=1), [0.0])


def test_clipped_pg_loss_gradient():
    # A = [1, 1, -1, -1], ratios [1.1, 1.5, 0.9, 0.5], clips 0.2 / 0.2, token-mean over 4:
    # tokens 2 (A > 0, ratio > 1.2) and 4 (A < 0, ratio < 0.8) are clipped: gradient 0; else -A * ratio / 4
    logp = torch.tensor([[1.1, 1.5, 0.9, 0.5]]).log().requires_grad_()
    loss, metrics = clipped_pg_loss(
        logp, torch.zeros(1, 4), torch.tensor([[1.0, 1.0, -1.0, -1.0]]), torch.ones(1, 4), 0.2, 0.2, "token-mean"
    )
    loss.backward()
    close(loss, (-1.1 - 1.2 + 0.9 + 0.8) / 4)
    close(logp.grad, [[-1.1 / 4, 0.0, 0.9 / 4, 0.0]])
    assert metrics["clip_frac"] == 0.5
    # approx_kl = mean log(pi_old / pi) = -mean log ratio
    assert metrics["approx_kl"] == pytest.approx(-(0.0953102 + 0.4054651 - 0.1053605 - 0.6931472) / 4, abs=1e-6)


def test_clipped_pg_loss_asymmetric_bounds():
    # eps_low 0.1, eps_high 0.3: ratio 1.25 with A > 0 is inside, ratio 0.85 with A < 0 is below 0.9: clipped
    logp = torch.tensor([[1.25, 0.85]]).log().requires_grad_()
    loss, metrics = clipped_pg_loss(
        logp, torch.zeros(1, 2), torch.tensor([[2.0, -2.0]]), torch.ones(1, 2), 0.1, 0.3, "token-mean"
    )
    loss.backward()
    close(loss, (-2 * 1.25 + 2 * 0.9) / 2)
    close(logp.grad, [[-2 * 1.25 / 2, 0.0]])
    assert metrics["clip_frac"] == 0.5


def test_gae_skips_holes_in_the_mask():
    # mask [1, 0, 1]: the middle position neither bootstraps nor resets. t2: A = 1 - 0.7 = 0.3;
    # t0: delta = 0 + V_2 - V_0 = 0.2, A = 0.2 + 0.5 * 0.3 = 0.35
    adv, ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([[0.5, 9.0, 0.7]]),
        torch.tensor([[1.0, 0.0, 1.0]]),
        gamma=1.0,
        lam=0.5,
    )
    close(adv, [[0.35, 0.0, 0.3]])
    close(ret, [[0.85, 0.0, 1.0]])


def test_gae_ends_the_episode_at_the_last_valid_token():
    # a garbage value after the last valid token is not bootstrapped from: A = R - V at the last token
    adv, _ = gae(
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([[0.2, 0.4, 50.0]]),
        torch.tensor([[1.0, 1.0, 0.0]]),
        gamma=1.0,
        lam=1.0,
    )
    close(adv, [[0.8, 0.6, 0.0]])


def test_outcome_reward_lands_on_the_last_valid_token():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(
        outcome_token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask),
        [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    )


def test_returns_to_go_with_discount():
    # gamma 0.5: G_2 = 1, G_1 = 0 + 0.5 * 1, G_0 = 2 + 0.5 * 0.5
    close(
        returns_to_go(torch.tensor([[2.0, 0.0, 1.0, 7.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), gamma=0.5),
        [[2.25, 0.5, 1.0, 0.0]],
    )


def test_whiten_keeps_the_mean_when_asked():
    x, mask = torch.tensor([[1.0, 3.0], [5.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    close(whiten(x, mask, shift_mean=False, unbiased=True), [[2.0, 3.0], [4.0, 0.0]])


# ------------------------------------------------------------------------------------------- the registry


@dataclasses.dataclass
class ToyConfig(AlgorithmConfig):
    scale: float = 1.0


class Toy(Algorithm):
    """A fifth algorithm, written the way a new module would: advantage = scale * reward."""

    name = "toy-test-algo"
    description = "test-only: scaled reward times log-likelihood"
    Config = ToyConfig

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        batch.advantages = self.config.scale * batch.rewards[:, None] * batch.response_mask
        return {}

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        return self.aggregate(-batch.advantages * out.logprobs, batch.response_mask), {}


@pytest.fixture
def toy_registered():
    register_algorithm(Toy)
    yield Toy
    registry._ALGORITHMS.pop(Toy.name, None)  # keep the name out of other tests' `rlbench list`


def test_a_new_algorithm_registers_by_decorator(toy_registered):
    assert registry.get_algorithm("toy-test-algo") is Toy
    assert "toy-test-algo" in registry.algorithms()
    algo = build_algorithm(registry.get_algorithm("toy-test-algo"), {"scale": "2"})
    batch = make_batch()
    algo.compute_advantages(batch)
    out = policy_output()
    algo.loss(batch, out)[0].backward()
    close(out.logprobs.grad[:, 0], [-2 / 12, 0.0, -2 / 4, -2 / 8])  # seq-mean-token-mean: -2 R_i / (4 L_i)


def test_builtin_algorithms_are_registered_with_a_description():
    table = registry.algorithms()
    assert {"em-pg", "grpo", "ppo", "reinforce"} <= set(table)
    for name in ("em-pg", "grpo", "ppo", "reinforce"):
        cls = table[name]
        assert cls.name == name
        assert cls.description and "\n" not in cls.description
        options = cls.options()
        assert "loss_agg" in options
        build_algorithm(cls, {})  # the defaults validate


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("em-pg", {"kl_loss_coef": -0.1}, "algo.kl_loss_coef"),
        ("em-pg", {"kl_reward_coef": -1}, "algo.kl_reward_coef"),
        ("em-pg", {"entropy_coef": -0.001}, "algo.entropy_coef"),
        ("em-pg", {"baseline": "median"}, "algo.baseline"),
        ("grpo", {"clip_low": -0.2}, "algo.clip_low"),
        ("grpo", {"clip_low": 1.0}, "algo.clip_low"),
        ("grpo", {"clip_high": -0.2}, "algo.clip_high"),
        ("grpo", {"kl_loss_coef": -0.04}, "algo.kl_loss_coef"),
        ("grpo", {"epochs": 0}, "algo.epochs"),
        ("grpo", {"minibatches": 0}, "algo.minibatches"),
        ("grpo", {"loss_agg": "sum"}, "algo.loss_agg"),
        ("grpo", {"epsilon": 0.2}, "algo.epsilon"),
        ("ppo", {"gamma": 1.5}, "algo.gamma"),
        ("ppo", {"lam": -0.1}, "algo.lam"),
        ("ppo", {"clip_high": -0.1}, "algo.clip_high"),
        ("ppo", {"vf_clip": -0.2}, "algo.vf_clip"),
        ("ppo", {"vf_coef": -1}, "algo.vf_coef"),
        ("ppo", {"kl_reward_coef": -0.05}, "algo.kl_reward_coef"),
        ("ppo", {"epochs": 0}, "algo.epochs"),
        ("ppo", {"minibatches": -2}, "algo.minibatches"),
        ("reinforce", {"kl_reward_coef": -1}, "algo.kl_reward_coef"),
        ("reinforce", {"loss_norm_len": 0}, "algo.loss_norm_len"),
    ],
)
def test_impossible_options_name_their_key(name, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_algorithm(registry.get_algorithm(name), options)


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("em-pg", "kl_coef", "kl_loss_coef"),
        ("grpo", "beta", "kl_loss_coef"),
        ("grpo", "iterations", "epochs"),
        ("ppo", "kl_coef", "kl_reward_coef"),
        ("reinforce", "kl_coef", "kl_reward_coef"),
    ],
)
def test_renamed_options_are_refused_naming_the_new_name(name, old, new):
    cls = registry.get_algorithm(name)
    assert cls.renamed[old] == new and new in cls.options() and old not in cls.options()
    with pytest.raises(ConfigError, match=rf"^algo\.{old}: renamed to algo\.{new} "):
        build_algorithm(cls, {"loss_agg": "token-mean", old: 0.0})


def test_one_name_per_knob_across_algorithms():
    """A renamed-away name is no algorithm's option, and every shared knob has one name everywhere."""
    table = {name: registry.algorithms()[name] for name in ("em-pg", "grpo", "ppo", "reinforce")}
    olds = {old for cls in table.values() for old in cls.renamed}
    assert olds == {"kl_coef", "beta", "iterations"}
    assert not any(olds & set(cls.options()) for cls in table.values())
    assert {n for n, cls in table.items() if "kl_loss_coef" in cls.options()} == {"em-pg", "grpo"}
    assert {n for n, cls in table.items() if "kl_reward_coef" in cls.options()} == {"em-pg", "ppo", "reinforce"}
    assert {n for n, cls in table.items() if "epochs" in cls.options()} == {"grpo", "ppo"}


def test_options_from_the_command_line_are_coerced():
    grpo = registry.get_algorithm("grpo")
    algo = build_algorithm(grpo, {"clip_high": "0.28", "scale_rewards": "false", "epochs": "2"})
    assert (algo.config.clip_high, algo.config.scale_rewards, algo.epochs) == (0.28, False, 2)
    algo = build_algorithm(registry.get_algorithm("ppo"), {"vf_clip": "null"})
    assert algo.config.vf_clip is None


# ------------------------------------------------------------------------------- one step through the trainer

TRAIN_ONE_STEP = {
    "budget": {"steps": 1},
    "rollout": {"batch_size": 4, "samples_per_prompt": 2},
    "sampling": {"max_new_tokens": 6},
    "eval": {"limit": 1, "samples": 0},
    "task": {"name": "arith", "train_size": 20, "test_size": 4},
    "optim": {"lr": 1e-3},
}


@pytest.mark.parametrize(
    "algo, expected_metric",
    [
        ({"name": "toy-test-algo", "scale": 2.0}, "loss"),
        # every optional input switched on, so each needs_* path of the trainer runs once
        (
            {"name": "em-pg", "baseline": "code", "kl_loss_coef": 0.001, "kl_reward_coef": 0.01, "entropy_coef": 0.001},
            "kl",
        ),
        ({"name": "grpo", "kl_loss_coef": 0.04, "epochs": 2, "minibatches": 2}, "clip_frac"),
        ({"name": "ppo", "kl_reward_coef": 0.05, "epochs": 2, "minibatches": 2, "entropy_coef": 0.01}, "vf_loss"),
        ({"name": "reinforce", "baseline": "rloo", "kl_reward_coef": 0.1}, "kl_reward_penalty"),
    ],
    ids=lambda a: a["name"] if isinstance(a, dict) else a,
)
def test_every_algorithm_trains_one_step(algo, expected_metric, toy_registered, tiny_qwen_dir, tmp_path):
    import json

    from rlbench.core.configure import build_run_config
    from rlbench.run.training import train

    out = tmp_path / "run"
    config = build_run_config({**TRAIN_ONE_STEP, "model": str(tiny_qwen_dir), "algo": algo, "out": str(out)})
    summary = train(config, progress=False)
    assert summary["status"] == "completed" and summary["usage"]["steps"] == 1
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert expected_metric in row
    assert all(math.isfinite(row[k]) for k in ("loss", "grad_norm"))
