"""EM-PG on the shared hand-built batch (see algo_helpers), numbers from a hand calculation.

Rewards [1, 0, 1, 1]; loss aggregation seq-mean-token-mean, so a valid token of row i weighs 1 / (4 L_i),
L = [3, 2, 1, 2], and d loss / d log pi = -A_i / (4 L_i). The default baseline is ``code`` (the author's code, which
produced the paper's numbers); ``mean`` (the paper's equation) is REINFORCE with a batch-mean baseline times one
scalar on 0/1 rewards, which the equivalence tests below check.
"""

from __future__ import annotations

import math

import pytest
import torch
from algo_helpers import (
    LOGP,
    REF_FOR_K1,
    REF_LOGP,
    assert_padding_has_zero_grad,
    close,
    make_batch,
    mask,
    policy_output,
)
from rlbench.algorithms.em_pg import EMPG, EMPGConfig
from rlbench.algorithms.reinforce import Reinforce, ReinforceConfig

LENGTHS = [3, 2, 1, 2]
MIXED = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def run(config: EMPGConfig, **batch_fields):
    algo = EMPG(config)
    batch = make_batch(**batch_fields)
    algo.compute_advantages(batch)
    out = policy_output()
    loss, metrics = algo.loss(batch, out)
    loss.backward()
    return batch, out, loss, metrics


def per_row(values: list[float]) -> list[list[float]]:
    return [[v * m for m in row] for v, row in zip(values, mask().tolist())]


def test_paper_baseline_batch_mean_of_smoothed_reward():
    # mu = 0.75, sigma (n - 1) = 0.5 -> z = [0.5, -1.5, 0.5, 0.5]; R~ = sigmoid(z) = [0.622459, 0.182426, ...]
    # b = mean R~ = 0.512451 -> A = R~ - b
    a_pos, a_neg = 0.1100084518, -0.3300253555
    batch, out, loss, _ = run(EMPGConfig(baseline="mean"))
    close(batch.advantages, per_row([a_pos, a_neg, a_pos, a_pos]))
    close(loss, 0.0595879114)
    close(
        out.logprobs.grad,
        [
            [-0.0091673710] * 3,
            [0.0412531694, 0.0412531694, 0.0],
            [-0.0275021130, 0.0, 0.0],
            [-0.0137510565, -0.0137510565, 0.0],
        ],
    )
    assert_padding_has_zero_grad(out.logprobs.grad)


def test_code_baseline_is_the_default_with_token_level_statistics():
    # over the 8 valid tokens: six returns of 1, two of 0 -> mu = 0.75, var (n - 1) = 1.5 / 7
    # A = 2 sigmoid((G - mu) / sqrt(var)) - 1 = [0.263654, -0.669641] for G = 1, 0
    assert EMPGConfig().baseline == "code" and EMPGConfig().loss_agg == "seq-mean-token-mean"
    batch, out, loss, _ = run(EMPGConfig())
    close(batch.advantages, per_row([0.2636535528, -0.6696413321, 0.2636535528, 0.2636535528]))
    close(loss, 0.1503947990)
    close(
        out.logprobs.grad,
        [
            [-0.0219711294] * 3,
            [0.0837051665, 0.0837051665, 0.0],
            [-0.0659133882, 0.0, 0.0],
            [-0.0329566941, -0.0329566941, 0.0],
        ],
    )
    assert_padding_has_zero_grad(out.logprobs.grad)


def test_group_baseline_per_prompt_statistics():
    # group 0: R = [1, 0], mu 0.5, sigma sqrt(0.5) -> z = +-0.7071, R~ - 0.5 = +-0.169762; group 1 has no spread -> 0
    batch, out, loss, _ = run(EMPGConfig(baseline="group"))
    close(batch.advantages, per_row([0.1697615493, -0.1697615493, 0.0, 0.0]))
    close(loss, 0.0389036884)
    close(out.logprobs.grad, [[-0.0141467958] * 3, [0.0212201937, 0.0212201937, 0.0], [0.0] * 3, [0.0] * 3])
    assert_padding_has_zero_grad(out.logprobs.grad)


@pytest.mark.parametrize("baseline", ["mean", "code", "group"])
@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_zero_reward_spread_gives_exactly_zero_advantage(baseline, reward):
    # sigma = 0: z = 0 / sqrt(0 + eps) = 0, R~ = 1/2 = b: no policy-gradient signal, and no NaN
    batch, out, loss, _ = run(EMPGConfig(baseline=baseline), rewards=[reward] * 4)
    assert torch.equal(batch.advantages, torch.zeros(4, 3))
    assert loss.item() == 0.0
    assert torch.equal(out.logprobs.grad, torch.zeros(4, 3))


def test_tiny_reward_spread_is_not_inflated_to_unit_scale():
    # a spread of 1e-6 (sigma ~ 1e-6 << sqrt(eps) = 1e-4) gives |z| ~ 0.01, |A| ~ 0.004; without eps it would be the
    # full-size advantages of a 0/1 batch (|A| up to 0.33)
    batch, _, _, _ = run(EMPGConfig(baseline="mean"), rewards=[0.5, 0.5 + 4e-6, 0.5, 0.5])
    assert 0 < batch.advantages.abs().max().item() < 0.01


