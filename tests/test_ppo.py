"""PPO on the shared hand-built batch (see algo_helpers), numbers from a hand calculation.

Sampling-time values V_old = [[.5, .6, .7], [.4, .3], [.8], [.9, .95]], rewards [1, 0, 1, 1] on the last valid token.
GAE with gamma 1, lambda 0.95 (TRL's; set explicitly, the default is verl's 1.0), row 0: delta = [.1, .1, .3]
-> A = [.46575, .385, .3]; row 1:
delta = [-.1, -.3] -> A = [-.385, -.3]; row 2: A = [.2]; row 3: delta = [.05, .05] -> A = [.0975, .05].
Returns G = A + V_old. Advantages are then whitened over the 8 valid tokens (unbiased variance).
"""

from __future__ import annotations

import pytest
import torch
from algo_helpers import (
    LOGP,
    OLD_LOGP,
    REF_FOR_K1,
    assert_padding_has_zero_grad,
    close,
    make_batch,
    mask,
    policy_output,
)
from rlbench.algorithms.base import agg_loss
from rlbench.algorithms.ppo import PPO, PPOConfig

V_OLD = [[0.5, 0.6, 0.7], [0.4, 0.3, 9.0], [0.8, -7.0, 4.0], [0.9, 0.95, 100.0]]
V_NEW = [[0.6, 0.9, 0.8], [0.1, 0.35, -3.0], [0.8, 2.0, 55.0], [1.3, 0.9, -8.0]]
RETURNS = [[0.96575, 0.985, 1.0], [0.015, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9975, 1.0, 0.0]]
WHITENED = [
    [1.1833176562, 0.9208772800, 0.6446242523],
    [-1.5816501468, -1.3053971192, 0.0],
    [0.3196206904, 0.0, 0.0],
    [-0.0135079605, -0.1678846525, 0.0],
]


def test_gae_returns_and_whitened_advantages():
    algo = PPO(PPOConfig(lam=0.95))
    batch = make_batch(values=torch.tensor(V_OLD), old_logprobs=torch.tensor(OLD_LOGP))
    algo.compute_advantages(batch)
    close(batch.returns, RETURNS)
    close(batch.advantages, WHITENED)


def test_unwhitened_gae():
    batch = make_batch(values=torch.tensor(V_OLD))
    PPO(PPOConfig(lam=0.95, whiten_advantages=False)).compute_advantages(batch)
    close(batch.advantages, [[0.46575, 0.385, 0.3], [-0.385, -0.3, 0.0], [0.2, 0.0, 0.0], [0.0975, 0.05, 0.0]])


def test_gae_with_discount_and_lambda_one():
    # gamma 0.9, lambda 1: row 0: delta = [.04, .03, .3] -> A = [.04 + .9 * .3, .03 + .9 * .3, .3] = [.31, .3, .3]
    batch = make_batch(values=torch.tensor(V_OLD))
    PPO(PPOConfig(gamma=0.9, lam=1.0, whiten_advantages=False)).compute_advantages(batch)
    close(batch.advantages, [[0.31, 0.3, 0.3], [-0.4, -0.3, 0.0], [0.2, 0.0, 0.0], [0.0, 0.05, 0.0]])


def test_kl_penalty_per_token_in_the_reward():
    # r_t = -0.5 * k1_t (k1 = [[.1, .2, .3], [-.1, .4], [.2], [0, .6]]) plus R on the last token, then GAE
    algo = PPO(PPOConfig(lam=0.95, kl_reward_coef=0.5, whiten_advantages=False))
    assert algo.needs_reference and algo.needs_old_logprobs
    batch = make_batch(
        values=torch.tensor(V_OLD), old_logprobs=torch.tensor(LOGP), ref_logprobs=torch.tensor(REF_FOR_K1)
    )
    algo.compute_advantages(batch)
    close(batch.advantages, [[0.185375, 0.1425, 0.15], [-0.525, -0.5, 0.0], [0.1, 0.0, 0.0], [-0.1875, -0.25, 0.0]])


