"""Data-parallel training across processes (``accelerate launch`` / ``torchrun``): who does what, and the collectives.

One run, N processes. Every rank holds the whole model and optimiser. Each step, rank r generates and grades a
contiguous share of the step's prompts; the completions are gathered so every rank holds the same global batch (the
exact layout one process would have built), advantages are computed on it identically everywhere, each rank trains
on its share of every minibatch with the loss weighted by that share of the *global* minibatch, and gradients are
summed across ranks before the optimiser step. So the global batch and every normaliser are those of one process;
only rank 0 writes files.

Every collective runs on the process group's device (:attr:`Ranks.device`, from
:func:`rlbench.engine.process_group.group_device`): the rank's GPU under NCCL, which refuses CPU tensors, and the CPU
under gloo. Results come back on the caller's device.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from rlbench.engine import process_group
from rlbench.engine.generation import Generation, assemble, left_pad, stop_ids
from rlbench.engine.policy import Policy, pick_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where the collectives' tensors go: the process group's device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (``n`` divisible by the world size)."""
        size = n // self.world
        return range(self.rank * size, (self.rank + 1) * size)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equally shaped ``tensor`` along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        mine = tensor.contiguous().to(self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        return torch.cat(parts).to(tensor.device)

    def sum_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks; a parameter no rank touched keeps ``grad=None`` (AdamW then skips it, as in one
        process). FSDP's sharded parameters (DTensors) are skipped: their reduce-scatter has summed them already."""
        if self.world == 1:
            return
        from torch.distributed.tensor import DTensor

        params = [p for p in params if not isinstance(p, DTensor)]
        if not params:
            return
        touched = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(touched)
        for p, n in zip(params, touched.tolist()):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if p.grad.device == self.device:
                dist.all_reduce(p.grad)
            else:  # gradients on another device than the group's (never under NCCL, where both are the rank's GPU)
                summed = p.grad.to(self.device)
                dist.all_reduce(summed)
                p.grad.copy_(summed.to(p.grad.device))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (decisions that must agree, such as whether the budget is spent)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """End the process group once every rank is done: a rank that exits while another still tears down its
        communication threads can abort it (gloo's "terminate called without an active exception")."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def launched_world() -> int:
    """The number of processes the launcher (accelerate, torchrun) started; 1 when run directly."""
    value = os.environ.get("WORLD_SIZE", "1").strip()
    return int(value) if value.isdigit() else 1


def init_ranks(device: str) -> Ranks:
    """Join the launcher's process group (NCCL on GPUs, gloo on the CPU; :mod:`rlbench.engine.process_group`);
    one process: no group. DeepSpeed and multi-machine launches are refused here, before anything loads."""
    process_group.refuse_unsupported_launch()
    world = launched_world()
    if world == 1:
        return Ranks()
    rank = int(os.environ.get("RANK", "0"))
    own = pick_device(rank_device(device, Ranks(rank, world)))
    rank, world = process_group.join(own)
    return Ranks(rank, world, process_group.group_device(own))


def rank_device(device: str, ranks: Ranks) -> str:
    """Each rank's own GPU under a launcher (``cuda:LOCAL_RANK``); the configured device otherwise."""
    if ranks.world == 1 or device == "cpu" or not torch.cuda.is_available():
        return device
    return f"cuda:{os.environ.get('LOCAL_RANK', ranks.rank)}"


def gather_generation(
    gen: Generation, grades: list[Any], prompt_ids: list[list[int]], policy: Policy, ranks: Ranks
) -> tuple[Generation, list[Any]]:
    """Every rank's completions and grades joined into the layout one process would have built for ``prompt_ids``."""
    P = gen.prompt_len
    lengths = gen.response_mask.sum(1).long().tolist()
    rows = [
        (gen.input_ids[i, P : P + n].tolist(), None if gen.logprobs is None else gen.logprobs[i, :n].tolist())
        for i, n in enumerate(lengths)
    ]
    parts = ranks.gather_objects((rows, grades))
    rows = [row for part, _ in parts for row in part]
    grades = [g for _, part in parts for g in part]
    tok, device = policy.tokenizer, policy.device
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    logprobs = None if rows[0][1] is None else torch.zeros((len(rows), width))
    for i, (ids, lps) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if logprobs is not None:
            logprobs[i, : len(lps)] = torch.tensor(lps)
    ids, mask = left_pad(prompt_ids, tok.pad_token_id, device)
    stops = stop_ids(tok, policy.model)
    lp = None if logprobs is None else logprobs.to(device)
    return assemble(ids, mask, tokens.to(device), stops, tok.pad_token_id, tok, lp), grades


def weighted_means(per_rank: list[list[tuple[float, dict[str, float]]]]) -> dict[str, float]:
    """One minibatch's loss terms: each micro-batch's value weighted by its share of the minibatch (as its loss is),
    over every rank's micro-batches; a single micro-batch's values as they are."""
    terms = [t for rank in per_rank for t in rank]
    if len(terms) == 1:
        return terms[0][1]
    total = sum(w for w, _ in terms)
    keys = list(dict.fromkeys(k for _, parts in terms for k in parts))
    if total <= 0:  # every row inert: only weight-0 stand-in rows ran
        return {k: statistics.fmean(p[k] for _, p in terms if k in p) for k in keys}
    return {k: sum(w * p[k] for w, p in terms if k in p) / sum(w for w, p in terms if k in p) for k in keys}
