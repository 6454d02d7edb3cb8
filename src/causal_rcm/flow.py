"""Rectified-flow parameterisation, time samplers, CFG and teacher samplers (METHOD.md §1, §6).

x_t = (1 − t)·x0 + t·ε,  v ≈ ε − x0,  x̂0 = x_t − t·v.  Times are RF times in [0, 1] everywhere.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> v


def shift(u: torch.Tensor | float, s: float):
    """shift(u; s) = s·u / (1 + (s − 1)·u): pushes times toward 1 (noisier) for s > 1."""
    return s * u / (1 + (s - 1) * u)


def noisy(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·ε, with t of shape [B] or per frame [B, T] (frames on axis 2)."""
    tt = expand_t(t, x0)
    return (1 - tt) * x0 + tt * eps


def x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x̂0 = x_t − t·v."""
    return x_t - expand_t(t, x_t) * v


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast t [B] or [B, T] against a video x [B, C, T, H, W]."""
    if t.ndim == 1:
        return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return t[:, None, :, None, None].to(x.dtype)


def sample_t_shifted(n: int, s: float, generator=None, device=None) -> torch.Tensor:
    """t = shift(u; s), u ~ U[0, 1]."""
    return shift(torch.rand(n, generator=generator, device=device), s)


def sample_t_logit_normal(n: int, mean: float, std: float, generator=None, device=None) -> torch.Tensor:
    """log(t / (1 − t)) ~ N(mean, std²)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def sample_t(kind: str, n: int, generator=None, device=None, shift_s: float = 3.0, mean: float = 0.0,
             std: float = 1.0) -> torch.Tensor:
    if kind == "shifted":
        return sample_t_shifted(n, shift_s, generator, device)
    if kind == "logit_normal":
        return sample_t_logit_normal(n, mean, std, generator, device)
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"unknown time sampler {kind!r}; choose shifted, logit_normal or uniform")


def cfg_velocity(model_fn: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                 ctx: torch.Tensor, ctx_uncond: torch.Tensor | None, w: float, **kw) -> torch.Tensor:
    """v = v_u + w·(v_c − v_u), conditional and unconditional passes batched together."""
    if ctx_uncond is None or w == 1.0:
        return model_fn(x, t, ctx, **kw)
    both = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx_uncond]), **kw)
    v_c, v_u = both.chunk(2)
    return v_u + w * (v_c - v_u)


def euler_times(steps: int, s: float, device=None) -> torch.Tensor:
    """steps + 1 decreasing times from 1 to 0 on a shifted uniform grid."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift(u, s).float().to(device)


@torch.no_grad()
def euler_sample(velocity: Velocity, noise: torch.Tensor, steps: int = 50, s: float = 5.0,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Euler on the PF-ODE dx/dt = v from t = 1 (noise) to t = 0."""
    times = euler_times(steps, s, noise.device)
    x = noise
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        x = x + (times[i + 1] - times[i]) * velocity(x, t)
        if progress is not None:
            progress(i)
    return x


def bell_weight(t: torch.Tensor) -> torch.Tensor:
    """w(t) = exp(−2(t − ½)²) − exp(−½) (METHOD.md §3)."""
    return torch.exp(-2 * (t - 0.5) ** 2) - math.exp(-0.5)
