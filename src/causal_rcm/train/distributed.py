"""Processes of a run: who this process is, what they agree on, and how a step's batch splits over them.

Alone (no torchrun) a run is rank 0 of 1 and nothing here communicates. Under ``torchrun`` the process group
is set up from the environment (gloo on CPUs, NCCL on GPUs); the global batch is split over ranks
(``seeding.local_ids``) and, within a rank, into ``grad_accum`` micro-batches (``micro_batches``); the logged
metrics are their mean, so 1 and N processes log the same numbers.

Every decision that changes control flow (skip a non-finite step, stop at the time limit, which checkpoint
to resume) is taken *together* (``all_finite``, ``any_rank``, ``broadcast_object``): one rank branching alone
would leave the others waiting in a collective forever.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or initialized():
        if initialized() and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def ensure_group(device: torch.device) -> None:
    """A process group even for one process: FSDP2 with a world size of 1 (the one-GPU benchmarks) needs a
    device mesh, hence a group. An in-memory store: nothing listens on a port."""
    if initialized():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1)


def _device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def mean_over_ranks(metrics: dict) -> dict:
    """Each metric averaged over the processes (identity when alone)."""
    if not initialized() or world_size() == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return dict(zip(keys, (t / world_size()).tolist()))


def all_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` is finite on every rank (a non-finite step is skipped by all ranks or by none)."""
    ok = bool(torch.isfinite(x.detach()).all())
    if not initialized() or world_size() == 1:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=_device())
    dist.all_reduce(t)
    return float(t) == 0.0


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (e.g. one rank ran past the time limit)."""
    if not initialized() or world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t)
    return float(t) > 0


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a decision rank 0 takes for all, such as the checkpoint to resume)."""
    if not initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device(_device()))
    return box[0]


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (None on the others)."""
    if not initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if initialized() and world_size() > 1:
        dist.barrier()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded, DTensor) tensor; a plain tensor is all of itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether the module's parameters are sharded over the processes (FSDP2 makes them DTensors)."""
    return any(hasattr(p, "to_local") for p in module.parameters())


def micro_batches(ids: range, accum: int) -> list[range]:
    """A rank's share of the global batch in ``accum`` equal micro-batches (gradient accumulation)."""
    if accum < 1 or len(ids) % accum:
        raise ValueError(f"this rank's {len(ids)} samples do not split into parallel.grad_accum={accum} "
                         "micro-batches; make train.batch a multiple of world size × grad_accum")
    per = len(ids) // accum
    return [range(ids.start + i * per, ids.start + (i + 1) * per) for i in range(accum)]


def on_main(fn):
    """``fn()`` on rank 0 alone (work one process does, such as writing a dataset or a report); every rank
    returns its result, or raises its error, once it is done."""
    if not initialized() or world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # handed to every rank, raised there too
            error = e
    result, error = broadcast_object((result, error) if is_main() else None)
    if error is not None:
        raise error
    return result
