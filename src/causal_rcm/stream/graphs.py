"""The per-chunk DiT forward captured once as a CUDA graph and replayed for every later chunk.

With the static-shape KV cache (``models/static_cache.py``) a chunk's forward reads and writes fixed addresses
only: the input chunk, its time, the prompt's cross-attention K/V, the cache buffers and the per-block
buffers ``prepare`` fills outside the graph. ``GraphedVelocity`` captures ``net.velocity`` for each input
shape and cache layout it meets (the visible prefix of the cache grows until the cache is full, then stays:
a handful of captures, the first block's among them) and replays it after
copying the inputs in; the eager path computes the same thing and is the fallback where CUDA graphs are
unavailable. A context write (``write=True``) replays the same graph and then records the block in the
cache. The captures outlive a stream: ``Engine.start(..., reuse=old_state)`` hands them to the next one.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..models.conditioning import Actions


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor
    actions: Actions | None
    out: torch.Tensor


class GraphedVelocity:
    def __init__(self, net, cache, ctx: torch.Tensor, warmup: int = 2):
        self.net, self.cache, self.ctx, self.warmup = net, cache, ctx, warmup
        self.graphs: dict[tuple, _Captured] = {}

    def _fn(self, x, t, actions):
        return self.net.velocity(x, t, self.ctx, cache=self.cache, update_cache=False, actions=actions).float()

    def _capture(self, x, t, actions) -> _Captured:
        sx, st = x.clone(), t.clone()
        sa = None if actions is None else Actions(actions.features.clone(), actions.valid.clone())
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        # casts made inside the graph come from its own memory pool, not from autocast's cache
        ctx = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if autocast else nullcontext()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), ctx:  # warm-up (lazy allocations, Triton autotuning) off the capture
            for _ in range(self.warmup):
                self._fn(sx, st, sa)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), ctx:
            out = self._fn(sx, st, sa)
        return _Captured(graph, sx, st, sa, out)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, actions: Actions | None = None,
                 write: bool = False) -> torch.Tensor:
        """v for the prepared block: replayed (captured on first use of this shape); the result is a fixed
        buffer the next call overwrites, so callers consume it first."""
        key = (tuple(x.shape), tuple(t.shape), actions is not None, self.cache.layout)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, actions)
        g = self.graphs[key]
        g.x.copy_(x)
        g.t.copy_(t)
        if actions is not None:
            g.actions.features.copy_(actions.features)
            g.actions.valid.copy_(actions.valid)
        g.graph.replay()
        if write:
            self.cache.commit(self.cache.prepared)
        return g.out
