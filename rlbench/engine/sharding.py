"""FSDP: the model, its reference and its value head sharded across the data-parallel ranks (torch's FSDP2,
``fully_shard``), so a 7B model's weights, gradients and optimiser states are split N ways instead of held whole by
every rank.

Sharding changes how a run is laid out, never what it computes: the global batch, every normaliser and the summed
gradients are those of :mod:`rlbench.engine.distributed`'s data parallelism, and the files a run writes have the
same format as a one-process run's (so a state saved under FSDP resumes in one process, and the other way round).

- Switched on by the launcher: ``accelerate launch`` with an FSDP config (``configs/accelerate/fsdp.yaml``, or
  ``--use_fsdp``) exports ``ACCELERATE_USE_FSDP=true``; ``rlbench train --processes N --fsdp`` launches that way.
  One process never shards.
- The model loads on the CPU, then each transformer block (the model's ``_no_split_modules`` classes, as
  accelerate's transformer auto-wrap picks them) and then the root are sharded onto the rank's device: no rank ever
  holds the whole model on its GPU. Weights stay fp32 masters (``precision: bf16`` is autocast over them).
- Gradients are *summed* over ranks (each rank's loss is already weighted by its share of the global minibatch):
  FSDP's reduce-scatter averages by default, so its divide factor is set to 1 (a plain SUM).
- Generation: decode lengths differ per rank, and a sharded model runs collectives in every forward, so a sharded
  model cannot decode on one rank alone. Each rank keeps a plain full-weight *rollout copy* for its generator (as a
  colocated vLLM engine holds its own weights), refreshed after every optimiser step from the shards, one tensor at
  a time (:class:`RolloutCopy`). On GPUs the copy sleeps in CPU memory while the model trains (as vLLM's sleep mode
  releases its weights) and wakes onto the GPU when the weights are synced, so the gather writes on the GPU and the
  step's generation finds it there: one move each way per step (two more on a step that evaluates). Host memory:
  one full copy per rank, as ``rlbench plan --fsdp`` counts it. Evaluation runs on rank 0, on that copy, with no
  collective.
- Every rank must make the same forward and backward calls: the training forward is the model's own (the packed fast
  path calls submodules directly, past FSDP's hooks; shared-prompt forwards depend on the rows), and a rank with
  fewer micro-batches pads with weight-0 ones (:func:`padded_micro_batches`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlbench.engine.distributed import Ranks, launched_world
from rlbench.engine.generation import Generation, Generator
from rlbench.engine.policy import Policy
from rlbench.engine.process_group import group_device

FSDP_ENV = "ACCELERATE_USE_FSDP"  # what `accelerate launch --use_fsdp` (or distributed_type: FSDP) exports


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (and started more than one process: one process never shards)."""
    return os.environ.get(FSDP_ENV, "").strip().lower() in ("1", "true", "yes") and launched_world() > 1


def is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (the tensor itself when it is not sharded)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor``, gathered from every rank (a collective for a sharded one)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def block_classes(*modules: nn.Module) -> set[str]:
    """Class names of the modules FSDP shards one by one: the models' ``_no_split_modules`` (peft's wrapper and a
    critic's backbone included)."""
    names: set[str] = set()
    for module in modules:
        for m in module.modules():
            names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard_module(module: nn.Module, mesh: Any, classes: set[str]) -> nn.Module:
    """Each block of ``classes`` in ``module``, then ``module`` itself, sharded across ``mesh``, gradients summed."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for m in list(module.modules()):
        if m is not module and type(m).__name__ in classes:
            fully_shard(m, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for m in module.modules():
        if isinstance(m, FSDPModule):
            # a plain sum (the trainer weights each rank's loss already): divide factor 1 and SUM collectives, not
            # the PREMUL_SUM that a factor alone would use (which gloo lacks)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return module


def local_parameters(module: nn.Module) -> int:
    """Parameters held by this rank (its shards; every parameter when nothing is sharded)."""
    return sum(local(p).numel() for p in module.parameters())


@dataclass
class Sharding:
    """The sharded run's layout: the device mesh, the rollout copy, and a full copy of the value head for saving."""

    mesh: Any
    ranks: Ranks
    rollout: Policy  # full weights on this rank's device, no gradient: what the generator decodes with
    value_head_copy: nn.Module | None = None  # full, filled from the shards when a checkpoint is written

    def full_policy(self, policy: Policy) -> Policy:
        """``policy``'s current weights, whole: the rollout copy (synced after every step) and the value head
        gathered into its copy. A collective: every rank calls it."""
        if self.value_head_copy is not None and policy.value_head is not None:
            load_full(self.value_head_copy, policy.value_head)
        return Policy(
            self.rollout.model,
            self.rollout.tokenizer,
            self.rollout.device,
            self.rollout.precision,
            self.value_head_copy,
        )


def shard_policy(policy: Policy, reference: Policy | None, ranks: Ranks) -> Sharding:
    """Shard ``policy`` (model and value head) and ``reference`` in place across every rank, onto ``policy.device``;
    first copy the full model (still on the CPU) to the device as the rollout copy."""
    from torch.distributed.device_mesh import init_device_mesh

    device = policy.device
    mesh = init_device_mesh(device.type, (ranks.world,))
    # the model is still on the CPU: so is its copy, until the generator first wakes it (see RolloutCopy)
    rollout_model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    rollout = Policy(rollout_model, policy.tokenizer, device, policy.precision)
    head_copy = copy.deepcopy(policy.value_head).requires_grad_(False) if policy.value_head is not None else None
    classes = block_classes(policy.model, *([policy.value_head] if policy.value_head is not None else []))
    shard_module(policy.model, mesh, classes)
    if policy.value_head is not None:
        shard_module(policy.value_head, mesh, classes)
    if reference is not None and reference.model is not policy.model:
        shard_module(reference.model, mesh, classes)
    return Sharding(mesh, ranks, rollout, head_copy)


