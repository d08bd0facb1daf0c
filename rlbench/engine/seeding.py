"""Every random choice of a run, derived from its seed: the same on every machine, process and rank."""

from __future__ import annotations

import functools
import hashlib
import random
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (run seed, step, purpose), identical across processes and machines."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(seed: int, stream: int, step: int) -> int:
    """The rollout sampling seed of ``step``; stream 0 is the run's own, any other an independent one."""
    return derive_seed(seed, "sample", step) if stream == 0 else derive_seed(seed, "sample", "stream", stream, step)


def prompt_indices(n_examples: int, seed: int, step: int, per_step: int) -> list[int]:
    """The prompts of ``step``: consecutive slices of a per-epoch shuffle, so every algorithm sees the same order."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_examples)
        order = _epoch_order(n_examples, seed, epoch)
        out.extend(order[offset : offset + per_step - len(out)])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """One epoch's shuffle (cached: shuffling 20k indices every step cost ~25 ms, 3% of a tiny-lab step)."""
    order = list(range(n_examples))
    random.Random(derive_seed(seed, "epoch", epoch)).shuffle(order)
    return tuple(order)
