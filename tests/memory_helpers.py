"""Tensor memory on the CPU, measured: the bytes of every tensor storage alive, and their peak.

The CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``; :class:`LiveBytes` counts what that
would: every storage a torch operation creates (a dispatch mode sees each one, backward included) until it is freed,
plus the storages of the tensors handed to :meth:`LiveBytes.hold` (those created before it started: weights).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.total = 0  # of self.live: an upper bound of the live bytes until swept
        self.peak = 0

    @property
    def now(self) -> int:
        self._sweep()
        return self.total

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these tensors too (created before the measurement, alive during it)."""
        for t in tensors:
            self._add(t)
        self._update_peak()

    def reset_peak(self) -> None:
        self.peak = self.now

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu" or t.layout != torch.strided:
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        held = self.live.get(key)
        if key and (held is None or held[0].expired()):  # a freed storage's address may be reused at once
            self.total += storage.nbytes() - (held[1] if held else 0)
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.total -= self.live.pop(key)[1]

    def _update_peak(self) -> None:
        if self.total > self.peak:  # only a possible new peak needs the exact figure: sweeping costs a pass
            self._sweep()
            self.peak = max(self.peak, self.total)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self._update_peak()
        return out