@torch.no_grad()
def load_full(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s (sharded) parameters and buffers into the plain ``target`` of the same architecture, one
    tensor gathered at a time (a collective: every rank calls it)."""
    theirs = dict(source.state_dict(keep_vars=True))
    for name, t in target.state_dict(keep_vars=True).items():
        t.copy_(full(theirs[name].detach()))


class RolloutCopy:
    """A generator over the rollout copy: ``sync_weights`` gathers the sharded policy's weights into it (every rank),
    then hands the copy to the backend (which for vLLM pushes them on into its engine). ``generate`` wakes the copy
    onto the device, ``sleep`` sends it back to the CPU (nothing moves when the device is the CPU)."""

    def __init__(self, generator: Generator, sharding: Sharding) -> None:
        self.generator, self.sharding = generator, sharding

    def _place(self, device: torch.device) -> None:
        model = self.sharding.rollout.model
        if next(model.parameters()).device != device:
            model.to(device)

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def generate(self, prompt_ids: Sequence[list[int]], **kwargs: Any) -> Generation:
        self._place(self.sharding.rollout.device)
        return self.generator.generate(prompt_ids, **kwargs)

    def sync_weights(self, policy: Policy) -> None:
        # awake first: the gathered weights are written on the GPU, where the next generation reads them (only an
        # evaluation can come between), instead of into the sleeping CPU copy that generate would move up again
        self._place(self.sharding.rollout.device)
        if policy.model is not self.sharding.rollout.model:
            load_full(self.sharding.rollout.model, policy.model)
        self.generator.sync_weights(self.sharding.rollout)

    def sleep(self) -> None:
        self.generator.sleep()
        self._place(torch.device("cpu"))  # the update's activations and gradients get its memory


def padded_micro_batches(count: int, ranks: Ranks) -> int:
    """How many micro-batches every rank runs: the most any rank has (FSDP's collectives need equal calls)."""
    return max(ranks.gather_objects(count))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded gradients: each rank's part of the norm, summed over ranks, then clipped."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    norm = full(norm)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def nonfinite_weights(params: Iterable[torch.Tensor]) -> list[tuple[bool, bool]]:
    """(has nan, has inf) per parameter, over every rank's shard: a local flag each, all-reduced."""
    params = [local(p) for p in params]
    if not params:
        return []
    flags = torch.stack([torch.stack([torch.isnan(p).any(), torch.isinf(p).any()]) for p in params]).int()
    if dist.is_initialized():
        flags = flags.to(group_device(flags.device))  # the parameters' own device whenever the group serves it
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [(bool(a), bool(b)) for a, b in flags.tolist()]


# ----------------------------------------------------------------------------------------------- full state dicts


def full_state_dict(module: nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every tensor whole, on the CPU, on rank 0 (``main``); others get ``{}``.
    Gathered one tensor at a time (a collective: every rank calls it)."""
    out = {}
    for name, t in module.state_dict().items():
        whole = full(t.detach())
        if main:
            out[name] = whole.cpu().clone()
    return out


def _scatter(whole: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``whole`` laid out as ``like`` (a DTensor: each rank receives its shard)."""
    from torch.distributed.tensor import distribute_tensor

    if whole is None:
        whole = torch.empty(like.shape, dtype=like.dtype)
    return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements)


@torch.no_grad()
def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Load rank 0's full ``state`` (others pass None) into the sharded ``module``: each tensor is sent to its ranks."""
    for name, t in module.state_dict(keep_vars=True).items():
        whole = state[name] if state is not None else None
        if is_sharded(t):
            local(t).copy_(local(_scatter(whole, t)))
        else:
            box = [whole]
            dist.broadcast_object_list(box, src=0)
            t.copy_(box[0])


def full_optimizer_state(optimizer: torch.optim.Optimizer, main: bool) -> dict[str, Any]:
    """``optimizer.state_dict()`` in a one-process run's format (every state tensor whole), on rank 0."""
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(sd["state"]):
        state[index] = {}
        for key, value in sd["state"][index].items():
            value = full(value) if torch.is_tensor(value) else value
            state[index][key] = value.cpu().clone() if torch.is_tensor(value) else value
    return {"state": state, "param_groups": sd["param_groups"]} if main else {}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any] | None) -> None:
    """Load rank 0's one-process-format ``saved`` (others pass None) into the optimiser over sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    skeleton = None
    if saved is not None:  # what each state holds: big tensors travel one by one below, the rest in one broadcast
        skeleton = {
            "param_groups": saved["param_groups"],
            "state": {
                i: {
                    k: ("tensor", None) if torch.is_tensor(v) and v.ndim and is_sharded(params[i]) else ("value", v)
                    for k, v in s.items()
                }
                for i, s in saved["state"].items()
            },
        }
    box = [skeleton]
    dist.broadcast_object_list(box, src=0)
    skeleton = box[0]
    state: dict[int, dict[str, Any]] = {}
    for i in sorted(skeleton["state"]):
        state[i] = {}
        for key, (kind, value) in skeleton["state"][i].items():
            if kind == "tensor":
                whole = saved["state"][i][key] if saved is not None else None
                state[i][key] = _scatter(whole, params[i].detach())
            else:
                state[i][key] = value
    optimizer.load_state_dict({"state": state, "param_groups": skeleton["param_groups"]})
