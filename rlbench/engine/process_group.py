"""The launcher's process group: how rlbench joins it, how long a collective may wait, and which device the
collectives take their tensors on.

- **Backend.** NCCL on GPUs, gloo on the CPU, one backend per run. NCCL serves CUDA tensors only (a CPU tensor
  handed to it fails with ``No backend type associated with device type cpu``), so every collective puts its
  tensors on :func:`group_device` first (:class:`rlbench.engine.distributed.Ranks` does).
- **Timeout** (``RLBENCH_DIST_TIMEOUT``, seconds, default :data:`DEFAULT_TIMEOUT_S`). Rank 0 evaluates alone while the
  other ranks wait at a barrier; NCCL's own default (10 minutes) aborts the run when an evaluation takes longer (a 7B
  model's greedy MATH-500 at 3,072 new tokens can). The default covers that with room to spare; a rank that is
  really stuck is then noticed after this long rather than never.
- **Launches rlbench does not support** are refused before any process group or model exists, in one line:
  DeepSpeed (``--fsdp`` is ZeRO-3's equivalent here) and a world that spans several machines.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from rlbench.core.config import ConfigError

TIMEOUT_ENV = "RLBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 7200  # 2 hours: a whole rank-0 evaluation of a 7B model fits; NCCL's 10 minutes does not


def timeout() -> timedelta:
    """How long a collective may wait for the other ranks (``$RLBENCH_DIST_TIMEOUT`` seconds, else 2 hours)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0 (default {DEFAULT_TIMEOUT_S})")
    return timedelta(seconds=seconds)


def refuse_unsupported_launch() -> None:
    """DeepSpeed and multi-machine launches, refused in one line before anything starts."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes"):
        raise ConfigError(
            "DeepSpeed is not supported: rlbench shards with torch's FSDP2, ZeRO-3's equivalent "
            "(weights, gradients and optimiser states split N ways); use rlbench train --processes N "
            "--fsdp (docs/real-models.md)"
        )
    world, local = os.environ.get("WORLD_SIZE", "").strip(), os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if world.isdigit() and local.isdigit() and int(world) > int(local):
        raise ConfigError(
            f"multi-machine training is not supported ({world} processes, {local} on this machine): "
            f"rank 0 alone writes the run folder and builds the tiny lab's warm-start; train on one "
            f"machine's GPUs with rlbench train --processes N [--fsdp] (docs/real-models.md)"
        )


def join(own: torch.device) -> tuple[int, int]:
    """Join the launcher's group (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``, as accelerate and torchrun
    export them) with this process's device ``own``: NCCL for a GPU, gloo otherwise. Returns (rank, world)."""
    if own.type == "cuda":
        torch.cuda.set_device(own)  # object collectives and barriers use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if own.type == "cuda" else "gloo", timeout=timeout())
    return dist.get_rank(), dist.get_world_size()


def group_device(preferred: torch.device) -> torch.device:
    """The device a collective over the default group takes its tensors on: ``preferred`` (the rank's own device)
    when the group serves its type, else the CPU when it serves that, else the group's own device type at this
    rank's local index. NCCL serves CUDA only, so its collectives run on the rank's GPU."""
    served = [d.type for d in dist.distributed_c10d._get_default_group()._device_types]
    if not served or preferred.type in served:
        return preferred
    if "cpu" in served:
        return torch.device("cpu")
    return torch.device(served[0], int(os.environ.get("LOCAL_RANK", "0")))
