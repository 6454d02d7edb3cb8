"""Streaming generation chunk by chunk with a KV cache (METHOD.md §6).

One loop serves every causal model: for each block of the chunk pattern it denoises the block against the
cache (read-only calls), writes the block into the cache, and hands the block's frames to the consumer
at once. Two ways to denoise a block:

- ``FewStep`` (distilled students, no CFG): times [t0, mid_1, …, mid_{n−1}, 0]; each step
  x̂0 = x − t·v, then x ← (1 − t_next)·x̂0 + t_next·ε_fresh; the last step returns x̂0.
- ``EulerCFG`` (a causal teacher): Euler on the PF-ODE on a shifted grid with classifier-free guidance;
  conditional and unconditional rows share one cache of batch 2B. Both take a separate step count for the
  first block (``steps_first``), which has no context to lean on.

Context write: "clean" runs a t = 0 pass of the finished block; "noisy" (students trained with noisy
context) keeps the K/V of the last step's input instead, saving one forward per block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..flow import euler_times, x0_from_v
from ..models.masks import ChunkPattern

T0 = 1600 / 1601
# step count -> intermediate times (METHOD.md §6: mids from (15/16, 5/6, 5/8))
MIDS = {1: (), 2: (5 / 6,), 3: (15 / 16, 5 / 8), 4: (15 / 16, 5 / 6, 5 / 8)}


def few_step_times(n: int, t0: float = T0) -> list[float]:
    if n not in MIDS:
        raise ValueError(f"few-step sampling takes 1 to 4 steps per chunk, got {n}")
    return [t0, *MIDS[n], 0.0]


class Noise:
    """ε for sample i at a given (chunk, step) tag, from its own generator seeded by (seed, i, tag):
    any sample of any call can be regenerated alone."""

    def __init__(self, seed: int, sample_ids: list[int], device, dtype=torch.float32):
        self.seed, self.ids, self.device, self.dtype = seed, list(sample_ids), device, dtype

    def draw(self, tag: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty((len(self.ids), *shape))
        for j, i in enumerate(self.ids):
            s = int(np.random.SeedSequence([self.seed, i, *tag]).generate_state(1)[0])
            out[j] = torch.randn(shape, generator=torch.Generator().manual_seed(s))
        return out.to(self.device, self.dtype)


def few_step_block(v_of, eps, times: list[float], draw, n_steps: int | None = None, write_last: bool = False,
                   grad_last: bool = False):
    """Denoise one block (METHOD.md §6) from ε: x_{t0} = t0·ε (the clean part is unknown, its mean is 0);
    each step x̂0 = x − t·v, then x ← (1 − t_next)·x̂0 + t_next·ε_k with ε_k = draw(k, shape).

    ``n_steps`` (≤ len(times) − 1) exits early with that step's x̂0 (self-forcing's step cycling);
    ``write_last`` makes the last call append its K/V (noisy context); ``grad_last`` runs only the last
    call with autograd. Returns (x̂0, (x, t) of the last call's input)."""
    n = len(times) - 1 if n_steps is None else n_steps
    x = times[0] * eps
    for k in range(n):
        last = k == n - 1
        with torch.set_grad_enabled(grad_last and last):
            v = v_of(x, times[k], write=write_last and last)
            x0 = x0_from_v(x, torch.full((x.shape[0],), times[k], device=x.device), v)
        if not last:
            x = (1 - times[k + 1]) * x0 + times[k + 1] * draw(k + 1, tuple(x.shape[1:]))
    return x0, (x, times[n - 1])


@dataclass(frozen=True)
class FewStep:
    steps_first: int = 4
    steps: int = 2
    t0: float = T0
    context: str = "clean"  # or "noisy"

    def steps_for(self, block: int) -> int:
        return self.steps_first if block == 0 else self.steps


@dataclass(frozen=True)
class EulerCFG:
    steps: int = 50
    cfg: float = 3.0
    shift: float = 3.0
    steps_first: int | None = None  # Euler steps of the first block (None: ``steps``, as every other block)

    def steps_for(self, block: int) -> int:
        return self.steps_first if (block == 0 and self.steps_first is not None) else self.steps


def stream(net, ctx: torch.Tensor, ctx_uncond: torch.Tensor | None, noise: Noise, shape: tuple[int, ...],
           pattern: ChunkPattern | str, how: FewStep | EulerCFG,
           on_block: Callable[[int, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Generate [B, C, T, H, W] block by block; returns the video and the seconds each block took.

    ``shape`` = (C, T, H, W); ``on_block(b, x0_block)`` receives each finished block immediately.
    """
    pattern = ChunkPattern.parse(pattern)
    C, T, H, W = shape
    N = net.frame_tokens(H, W)
    guided = isinstance(how, EulerCFG) and ctx_uncond is not None and how.cfg != 1.0
    ctx_all = torch.cat([ctx, ctx_uncond]) if guided else ctx
    cache = net.new_cache(T, N, pattern=pattern)
    blocks, seconds = [], []
    dual = net.cfg.dual_time
    for b, (s, e) in enumerate(pattern.blocks(T)):
        t_start = time.perf_counter()
        x = noise.draw((b, 0), (C, e - s, H, W))
        B = x.shape[0]
        zeros = torch.zeros(B, device=x.device)

        def v_of(x_in, t_scalar, write=False):
            t_vec = torch.full((x_in.shape[0],), float(t_scalar), device=x_in.device)
            r = torch.zeros_like(t_vec) if dual else None  # MeanFlow students: x̂0 from u(x, r = 0, t)
            return net(x_in, t_vec, ctx_all, cache=cache, update_cache=write, r=r).float()

        if isinstance(how, FewStep):
            x, _ = few_step_block(v_of, x, few_step_times(how.steps_for(b), how.t0),
                                  lambda k, shp, b=b: noise.draw((b, k), shp), write_last=how.context == "noisy")
            if how.context == "clean":
                net(x, zeros, ctx_all, cache=cache, update_cache=True,
                    r=zeros if dual else None)
        else:
            n = how.steps_for(b)
            grid = euler_times(n, how.shift, x.device)
            for k in range(n):
                xin = torch.cat([x, x]) if guided else x
                v = v_of(xin, grid[k])
                if guided:
                    v_c, v_u = v.chunk(2)
                    v = v_u + how.cfg * (v_c - v_u)
                x = x + (grid[k + 1] - grid[k]) * v
            xin = torch.cat([x, x]) if guided else x
            tz = torch.zeros(xin.shape[0], device=x.device)
            net(xin, tz, ctx_all, cache=cache, update_cache=True, r=tz if dual else None)
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t_start)
        blocks.append(x)
        if on_block is not None:
            on_block(b, x)
    return torch.cat(blocks, dim=2), seconds
