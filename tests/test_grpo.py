"""GRPO on the shared hand-built batch (see algo_helpers), numbers from a hand calculation.

Rewards [1, 0, 1, 1] in groups [0, 0, 1, 1]: group 0 has mean 0.5 and std sqrt(0.5), so A = +-0.5 / (0.707107 + 1e-6)
= +-0.707106; group 1 has no spread, A = 0. Log-ratios log(pi / pi_old) on valid tokens:
[[0, .1, .2], [-.3, .05], [.5], [.2, -.2]], i.e. ratios [[1, 1.1052, 1.2214], [0.7408, 1.0513], ...].
With clip 0.2 two tokens are clipped (their gradient is 0): row 0's third (A > 0, ratio > 1.2) and row 1's first
(A < 0, ratio < 0.8). Elsewhere d loss / d log pi = -A * ratio * (the token's aggregation weight).
"""

from __future__ import annotations

import pytest
import torch
from algo_helpers import LOGP, OLD_LOGP, REF_LOGP, assert_padding_has_zero_grad, close, make_batch, mask, policy_output
from rlbench.algorithms.base import agg_loss
from rlbench.algorithms.grpo import GRPO, GRPOConfig

A = 0.7071057812


def run(config: GRPOConfig, **batch_fields):
    algo = GRPO(config)
    batch = make_batch(old_logprobs=torch.tensor(OLD_LOGP), **batch_fields)
    algo.compute_advantages(batch)
    out = policy_output()
    loss, metrics = algo.loss(batch, out)
    loss.backward()
    return batch, out, loss, metrics


