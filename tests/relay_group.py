"""A process group that refuses CPU tensors, for CPU-only machines: what NCCL is to a GPU run.

NCCL serves CUDA tensors only; a CPU tensor handed to it fails with "No backend type associated with device type
cpu". ``init_process_group(backend="cuda:gloo")`` reproduces that refusal on a CPU-only torch, but leaves no device
a collective could run on. This group's only device is torch's ``lazy`` device (lazy tensors, computed by the
TorchScript backend on the CPU), so a collective that puts its tensors on the group's device runs, and one that
hands it CPU tensors fails as it would under NCCL. The data travels through an inner gloo group on CPU copies.

``install()`` registers it and makes every ``init_process_group`` in the process use it (each rank of a test run
calls it from a ``sitecustomize``); ``python relay_group.py`` is one rank of the collectives check.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import torch
import torch.distributed as dist

DEVICE_TYPE = "lazy"
REFUSAL = "No backend type associated with device type {}"  # c10d's words when a group has no backend for a device


def _done(result=None):
    future = torch.futures.Future()
    future.set_result(result)
    return torch._C._distributed_c10d._create_work_from_future(future)


class RelayGroup(dist.ProcessGroup):
    def __init__(self, store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        self.inner = dist.ProcessGroupGloo(dist.PrefixStore("relay", store), rank, size, timeout)

    @property
    def _device_types(self) -> list[torch.device]:
        return [torch.device(DEVICE_TYPE)]

    def getBackendName(self) -> str:
        return "relay"

    @staticmethod
    def _host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        for t in tensors:
            if t.device.type != DEVICE_TYPE:
                raise RuntimeError(REFUSAL.format(t.device.type))
        return [t.cpu() for t in tensors]

    @staticmethod
    def _back(tensors: list[torch.Tensor], host: list[torch.Tensor]) -> None:
        for t, h in zip(tensors, host):
            t.copy_(h.to(t.device))

    def allreduce(self, tensors, opts):
        host = self._host(tensors)
        inner = dist.AllreduceOptions()
        inner.reduceOp = opts.reduceOp
        self.inner.allreduce(host, inner).wait()
        self._back(tensors, host)
        return _done(tensors)

    def allgather(self, outputs, inputs, opts=None):
        host_in = self._host(inputs)
        host_out = [self._host(lst) for lst in outputs]
        self.inner.allgather(host_out, host_in).wait()
        for lst, host in zip(outputs, host_out):
            self._back(lst, host)
        return _done(outputs)

    def broadcast(self, tensors, opts):
        host = self._host(tensors)
        inner = dist.BroadcastOptions()
        inner.rootRank, inner.rootTensor = opts.rootRank, opts.rootTensor
        self.inner.broadcast(host, inner).wait()
        self._back(tensors, host)
        return _done(tensors)

    def barrier(self, opts=None):
        self.inner.barrier().wait()
        return _done()


def install() -> None:
    """Register the relay group and make every ``init_process_group`` of this process use it."""
    import torch._lazy.ts_backend

    torch._lazy.ts_backend.init()
    dist.Backend.register_backend("relay", RelayGroup, devices=[DEVICE_TYPE])
    original = dist.init_process_group

    @functools.wraps(original)
    def init_relay(*args, **kwargs):
        kwargs["backend"] = f"{DEVICE_TYPE}:relay"
        return original(*args[1:], **kwargs) if args else original(**kwargs)

    dist.init_process_group = init_relay


def check_rank() -> dict:
    """One rank of the collectives check: every collective rlbench runs, on the relay group; what each returned."""
    install()
    from rlbench.engine.distributed import init_ranks
    from rlbench.engine.sampler_gap import GapMeter
    from rlbench.engine.sharding import nonfinite_weights

    ranks = init_ranks("cpu")
    r = ranks.rank
    out: dict = {}
    try:
        dist.all_reduce(torch.ones(1))
        out["cpu_tensor"] = "accepted"
    except RuntimeError as exc:
        out["cpu_tensor"] = str(exc).splitlines()[0]
    out["sum_floats"] = ranks.sum_floats([r + 1.0, 0.5])
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    params[r].grad = torch.full((2,), float(r + 1))  # rank 0 touched the first, rank 1 the second, none the third
    ranks.sum_grads(params)
    out["grads"] = [None if p.grad is None else p.grad.tolist() for p in params]
    out["gather_rows"] = ranks.gather_rows(torch.tensor([[r, 10 * r]])).tolist()
    out["gather_objects"] = ranks.gather_objects({"rank": r})
    out["broadcast"] = ranks.broadcast(f"from {r}")
    gap = GapMeter()
    mask = torch.ones(1, 2)
    gap.add(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0 - r, -2.0]]), mask, shared=False)
    out["gap"] = gap.metrics(ranks)
    weights = [torch.zeros(2), torch.tensor([0.0, float("nan") if r == 1 else 0.0])]
    out["nonfinite"] = nonfinite_weights(weights)
    out["device"] = str(ranks.device)
    ranks.barrier()
    ranks.close()
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print("RESULT " + json.dumps(check_rank()), flush=True)
