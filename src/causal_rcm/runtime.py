"""Where code runs: the device a user asked for (checked before any work) and the matching autocast.

Nothing here changes process-wide settings behind a caller's back: ``set_matmul_precision`` is called by
the commands that want TF32 matmuls, once, where they start.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None`` → CUDA when present, else the CPU; ``cuda`` without CUDA → ValueError naming the fix."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA GPU (or torch is a CPU build); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return dev


def to_device(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t.to(device, dtype)`` without a host sync: a CPU tensor bound for CUDA goes through pinned memory
    with a non-blocking copy (a copy from pageable memory waits for every kernel queued before it, so the
    host could no longer run ahead of the GPU). The caching host allocator keeps the pinned buffer until
    the copy is done, so the caller may drop ``t`` at once."""
    device = torch.device(device) if device is not None else t.device
    if dtype is not None and t.dtype != dtype and t.device.type == "cpu":
        t = t.to(dtype)
    # (inside a torch.compile trace the copy is the graph's business: dynamo cannot trace pin_memory)
    if t.device.type == "cpu" and device.type == "cuda" and not torch.compiler.is_compiling():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, dtype) if dtype is not None else t.to(device)


def autocast_for(device: torch.device, precision: str = "bf16"):
    """bf16 (or fp16) autocast on CUDA; CPUs run fp32."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def set_matmul_precision(device: torch.device) -> None:
    """TF32 matmuls on CUDA (fp32 weights, bf16 autocast elsewhere): what the training stages use."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
