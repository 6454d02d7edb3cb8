"""The self-forcing rollout (METHOD.md §5): the generator streams a video exactly as at inference, through
the same ``Engine.step`` as ``generate`` and the live server, and gradient flows only through each block's
last denoising step.

- Steps per block: the iteration's exit step (cycling 1, 2, 3, 4 over iterations) capped by the block's
  schedule (first block ``steps_first``, later blocks ``steps``); the block's output is the x̂0 of its last
  executed step.
- Cache writes are no-grad and detached (a t = 0 pass of x̂0 for clean context; for noisy context the K/V of
  x̂0 at t_ctx, re-noised when the exit left the last input elsewhere), so no gradient crosses blocks.
- ``replay=True`` rolls out entirely without gradients and keeps what ``replay_blocks`` needs to re-run each
  block's last step with gradients later, one block at a time ("replayed backprop"): the last-step inputs
  and the final cache, which holds every prefix a block saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flow import x0_from_v
from ..masks import ChunkPattern
from ..models.conditioning import Actions
from ..models.kv_cache import KVCache
from ..stream.engine import Engine, Noise
from ..stream.sampling import FewStep


@dataclass
class Rollout:
    video: torch.Tensor                 # G [B, C, T, H, W] (with grad unless replayed); given frames first
    last_inputs: list[tuple[torch.Tensor, float]]  # per generated block: (x, t) of its last step
    cache: KVCache
    steps: list[int]                    # steps run per generated block
    given: int = 0                      # frames given as the first block (prefill), not generated


def exit_steps(iteration: int, how: FewStep, n_blocks: int) -> list[int]:
    """Deterministic cycling 1, 2, 3, 4, 1, … over iterations, capped by each block's step count."""
    n = iteration % 4 + 1
    return [min(n, how.steps_for(b)) for b in range(n_blocks)]


def rollout(net, ctx: torch.Tensor, noise: Noise, shape: tuple[int, ...], how: FewStep, iteration: int,
            replay: bool = False, actions: Actions | None = None, prefill: torch.Tensor | None = None) -> Rollout:
    """G = the generator's video for ``ctx`` (shape = (C, T, H, W)), block by block with a KV cache;
    ``prefill`` (the first block's frames, given: a world model started from real frames) is written as
    clean context and leads G unchanged."""
    C, T, H, W = shape
    engine = Engine(net, how, (C, H, W), max_frames=T)
    pattern = engine.pattern
    first = None if actions is None or prefill is None else actions.frames_slice(0, prefill.shape[2])
    state = engine.start(ctx, None, noise, prefill, first)
    # the prompt's cross-attention K/V: once per rollout, in the graph (every block's last step uses them)
    with torch.set_grad_enabled(not replay):
        state.cache.cross = net.context_kv(ctx)
    steps = exit_steps(iteration, how, pattern.num_blocks(T))
    blocks, last_inputs, ran = ([] if prefill is None else [prefill]), [], []
    for b, (s, e) in enumerate(pattern.blocks(T)):
        if b < state.block:
            continue
        x0, state = engine.step(state, None if actions is None else actions.frames_slice(s, e), n_steps=steps[b],
                                grad_last=not replay, decode=False)
        last_inputs.append(state.last_input)
        ran.append(steps[b])
        blocks.append(x0)
    return Rollout(torch.cat(blocks, dim=2), last_inputs, state.cache, ran, 0 if prefill is None else prefill.shape[2])


def replay_blocks(net, ctx: torch.Tensor, ro: Rollout, pattern, target: torch.Tensor, loss_fn,
                  actions: Actions | None = None) -> torch.Tensor:
    """Re-run each block's last step with gradients against the cache prefix it saw in the rollout, and
    backpropagate ``loss_fn(x0_block, target_block)`` block by block; returns the summed loss (detached).
    With a loss that is a sum over blocks, the gradients equal those of the plain (non-replayed) path."""
    pattern = ChunkPattern.parse(pattern)
    cache = ro.cache
    total = torch.zeros((), device=target.device, dtype=torch.float64)
    generated = [(s, e) for s, e in pattern.blocks(target.shape[2]) if s >= ro.given]
    for (s, e), (x, t) in zip(generated, ro.last_inputs):
        with cache.prefix(s), torch.enable_grad():
            cache.cross = net.context_kv(ctx)  # rebuilt per block: its graph is freed by each backward
            t_vec = torch.full((x.shape[0],), float(t), device=x.device)
            a = None if actions is None else actions.frames_slice(s, e)
            v = net.velocity(x, t_vec, ctx, cache=cache, actions=a).float()
            loss = loss_fn(x0_from_v(x, t_vec, v), target[:, :, s:e])
            loss.backward()
        total += loss.detach().double()
    return total