def test_clipped_policy_and_value_losses_and_gradients():
    # policy: ratios [[1, 1.1052, 1.2214], [.7408, 1.0513], [1.6487], [1.2214, .8187]] against the whitened A;
    # clipped (zero gradient): row 0 token 3 and row 2 (A > 0, ratio > 1.2), row 1 token 1 (A < 0, ratio < 0.8).
    # value: V - V_old = [[.1, .3, .1], [-.3, .05], [0], [.4, -.05]], clip 0.2; the clipped branch is the larger at
    # row 0 token 2 and row 1 token 1 (gradient 0); row 3 token 1 is clipped too but its unclipped loss is larger.
    # vf loss = 1/2 token-mean max(...) = 0.0316393; loss = pg + 0.1 vf
    algo = PPO(PPOConfig(lam=0.95))
    batch = make_batch(values=torch.tensor(V_OLD), old_logprobs=torch.tensor(OLD_LOGP))
    algo.compute_advantages(batch)
    values = torch.tensor(V_NEW, requires_grad=True)
    out = policy_output(values=values)
    loss, metrics = algo.loss(batch, out)
    loss.backward()
    close(loss, -0.0676536931)
    assert metrics["pg_loss"] == pytest.approx(-0.0708176263, abs=1e-6)
    assert metrics["vf_loss"] == pytest.approx(0.0316393320, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(0.375)
    assert metrics["vf_clip_frac"] == pytest.approx(0.25)
    close(
        out.logprobs.grad,
        [
            [-0.1479147070, -0.1272158486, 0.0],
            [0.0, 0.1715407826, 0.0],
            [0.0, 0.0, 0.0],
            [0.0020623325, 0.0171815410, 0.0],
        ],
    )
    close(
        values.grad,
        [[-0.004571875, 0.0, -0.0025], [0.0, 0.004375, 0.0], [-0.0025, 0.0, 0.0], [0.00378125, -0.00125, 0.0]],
    )
    assert_padding_has_zero_grad(out.logprobs.grad)
    assert_padding_has_zero_grad(values.grad)


def test_value_clip_disabled():
    # 1/2 token-mean (V - G)^2 without clipping; d/dV = 0.1 * (V - G) / 8
    algo = PPO(PPOConfig(lam=0.95, vf_clip=None))
    batch = make_batch(values=torch.tensor(V_OLD), old_logprobs=torch.tensor(OLD_LOGP))
    algo.compute_advantages(batch)
    values = torch.tensor(V_NEW, requires_grad=True)
    _, metrics = algo.loss(batch, policy_output(values=values))
    # squares: .1337730625 .007225 .04 | .007225 .1225 | .04 | .09150625 .01 -> sum .4522293125, / 8 / 2
    assert metrics["vf_loss"] == pytest.approx(0.0282643320, abs=1e-7)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_ratio_one_reduces_to_the_policy_gradient(mode):
    algo = PPO(PPOConfig(lam=0.95, loss_agg=mode))
    batch = make_batch(values=torch.tensor(V_OLD), old_logprobs=torch.tensor(LOGP))
    algo.compute_advantages(batch)
    out = policy_output(values=torch.tensor(V_NEW, requires_grad=True))
    algo.loss(batch, out)[0].backward()
    reference = torch.tensor(LOGP, requires_grad=True)
    agg_loss(-batch.advantages * reference, mask(), mode).backward()
    torch.testing.assert_close(out.logprobs.grad, reference.grad, atol=1e-7, rtol=0)
    if mode == "token-mean":  # -A_t / 8 with the whitened advantages above
        close(out.logprobs.grad, [[-a / 8 for a in row] for row in WHITENED])


def test_entropy_bonus():
    algo = PPO(PPOConfig(lam=0.95, entropy_coef=0.01))
    assert algo.needs_entropy_grad
    batch = make_batch(values=torch.tensor(V_OLD), old_logprobs=torch.tensor(LOGP))
    algo.compute_advantages(batch)
    entropy = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.7, 9.0], [1.1, 5.0, 8.0], [0.2, 0.4, 1.0]], requires_grad=True)
    _, metrics = algo.loss(batch, policy_output(values=torch.tensor(V_NEW), entropy=entropy))
    assert metrics["entropy"] == pytest.approx(6.2 / 8)


def test_defaults_and_needs():
    algo = PPO()
    c = algo.config
    assert (c.gamma, c.lam, c.clip_low, c.clip_high) == (1.0, 1.0, 0.2, 0.2)
    assert (c.vf_clip, c.vf_coef, c.kl_reward_coef, c.entropy_coef) == (0.2, 0.1, 0.0, 0.0)
    assert algo.needs_values and algo.needs_old_logprobs and not algo.needs_reference
    assert (algo.epochs, algo.minibatches) == (1, 4)
    assert not PPO(PPOConfig(lam=0.95, epochs=1, minibatches=1)).needs_old_logprobs


def test_missing_value_head_output_is_a_clear_error():
    algo = PPO(PPOConfig(lam=0.95))
    batch = make_batch(values=torch.tensor(V_OLD))
    algo.compute_advantages(batch)
    with pytest.raises(ValueError, match="value head"):
        algo.loss(batch, policy_output())


def test_non_finite_padding_does_not_poison_the_loss():
    nan, inf = float("nan"), float("inf")
    v_old = [[0.5, 0.6, 0.7], [0.4, 0.3, nan], [0.8, inf, -inf], [0.9, 0.95, nan]]
    v_new = [[0.6, 0.9, 0.8], [0.1, 0.35, -inf], [0.8, nan, nan], [1.3, 0.9, inf]]
    old = [[-0.5, -1.1, -2.2], [0.1, -0.35, -inf], [-2.0, inf, nan], [-0.3, -0.2, -inf]]
    algo = PPO(PPOConfig(lam=0.95))
    batch = make_batch(values=torch.tensor(v_old), old_logprobs=torch.tensor(old))
    algo.compute_advantages(batch)
    close(batch.advantages, WHITENED)
    values = torch.tensor(v_new, requires_grad=True)
    out = policy_output([[-0.5, -1.0, -2.0], [-0.2, -0.3, inf], [-1.5, nan, -inf], [-0.1, -0.4, nan]], values=values)
    loss, _ = algo.loss(batch, out)
    loss.backward()
    close(loss, -0.0676536931)
    assert_padding_has_zero_grad(out.logprobs.grad)
    assert_padding_has_zero_grad(values.grad)