def test_kl_in_reward_paper_baseline():
    # k1 sums [.6, .3, .2, .6], coefficient 0.5: R' = [0.7, -0.15, 0.9, 0.7] -> whitened, sigmoid, minus batch mean
    algo = EMPG(EMPGConfig(baseline="mean", kl_reward_coef=0.5))
    assert algo.needs_reference and algo.needs_old_logprobs
    batch = make_batch(old_logprobs=torch.tensor(LOGP), ref_logprobs=torch.tensor(REF_FOR_K1))
    algo.compute_advantages(batch)
    close(batch.advantages, per_row([0.0750800076, -0.3238178777, 0.1736578624, 0.0750800076]))


def test_kl_in_reward_code_baseline_uses_return_to_go():
    # token rewards -0.5 k1 plus R on the last token; returns-to-go (gamma 1):
    # G = [[.7, .75, .85], [-.15, -.2], [.9], [.7, .7]], whitened over the 8 tokens, A = 2 sigmoid(.) - 1
    algo = EMPG(EMPGConfig(baseline="code", kl_reward_coef=0.5))
    batch = make_batch(old_logprobs=torch.tensor(LOGP), ref_logprobs=torch.tensor(REF_FOR_K1))
    algo.compute_advantages(batch)
    close(
        batch.advantages,
        [
            [0.1884643778, 0.2423426249, 0.3454740244],
            [-0.6469542639, -0.6786243299, 0.0],
            [0.3942413954, 0.0, 0.0],
            [0.1884643778, 0.1884643778, 0.0],
        ],
    )


def test_k3_kl_and_entropy_bonus_in_the_loss():
    # loss = pg + 0.1 * seqmean(k3(pi || ref)) - 0.01 * seqmean(H): pg = 0.059588, KL = 0.054419, H = 0.766667
    # d/d log pi of k3 = 1 - exp(ref - log pi); d/dH = -0.01 / (4 L_i)
    algo = EMPG(EMPGConfig(baseline="mean", kl_loss_coef=0.1, entropy_coef=0.01))
    assert algo.needs_reference and algo.needs_entropy_grad and not algo.needs_old_logprobs
    batch = make_batch(ref_logprobs=torch.tensor(REF_LOGP))
    algo.compute_advantages(batch)
    entropy = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.7, 99.0], [1.1, -5.0, 8.0], [0.2, 0.4, 1e6]], requires_grad=True)
    out = policy_output(entropy=entropy)
    loss, metrics = algo.loss(batch, out)
    loss.backward()
    close(loss, 0.0573631468)
    assert metrics["kl"] == pytest.approx(0.0544190208, abs=1e-6)
    assert metrics["entropy"] == pytest.approx(0.7666666667, abs=1e-6)
    close(
        out.logprobs.grad,
        [
            [-0.0076567939, -0.0110123940, -0.0058884598],
            [0.0412531694, 0.0384856350, 0.0],
            [-0.0437201447, 0.0, 0.0],
            [-0.0114851909, -0.0137510565, 0.0],
        ],
    )
    close(entropy.grad, [[-0.01 / 12] * 3, [-0.00125, -0.00125, 0.0], [-0.0025, 0.0, 0.0], [-0.00125, -0.00125, 0.0]])
    assert_padding_has_zero_grad(out.logprobs.grad)
    assert_padding_has_zero_grad(entropy.grad)


def test_no_ratio_no_clip_one_update_per_batch():
    algo = EMPG()
    assert algo.config.baseline == "code"
    assert (algo.epochs, algo.minibatches) == (1, 1)
    assert not (algo.needs_old_logprobs or algo.needs_reference or algo.needs_values or algo.needs_entropy_grad)
    # the loss is linear in log pi: doubling every log-prob doubles the loss (a ratio or a clip would not)
    batch = make_batch()
    algo.compute_advantages(batch)
    one, _ = algo.loss(batch, policy_output())
    two, _ = algo.loss(batch, policy_output([[2 * x for x in row] for row in LOGP]))
    assert two.item() == pytest.approx(2 * one.item(), abs=1e-7)


def test_infinite_padding_does_not_poison_the_loss():
    padded = [[-0.5, -1.0, -2.0], [-0.2, -0.3, float("-inf")], [-1.5, float("inf"), float("nan")], [-0.1, -0.4, 0.0]]
    algo = EMPG(EMPGConfig(kl_loss_coef=0.1))
    batch = make_batch(ref_logprobs=torch.tensor(padded))
    algo.compute_advantages(batch)
    out = policy_output(padded)
    loss, _ = algo.loss(batch, out)
    loss.backward()
    assert torch.isfinite(loss)
    assert_padding_has_zero_grad(out.logprobs.grad)


