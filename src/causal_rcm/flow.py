"""Rectified-flow parameterisation, time samplers, CFG and teacher samplers (METHOD.md §1, §6).

x_t = (1 − t)·x0 + t·ε,  v ≈ ε − x0,  x̂0 = x_t − t·v.  Times are RF times in [0, 1] everywhere.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

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
    """x̂0 = x_t − t·v, which is also the consistency function f(x_t, t) = x_t − t·v (f(x, 0) = x)."""
    return x_t - expand_t(t, x_t) * v


def cfg_combine(v_c: torch.Tensor, v_u: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: v = v_u + w·(v_c − v_u) (METHOD.md §1)."""
    return v_u + w * (v_c - v_u)


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast t [B] or [B, T] against a video x [B, C, T, H, W]."""
    if t.ndim == 1:
        return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return t[:, None, :, None, None].to(x.dtype)


def sample_t(kind: str, rng, shift_s: float = 3.0, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """One training time per sample from ``rng`` (``seeding.SampleRandom``: ``rand()`` / ``randn()`` give [B]):
    "shifted" t = shift(u; s), u ~ U[0, 1]; "logit_normal" log(t / (1 − t)) ~ N(mean, std²); "uniform"."""
    if kind == "shifted":
        return shift(rng.rand(), shift_s)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * rng.randn())
    if kind == "uniform":
        return rng.rand()
    raise ValueError(f"unknown time sampler {kind!r}; choose shifted, logit_normal or uniform")


def cfg_velocity(model_fn: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                 ctx: torch.Tensor, ctx_uncond: torch.Tensor | None, w: float, **kw) -> torch.Tensor:
    """v = v_u + w·(v_c − v_u), conditional and unconditional passes batched together."""
    if ctx_uncond is None or w == 1.0:
        return model_fn(x, t, ctx, **kw)
    both = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx_uncond]), **kw)
    return cfg_combine(*both.chunk(2), w)


def euler_times(steps: int, s: float, device=None) -> torch.Tensor:
    """steps + 1 decreasing times from 1 to 0 on a shifted uniform grid."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift(u, s).float().to(device)


@torch.no_grad()
def euler_sample(velocity: Velocity, noise: torch.Tensor, steps: int = 50, s: float = 5.0,
                 progress: Callable[[int], None] | None = None, keep: Sequence[float] | None = None):
    """Euler on the PF-ODE dx/dt = v from t = 1 (noise) to t = 0 over ``euler_times(steps, s)``; returns x0.

    With ``keep`` (RF times in [0, 1]) it returns ``(x0, states, times)`` instead: the trajectory is kept
    only at grid points, so ``states`` [B, K, *x.shape[1:]] holds x at the grid time nearest to each
    requested time (k_j = argmin_k |t_k − keep[j]|, a tie goes to the noisier point; k = 0 is the noise
    itself, k = steps is x0) and ``times`` (float32 [K]) the grid times t_{k_j} actually used.
    """
    times = euler_times(steps, s, noise.device)
    want: set[int] = set()
    if keep is not None:
        req = torch.as_tensor([float(t) for t in keep], dtype=torch.float32)
        if req.numel() and not bool(((req >= 0) & (req <= 1)).all()):
            raise ValueError(f"keep times must be RF times in [0, 1], got {[float(t) for t in keep]}")
        k_of = (times.cpu()[None, :] - req[:, None]).abs().argmin(1).tolist() if req.numel() else []
        want = set(k_of)
    # x is rebound (never modified in place) at every step, so a kept state is a reference, not a copy
    kept = {0: noise} if 0 in want else {}
    x = noise
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        x = x + (times[i + 1] - times[i]) * velocity(x, t)
        if i + 1 in want:
            kept[i + 1] = x
        if progress is not None:
            progress(i)
    if keep is None:
        return x
    states = (torch.stack([kept[k] for k in k_of], 1) if k_of
              else x.new_empty((x.shape[0], 0, *x.shape[1:])))
    return x, states, times.cpu()[torch.tensor(k_of, dtype=torch.long)]


def bell_weight(t: torch.Tensor) -> torch.Tensor:
    """w(t) = exp(−2(t − ½)²) − exp(−½) (METHOD.md §3)."""
    return torch.exp(-2 * (t - 0.5) ** 2) - math.exp(-0.5)
