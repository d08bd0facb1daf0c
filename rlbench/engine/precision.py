"""What each ``precision`` setting means for the weights, the forward pass and the optimiser, and the guard that
refuses ``bf16-pure`` when its learning rate is too small to change bf16 weights at all.

- ``fp32``: fp32 weights, fp32 forward, fp32 optimiser (the tiny lab's; numerically unchanged since the start).
- ``bf16``: fp32 master weights, the forward under bf16 autocast, AdamW on the fp32 masters (what TRL's ``bf16=True``
  and verl's FSDP mixed precision do).
- ``bf16-pure``: bf16 weights, updated in place by AdamW (half the weight memory; an update smaller than half a bf16
  spacing rounds away, so small learning rates do not train: see :func:`bf16_step_check`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16", "bf16-pure")  # RunConfig.precision's values
SAMPLE_PER_MATRIX = 4096  # weights read from each matrix for the median: enough for 3 digits, cheap on a 7B model


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype the weights are loaded in: bf16 only for ``bf16-pure`` (``bf16`` keeps fp32 masters)."""
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``bf16``; nothing otherwise (fp32 runs in fp32, bf16-pure weights are already bf16)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def smallest_bf16_step(abs_weight: float) -> float:
    """About the smallest update that changes a bf16 weight of magnitude ``abs_weight``: half its spacing.

    bf16 keeps 8 significant bits, so the spacing near ``w`` is at least ``|w| * 2^-8``; an update rounds away
    unless it exceeds half of that, ``|w| * 2^-9``.

    >>> smallest_bf16_step(0.02)  # a typical LLM weight: 1e-6 is 39 times too small to move it
    3.90625e-05
    """
    return abs_weight * 2.0**-9


@dataclass
class StepCheck:
    lr: float
    median_abs: float  # median |w| over the bf16 weight matrices that AdamW updates
    movable: float  # share of the sampled weights that a step of size lr changes (see movable_share)

    @property
    def stuck(self) -> bool:
        """The median weight cannot move: most of the model would not train."""
        return self.lr < smallest_bf16_step(self.median_abs)


def bf16_step_check(params: Iterable[torch.nn.Parameter], lr: float) -> StepCheck | None:
    """How many of the trainable bf16 weight matrices an AdamW step of about ``lr`` can change; None if there are
    none (fp32 weights, or LoRA adapters, which peft keeps in fp32).

    An AdamW step moves each weight by about ``lr`` (its update is ``lr * m / sqrt(v)``, near ±lr early on). The median
    is over an evenly strided sample of every matrix (:data:`SAMPLE_PER_MATRIX` weights each), not a sort of billions.

    >>> w = torch.nn.Parameter(torch.full((4, 4), 0.02, dtype=torch.bfloat16))
    >>> check = bf16_step_check([w], lr=1e-6)
    >>> check.stuck, check.movable
    (True, 0.0)
    >>> bf16_step_check([w], lr=1e-4).stuck
    False
    """
    samples = []
    for p in params:
        if p.requires_grad and p.dtype == torch.bfloat16 and p.ndim >= 2 and p.numel():
            flat = p.detach().reshape(-1)
            stride = max(1, flat.numel() // SAMPLE_PER_MATRIX)
            samples.append(flat[::stride][:SAMPLE_PER_MATRIX].float().abs().cpu())
    if not samples:
        return None
    values = torch.cat(samples)
    return StepCheck(lr=lr, median_abs=float(values.median()), movable=float(movable_share(values, lr)))


def movable_share(abs_weights: torch.Tensor, step: float) -> torch.Tensor:
    """The share of bf16 weights (given as ``|w|``) that an update of size ``step`` changes: those whose exact half
    spacing is below it (a zero weight moves with any update).

    With ``|w| = m * 2^e``, ``m`` in [0.5, 1), bf16's spacing there is ``2^(e-8)``, half of it ``2^(e-9)``:

    >>> movable_share(torch.tensor([0.02, 0.0004, 0.0]), 1e-6)  # 0.02 needs > 6.1e-5; 0.0004 needs > 9.5e-7
    tensor(0.6667)
    """
    exponent = torch.frexp(abs_weights.float()).exponent
    half_spacing = torch.ldexp(torch.ones_like(abs_weights, dtype=torch.float), exponent - 9)
    return ((abs_weights == 0) | (half_spacing < step)).float().mean()


def stuck_message(check: StepCheck) -> str:
    """One line: why ``bf16-pure`` was refused, and the two ways on."""
    return (
        f"precision=bf16-pure: optim.lr={check.lr:g} is too small to change bf16 weights of this model (median "
        f"|w| = {check.median_abs:.3g}, which moves only for steps above {smallest_bf16_step(check.median_abs):.2g}; "
        f"an lr-sized step could move {check.movable:.1%} of the weights); use precision: bf16 (fp32 master "
        f"weights under bf16 autocast), or set allow_stuck_bf16: true to run anyway"
    )