def test_group_baseline_is_the_group_mean_of_the_smoothed_reward():
    # group 0 = rows 0-2 with R = [1, 0, 0]: mu 1/3, sigma sqrt(1/3) -> z = [1.1547, -0.5774, -0.5774];
    # R~ = [0.760356, 0.359541, 0.359541], b = 0.493146 (not 1/2: the group is lopsided); row 3 alone -> 0
    batch, _, _, _ = run(EMPGConfig(baseline="group"), rewards=[1.0, 0.0, 0.0, 1.0], groups=[0, 0, 0, 1])
    close(batch.advantages, per_row([0.2672172784, -0.1336086392, -0.1336086392, 0.0]))


# ------------------------------------------------------------------ which form: equivalence with REINFORCE


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def reinforce(rewards: list[float]):
    return run_algo(Reinforce(ReinforceConfig(baseline="mean")), rewards)


def run_algo(algo, rewards: list[float]):
    batch = make_batch(rewards=rewards)
    algo.compute_advantages(batch)
    out = policy_output()
    loss, _ = algo.loss(batch, out)
    loss.backward()
    return batch, out, loss


@pytest.mark.parametrize("rewards", MIXED)
def test_paper_equation_is_reinforce_with_batch_mean_baseline_times_one_scalar(rewards):
    # R~ in {r1, r0} -> R~ = r0 + c R, c = r1 - r0 -> A = R~ - mean R~ = c (R - p), p the success rate
    n, p = len(rewards), sum(rewards) / len(rewards)
    d = math.sqrt(sum((r - p) ** 2 for r in rewards) / (n - 1) + 1e-8)
    c = sigmoid((1 - p) / d) - sigmoid(-p / d)
    assert 0.40 < c < 0.55
    em, em_out, em_loss = run_algo(EMPG(EMPGConfig(baseline="mean")), rewards)
    rf, rf_out, rf_loss = reinforce(rewards)
    close(em.advantages, per_row([c * (r - p) for r in rewards]))
    close(em.advantages, (c * rf.advantages).tolist())
    close(em_loss, c * rf_loss.item())
    close(em_out.logprobs.grad, (c * rf_out.logprobs.grad).tolist())
    # AdamW's first step, m / sqrt(v) = g / |g|, does not see c: the two updates agree up to its eps
    steps = []
    for grad in (em_out.logprobs.grad, rf_out.logprobs.grad):
        weights = torch.nn.Parameter(torch.zeros(4, 3))
        opt = torch.optim.AdamW([weights], lr=1e-3, weight_decay=0.01)
        weights.grad = grad.clone()
        opt.step()
        steps.append(weights.detach())
    close(steps[0], steps[1].tolist(), atol=1e-8)


def test_scalar_c_on_the_shared_batch_matches_the_hand_numbers():
    # R = [1, 0, 1, 1]: A = [0.1100084518, -0.3300253555] (above) = c (R - 0.75), c = 0.4400338073
    em, _, _ = run_algo(EMPG(EMPGConfig(baseline="mean")), [1.0, 0.0, 1.0, 1.0])
    rf, _, _ = reinforce([1.0, 0.0, 1.0, 1.0])
    close(em.advantages, (0.4400338073 * rf.advantages).tolist())


@pytest.mark.parametrize("rewards", MIXED)
def test_code_form_is_not_a_multiple_of_reinforce_on_unequal_lengths(rewards):
    # G_t = R on every token: A = (a1 - a0)(R - b'), b' = -a0 / (a1 - a0), a1, a0 from the token-level statistics
    # (q the token-weighted success rate); b' != p, so the per-token ratio to REINFORCE's R - p takes two values
    n, q = sum(LENGTHS), sum(r * n_i for r, n_i in zip(rewards, LENGTHS)) / sum(LENGTHS)
    d = math.sqrt(sum(n_i * (r - q) ** 2 for r, n_i in zip(rewards, LENGTHS)) / (n - 1) + 1e-8)
    a1, a0 = 2 * sigmoid((1 - q) / d) - 1, 2 * sigmoid(-q / d) - 1
    b, p = -a0 / (a1 - a0), sum(rewards) / len(rewards)
    code, _, _ = run_algo(EMPG(EMPGConfig(baseline="code")), rewards)
    rf, _, _ = reinforce(rewards)
    close(code.advantages, per_row([(a1 - a0) * (r - b) for r in rewards]))
    assert abs(b - p) > 0.02
    valid = mask() > 0
    ratio = code.advantages[valid] / rf.advantages[valid]
    assert ratio.max() - ratio.min() > 0.1
    assert abs(float(code.advantages[:, 0].sum())) > 0.02  # not mean-zero over the batch's sequences


def test_code_form_is_a_multiple_of_reinforce_only_when_its_baseline_meets_p():
    # R = [1, 0, 1, 0] on lengths [3, 2, 1, 2]: q = 4 / 8 = p = 1/2, the sigmoid is odd about it, a0 = -a1,
    # b' = 1/2 = p, and A = 2 a1 (R - 1/2): here (in general only when b' = p) the code form is REINFORCE's times 2 a1
    code, _, _ = run_algo(EMPG(EMPGConfig(baseline="code")), [1.0, 0.0, 1.0, 0.0])
    rf, _, _ = reinforce([1.0, 0.0, 1.0, 0.0])
    close(code.advantages, (2 * 0.4363448 * rf.advantages).tolist())
