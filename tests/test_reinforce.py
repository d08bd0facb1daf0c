"""REINFORCE on the shared hand-built batch (see algo_helpers): advantages, loss and d loss / d log pi by hand.

Loss = seq-mean-token-mean of -(R - b) log pi: each row's token mean, then the mean over the 4 rows, so a valid token
of row i has weight 1 / (4 L_i) with L = [3, 2, 1, 2].
"""

from __future__ import annotations

import pytest
import torch
from algo_helpers import LOGP, REF_FOR_K1, assert_padding_has_zero_grad, close, make_batch, mask, policy_output
from rlbench.algorithms.reinforce import Reinforce, ReinforceConfig


@pytest.mark.parametrize(
    "baseline, advantages, loss, grad",
    [
        # b = 0: A = R. loss = -(1/4)[(-3.5/3) + (-1.5) + (-0.5/2)] = 0.729167
        (
            "none",
            [1.0, 0.0, 1.0, 1.0],
            0.7291666667,
            [[-1 / 12, -1 / 12, -1 / 12], [0.0, 0.0, 0.0], [-0.25, 0.0, 0.0], [-0.125, -0.125, 0.0]],
        ),
        # b = mean R = 0.75
        (
            "mean",
            [0.25, -0.75, 0.25, 0.25],
            0.1354166667,
            [[-0.0208333333] * 3, [0.09375, 0.09375, 0.0], [-0.0625, 0.0, 0.0], [-0.03125, -0.03125, 0.0]],
        ),
        # leave-one-out within each prompt: group 0 -> R - other = [1, -1]; group 1 -> [0, 0]
        (
            "rloo",
            [1.0, -1.0, 0.0, 0.0],
            0.2291666667,
            [[-1 / 12, -1 / 12, -1 / 12], [0.125, 0.125, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ),
    ],
)
def test_baselines_loss_and_gradient(baseline, advantages, loss, grad):
    algo = Reinforce(ReinforceConfig(baseline=baseline))
    batch = make_batch()
    algo.compute_advantages(batch)
    close(batch.advantages, [[a * m for m in row] for a, row in zip(advantages, mask().tolist())])
    out = policy_output()
    value, metrics = algo.loss(batch, out)
    value.backward()
    close(value, loss)
    close(out.logprobs.grad, grad)
    assert_padding_has_zero_grad(out.logprobs.grad)
    assert metrics["pg_loss"] == pytest.approx(loss, abs=1e-6)


def test_rloo_gives_a_lone_sample_no_advantage():
    batch = make_batch(rewards=[1.0, 0.0, 1.0, 0.0], groups=[0, 0, 1, 2])
    Reinforce(ReinforceConfig(baseline="rloo")).compute_advantages(batch)
    close(batch.advantages[:, 0], [1.0, -1.0, 0.0, 0.0])


def test_kl_in_reward_uses_summed_k1_to_the_reference():
    # k1 per token = [[.1, .2, .3], [-.1, .4], [.2], [0, .6]] -> sums [.6, .3, .2, .6]
    # R' = R - 0.5 * sum = [0.7, -0.15, 0.9, 0.7]; mean 0.5375 -> A = [0.1625, -0.6875, 0.3625, 0.1625]
    algo = Reinforce(ReinforceConfig(baseline="mean", kl_reward_coef=0.5))
    assert algo.needs_reference and algo.needs_old_logprobs
    batch = make_batch(old_logprobs=torch.tensor(LOGP), ref_logprobs=torch.tensor(REF_FOR_K1))
    metrics = algo.compute_advantages(batch)
    close(batch.advantages[:, 0], [0.1625, -0.6875, 0.3625, 0.1625])
    assert metrics["kl_reward_penalty"] == pytest.approx(0.425, abs=1e-6)  # mean of [.6, .3, .2, .6]


def test_defaults_need_nothing_extra():
    algo = Reinforce()
    assert not (algo.needs_reference or algo.needs_values or algo.needs_old_logprobs or algo.needs_entropy_grad)
    assert (algo.epochs, algo.minibatches) == (1, 1)


def test_constant_length_normaliser():
    # seq-mean-token-sum-norm with loss_norm_len 6: -(1/4) sum_i A_i sum_t log pi / 6, A = R (no baseline)
    # = -(1/4)(-3.5 - 1.5 - 0.5) / 6; every valid token of a rewarded row gets -1 / 24
    algo = Reinforce(ReinforceConfig(baseline="none", loss_agg="seq-mean-token-sum-norm", loss_norm_len=6))
    batch = make_batch()
    algo.compute_advantages(batch)
    out = policy_output()
    loss, _ = algo.loss(batch, out)
    loss.backward()
    close(loss, 0.2291666667)
    close(out.logprobs.grad, [[-1 / 24] * 3, [0.0, 0.0, 0.0], [-1 / 24, 0.0, 0.0], [-1 / 24, -1 / 24, 0.0]])
