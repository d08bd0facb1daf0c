"""The hand-built batch the algorithm tests share: 2 prompts x 2 samples x up to 3 completion tokens.

    row  group  reward  valid tokens  log pi (current policy)
    0    0      1       3             -0.5  -1.0  -2.0
    1    0      0       2             -0.2  -0.3   pad
    2    1      1       1             -1.5   pad   pad
    3    1      1       2             -0.1  -0.4   pad

Padded positions hold garbage (large, distinct, some of them infinite in the robustness tests): a correct loss ignores
them and gives them exactly zero gradient. Expected numbers in the tests come from a separate hand calculation with
plain floats (never from rlbench's code); they are written out as literals.
"""

from __future__ import annotations

import torch

from rlbench.engine.batch import PolicyOutput, RolloutBatch

MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
LOGP = [[-0.5, -1.0, -2.0], [-0.2, -0.3, 25.0], [-1.5, -30.0, 7.0], [-0.1, -0.4, 3.0]]
REWARDS = [1.0, 0.0, 1.0, 1.0]
GROUPS = [0, 0, 1, 1]

# old log-probs such that log(pi / pi_old) = [[0, .1, .2], [-.3, .05], [.5], [.2, -.2]] on valid tokens
OLD_LOGP = [[-0.5, -1.1, -2.2], [0.1, -0.35, -4.0], [-2.0, 11.0, -9.0], [-0.3, -0.2, 40.0]]
# a reference for the k3 KL in the loss
REF_LOGP = [[-0.7, -0.8, -2.5], [-0.2, -0.1, -50.0], [-1.0, 5.0, 6.0], [-0.3, -0.4, 2.0]]
# a reference 0.1 .. 0.6 below LOGP: k1 = LOGP - REF_FOR_K1 = [[.1, .2, .3], [-.1, .4], [.2], [0, .6]]
REF_FOR_K1 = [[-0.6, -1.2, -2.3], [-0.1, -0.7, 8.0], [-1.7, -3.0, 1.0], [-0.1, -1.0, -12.0]]


def mask() -> torch.Tensor:
    return torch.tensor(MASK)


def make_batch(rewards: list[float] = REWARDS, groups: list[int] = GROUPS, **fields: torch.Tensor) -> RolloutBatch:
    b, t, p = len(rewards), len(MASK[0]), 2
    return RolloutBatch(
        input_ids=torch.zeros(b, p + t, dtype=torch.long),
        attention_mask=torch.ones(b, p + t, dtype=torch.long),
        response_mask=mask()[:b],
        prompt_len=p,
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(groups),
        **fields,
    )


def policy_output(logp: list[list[float]] = LOGP, **fields: torch.Tensor) -> PolicyOutput:
    """A forward pass whose log-probs are a leaf tensor, so the test can read d loss / d log pi."""
    return PolicyOutput(logprobs=torch.tensor(logp, requires_grad=True), **fields)


def assert_padding_has_zero_grad(grad: torch.Tensor) -> None:
    padded = mask() == 0
    assert torch.equal(grad[padded], torch.zeros(int(padded.sum()))), f"gradient leaks into padding: {grad}"


def close(actual: torch.Tensor | float, expected: list | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32), torch.tensor(expected), atol=atol, rtol=0)
