"""The self-forcing rollout (METHOD.md §5): the generator streams a video exactly as at inference, with a KV
cache, and gradient flows only through each block's last denoising step.

- Steps per block: the iteration's exit step ``n_exit`` (cycling 1, 2, 3, 4 over iterations) capped by the
  block's schedule (first block ``steps_first``, later blocks ``steps``); the block's output is the x̂0 of
  its last executed step.
- Cache writes are no-grad and detached (a t = 0 pass of x̂0 for clean context, or the last step's K/V for
  noisy context), so no gradient crosses blocks.
- ``replay=True`` rolls out entirely without gradients and returns what ``replay_blocks`` needs to re-run
  each block's last step with gradients later, one block at a time ("replayed backprop"): the last-step
  inputs and the final cache, which holds every prefix a block saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.kv_cache import KVCache
from ..models.masks import ChunkPattern
from .engine import FewStep, Noise, few_step_block, few_step_times


@dataclass
class Rollout:
    video: torch.Tensor                 # G [B, C, T, H, W] (with grad unless replayed)
    last_inputs: list[tuple[torch.Tensor, float]]  # per block: (x, t) of its last step
    cache: KVCache
    steps: list[int]                    # steps run per block


def exit_steps(iteration: int, how: FewStep, n_blocks: int) -> list[int]:
    """Deterministic cycling 1, 2, 3, 4, 1, … over iterations, capped by each block's step count."""
    n = iteration % 4 + 1
    return [min(n, how.steps_for(b)) for b in range(n_blocks)]


def _v_of(net, ctx, cache, dual):
    def v_of(x_in, t_scalar, write=False):
        t_vec = torch.full((x_in.shape[0],), float(t_scalar), device=x_in.device)
        r = torch.zeros_like(t_vec) if dual else None
        return net(x_in, t_vec, ctx, cache=cache, update_cache=write, r=r).float()

    return v_of


def rollout(net, ctx: torch.Tensor, noise: Noise, shape: tuple[int, ...], pattern, how: FewStep, iteration: int,
            replay: bool = False) -> Rollout:
    pattern = ChunkPattern.parse(pattern)
    C, T, H, W = shape
    cache = net.new_cache(T, net.frame_tokens(H, W), pattern=pattern)
    # the prompt's cross-attention K/V: once per rollout, in the graph (every block's last step uses them)
    with torch.set_grad_enabled(not replay):
        cache.cross = net.context_kv(ctx)
    dual = net.cfg.dual_time
    v_of = _v_of(net, ctx, cache, dual)
    steps = exit_steps(iteration, how, pattern.num_blocks(T))
    blocks, last_inputs = [], []
    for b, (s, e) in enumerate(pattern.blocks(T)):
        eps = noise.draw((b, 0), (C, e - s, H, W))
        times = few_step_times(how.steps_for(b), how.t0)
        x0, last = few_step_block(v_of, eps, times, lambda k, shp, b=b: noise.draw((b, k), shp), n_steps=steps[b],
                                  write_last=how.context == "noisy", grad_last=not replay)
        last_inputs.append((last[0].detach(), last[1]))
        if how.context == "clean":
            with torch.no_grad():
                zeros = torch.zeros(x0.shape[0], device=x0.device)
                net(x0.detach(), zeros, ctx, cache=cache, update_cache=True, r=zeros if dual else None)
        blocks.append(x0)
    return Rollout(torch.cat(blocks, dim=2), last_inputs, cache, steps)


def replay_blocks(net, ctx: torch.Tensor, ro: Rollout, pattern, target: torch.Tensor, loss_fn) -> torch.Tensor:
    """Re-run each block's last step with gradients against the cache prefix it saw in the rollout, and
    backpropagate ``loss_fn(x0_block, target_block)`` block by block; returns the summed loss (detached).
    With a loss that is a sum over blocks, the gradients equal those of the plain (non-replayed) path."""
    pattern = ChunkPattern.parse(pattern)
    cache, dual = ro.cache, net.cfg.dual_time
    v_of = _v_of(net, ctx, cache, dual)
    total = torch.zeros((), device=target.device, dtype=torch.float64)
    for b, (s, e) in enumerate(pattern.blocks(target.shape[2])):
        x, t = ro.last_inputs[b]
        with cache.prefix(s), torch.enable_grad():
            cache.cross = net.context_kv(ctx)  # rebuilt per block: its graph is freed by each backward
            v = v_of(x, t)
            x0 = x - t * v
            loss = loss_fn(x0, target[:, :, s:e])
            loss.backward()
        total += loss.detach().double()
    return total