def test_group_advantages():
    batch = make_batch()
    metrics = GRPO().compute_advantages(batch)
    close(batch.advantages, [[A, A, A], [-A, -A, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert metrics["advantage_abs_mean"] == pytest.approx(A / 2, abs=1e-6)


def test_unscaled_advantages_dr_grpo():
    batch = make_batch()
    GRPO(GRPOConfig(scale_rewards=False)).compute_advantages(batch)
    close(batch.advantages[:, 0], [0.5, -0.5, 0.0, 0.0])


@pytest.mark.parametrize(
    "mode, loss, grad",
    [
        # weight 1/8 per token: loss = |A| (-1 - 1.10517 - 1.2 + 0.8 + 1.05127) / 8
        (
            "token-mean",
            -0.1285076211,
            [[-0.0883882226, -0.0976840932, 0.0], [0.0, 0.0929199837, 0.0], [0.0] * 3, [0.0] * 3],
        ),
        # weight 1 / (4 L_i)
        (
            "seq-mean-token-mean",
            -0.0311282268,
            [[-0.0589254818, -0.0651227288, 0.0], [0.0, 0.0929199837, 0.0], [0.0] * 3, [0.0] * 3],
        ),
        # weight 1 / (4 T), T = 3 (Dr. GRPO's constant normaliser)
        (
            "seq-mean-token-sum-norm",
            -0.0856717474,
            [[-0.0589254818, -0.0651227288, 0.0], [0.0, 0.0619466558, 0.0], [0.0] * 3, [0.0] * 3],
        ),
    ],
)
def test_clipped_loss_and_gradient(mode, loss, grad):
    _, out, value, metrics = run(GRPOConfig(loss_agg=mode, epochs=2))
    close(value, loss)
    close(out.logprobs.grad, grad)
    assert_padding_has_zero_grad(out.logprobs.grad)
    assert metrics["clip_frac"] == pytest.approx(0.25)


def test_constant_normaliser_option():
    _, out, value, _ = run(GRPOConfig(loss_agg="seq-mean-token-sum-norm", loss_norm_len=6, epochs=2))
    close(value, -0.0856717474 / 2)
    close(out.logprobs.grad, [[-0.0294627409, -0.0325613644, 0.0], [0.0, 0.0309733279, 0.0], [0.0] * 3, [0.0] * 3])


def test_unscaled_loss():
    _, out, value, _ = run(GRPOConfig(scale_rewards=False, epochs=2))
    close(value, -0.0908687389)
    close(out.logprobs.grad, [[-0.0625, -0.0690731824, 0.0], [0.0, 0.0657044435, 0.0], [0.0] * 3, [0.0] * 3])


def test_clip_high_is_separate_from_clip_low():
    # eps_high 0.28: row 0's third token (ratio 1.2214 < 1.28) is no longer clipped; row 1's first still is (eps_low)
    _, out, value, metrics = run(GRPOConfig(clip_high=0.28, epochs=2))
    close(value, -0.1303993729)
    close(
        out.logprobs.grad,
        [[-0.0883882226, -0.0976840932, -0.1079576189], [0.0, 0.0929199837, 0.0], [0.0] * 3, [0.0] * 3],
    )
    assert metrics["clip_frac"] == pytest.approx(0.125)


def test_k3_kl_to_reference_in_the_loss():
    # + 0.04 * token-mean k3(pi || ref); d k3 / d log pi = 1 - exp(ref - log pi)
    algo_config = GRPOConfig(kl_loss_coef=0.04, epochs=2)
    assert GRPO(algo_config).needs_reference
    _, out, value, metrics = run(algo_config, ref_logprobs=torch.tensor(REF_LOGP))
    close(value, -0.1268300264)
    close(
        out.logprobs.grad,
        [
            [-0.0874818764, -0.0987911070, 0.0019673467],
            [0.0, 0.0918129699, 0.0],
            [-0.0032436064, 0.0, 0.0],
            [0.0009063462, 0.0, 0.0],
        ],
    )
    assert_padding_has_zero_grad(out.logprobs.grad)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_ratio_one_reduces_to_the_policy_gradient(mode):
    algo = GRPO(GRPOConfig(loss_agg=mode, epochs=3, minibatches=2))
    batch = make_batch(old_logprobs=torch.tensor(LOGP))
    algo.compute_advantages(batch)
    out = policy_output()
    algo.loss(batch, out)[0].backward()
    reference = torch.tensor(LOGP, requires_grad=True)
    agg_loss(-batch.advantages * reference, mask(), mode).backward()
    torch.testing.assert_close(out.logprobs.grad, reference.grad, atol=1e-7, rtol=0)
    # and by hand for token-mean's weights: -A / 8 on group 0's tokens, 0 elsewhere
    if mode == "token-mean":
        close(out.logprobs.grad, [[-A / 8] * 3, [A / 8, A / 8, 0.0], [0.0] * 3, [0.0] * 3])


def test_single_update_needs_no_old_logprobs():
    algo = GRPO()
    assert (algo.epochs, algo.minibatches) == (1, 1)
    assert not (algo.needs_old_logprobs or algo.needs_reference or algo.needs_values)
    batch = make_batch()  # the trainer leaves old_logprobs unset
    algo.compute_advantages(batch)
    out = policy_output()
    loss, metrics = algo.loss(batch, out)
    loss.backward()
    close(out.logprobs.grad, [[-A / 8] * 3, [A / 8, A / 8, 0.0], [0.0] * 3, [0.0] * 3])
    assert metrics["clip_frac"] == 0.0
    assert GRPO(GRPOConfig(epochs=2)).needs_old_logprobs and GRPO(GRPOConfig(minibatches=2)).needs_old_logprobs
    assert (GRPO(GRPOConfig(epochs=2, minibatches=4)).epochs, GRPO(GRPOConfig(minibatches=4)).minibatches) == (2, 4)


def test_infinite_padding_does_not_poison_the_loss():
    inf, nan = float("inf"), float("nan")
    padded_old = [[-0.5, -1.1, -2.2], [0.1, -0.35, -inf], [-2.0, inf, nan], [-0.3, -0.2, -inf]]
    padded_ref = [[-0.7, -0.8, -2.5], [-0.2, -0.1, inf], [-1.0, -inf, nan], [-0.3, -0.4, inf]]
    padded_logp = [[-0.5, -1.0, -2.0], [-0.2, -0.3, -inf], [-1.5, -inf, nan], [-0.1, -0.4, inf]]
    algo = GRPO(GRPOConfig(kl_loss_coef=0.04, epochs=2))
    batch = make_batch(old_logprobs=torch.tensor(padded_old), ref_logprobs=torch.tensor(padded_ref))
    algo.compute_advantages(batch)
    out = policy_output(padded_logp)
    loss, _ = algo.loss(batch, out)
    loss.backward()
    close(loss, -0.1268300264)
    assert_padding_has_zero_grad(out.logprobs.grad)
