"""Processes of a run: who this process is, and the mean of a step's metrics over all of them.

Alone (no torchrun) a run is rank 0 of 1 and nothing here communicates. Under ``torchrun`` the process group
is set up from the environment (gloo on CPUs, NCCL on GPUs); the global batch is split over ranks
(``seeding.local_ids``) and the logged metrics are their mean, so 1 and N processes log the same numbers.
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
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def mean_over_ranks(metrics: dict) -> dict:
    """Each metric averaged over the processes (identity when alone)."""
    if not initialized() or not metrics:
        return metrics
    keys = sorted(metrics)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return dict(zip(keys, (t / world_size()).tolist()))
