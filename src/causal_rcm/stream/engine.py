"""Streaming generation block by block with a KV cache (METHOD.md §6): one step at a time.

    engine = Engine(net, FewStep("c3-3", 4, 2), latent_shape=(C, H, W))
    state = engine.start(ctx, ctx_uncond, Noise(seed, ids, device))
    frames, state = engine.step(state, actions=None)      # the next block, decoded, handed over at once

``StreamState`` is everything a stream carries between blocks: the KV cache (its policy decides which
blocks it keeps, so a windowed stream is endless), the prompt context, the noise, the block index and the
decoder state. ``step`` is the one loop body of ``generate``, the live server and the self-forcing rollout;
``stream`` is a loop over it. Per block:

- ``FewStep`` (distilled students, no CFG): from ε, each step x̂0 = x − t·v, x ← (1 − t_next)·x̂0 + t_next·ε;
  then the context write (clean, or noisy at t_ctx: ``stream/sampling.py``).
- ``EulerCFG`` (a causal teacher): Euler on the PF-ODE with classifier-free guidance; conditional and
  unconditional rows share one cache of batch 2B; then a clean write.

Actions (world models) condition the block's frames (``models/conditioning.Actions``); the unconditional
CFG rows get "no action". ``prefill`` writes given frames (I2V, a world model started from real frames) as
the first block's clean context.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..flow import cfg_combine, euler_times, x0_from_v
from ..kv_policy import FULL, KVPolicy
from ..masks import ChunkPattern
from ..models.conditioning import Actions
from ..models.kv_cache import KVCache
from ..runtime import to_device
from .codec import PixelCodec, VideoCodec
from .sampling import EulerCFG, FewStep

CTX_NOISE_TAG = 1000  # the noise of a re-noised context write, apart from the denoising steps' tags


class Noise:
    """ε for sample i at a given (block, step) tag, from its own generator seeded by (seed, i, tag):
    any sample of any call can be regenerated alone."""

    def __init__(self, seed: int, sample_ids: list[int], device, dtype=torch.float32):
        self.seed, self.ids, self.device, self.dtype = seed, list(sample_ids), device, dtype

    def draw(self, tag: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty((len(self.ids), *shape))
        for j, i in enumerate(self.ids):
            s = int(np.random.SeedSequence([self.seed, i, *tag]).generate_state(1)[0])
            out[j] = torch.randn(shape, generator=torch.Generator().manual_seed(s))
        return to_device(out, self.device, self.dtype)  # no host sync per draw


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


@dataclass
class StreamState:
    cache: KVCache
    ctx: torch.Tensor                      # the rows the network sees: [cond | uncond] when guided
    noise: Noise
    block: int = 0                         # the next block to generate
    codec_state: Any = None
    last_input: tuple[torch.Tensor, float] | None = None  # (x, t) of the last block's last denoising call
    seconds: list[float] = field(default_factory=list)    # wall time of every block
    graphed: Any = None                    # the captured per-chunk forward (Engine(graphs=True))

    @property
    def frame(self) -> int:
        """The next frame's index (its RoPE position)."""
        return self.cache.next_frame


class Engine:
    """The static half of streaming: the network, how it is sampled, the latent shape, codec and KV policy.

    ``static=True`` streams through the fixed-shape KV cache (``models/static_cache.py``); ``graphs=True``
    (CUDA; implies static) also captures the per-chunk forward as a CUDA graph on its first use and replays
    it (``stream/graphs.py``); ``compile=True`` compiles the blocks around their attention first
    (``WanDiT.compile_for_streaming``, in place: the network stays compiled). All paths compute the same
    frames (compiled: within bf16 rounding)."""

    def __init__(self, net, sampling: FewStep | EulerCFG, latent_shape: tuple[int, int, int],
                 codec: VideoCodec | None = None, policy: KVPolicy = FULL, max_frames: int | None = None,
                 static: bool = False, graphs: bool = False, compile: bool = False):
        if not isinstance(sampling, (FewStep, EulerCFG)):
            raise ValueError(f"block-by-block streaming needs a causal model; this one samples with {sampling.method}")
        if graphs and not torch.cuda.is_available():
            raise ValueError("CUDA graphs need a CUDA GPU; stream without graphs=True here")
        self.net, self.sampling = net, sampling
        self.pattern = ChunkPattern.parse(sampling.pattern)
        self.latent_shape, self.codec = tuple(latent_shape), codec or PixelCodec()
        self.policy, self.max_frames = policy, max_frames
        self.static, self.graphs = static or graphs, graphs
        if compile:
            net.compile_for_streaming()
        self.guided = isinstance(sampling, EulerCFG) and sampling.cfg != 1.0
        self.decode_stream = None  # realtime.py's side CUDA stream, made once and kept for every video

    def start(self, ctx: torch.Tensor, ctx_uncond: torch.Tensor | None, noise: Noise,
              prefill: torch.Tensor | None = None, prefill_actions: Actions | None = None,
              reuse: StreamState | None = None) -> StreamState:
        """A fresh stream; ``prefill`` [B, C, f, H, W] (the first block's frames) is written as clean context.
        ``reuse``: a stream of this engine that is over; the new one takes its static cache and captured graphs
        (same batch and prompt length; otherwise, or without a static cache, it is ignored). Never pass a
        stream that is still being stepped."""
        guided = self.guided and ctx_uncond is not None
        C, H, W = self.latent_shape
        rows = torch.cat([ctx, ctx_uncond]) if guided else ctx
        cache, graphed = self._reusable(reuse, rows)
        if cache is None:
            cache = self.net.new_cache(self.net.frame_tokens(H, W), self.pattern, self.policy, self.max_frames,
                                       static=self.static)
        state = StreamState(cache, rows, noise, codec_state=self.codec.init_state(ctx.shape[0]))
        if graphed is not None:
            graphed.ctx = rows
            state.graphed = graphed
        elif self.graphs:
            from .graphs import GraphedVelocity

            state.graphed = GraphedVelocity(self.net, cache, state.ctx)
        if prefill is not None:
            s, e = self.pattern.block_bounds(0)
            if prefill.shape[2] != e - s:
                raise ValueError(f"prefill holds {prefill.shape[2]} frames; the first block of pattern "
                                 f"{self.pattern.name} has {e - s}")
            self._write(state, prefill, torch.zeros(prefill.shape[0], device=prefill.device), prefill_actions)
            state.block = 1
        return state

    def _reusable(self, old: StreamState | None, rows: torch.Tensor):
        """(cache, graphs) of a finished stream that a new one with context ``rows`` can take over, reset and
        holding the new prompt's cross-attention K/V in place (the graphs read those addresses); else Nones."""
        if old is None or not self.static or getattr(old.cache, "reset", None) is None:
            return None, None
        if old.ctx.shape != rows.shape or old.cache.cross is None:
            return None, None
        cache, graphed = old.cache, old.graphed
        cache.reset()
        for (k, v), (nk, nv) in zip(cache.cross, self.net.context_kv(rows)):
            k.copy_(nk)
            v.copy_(nv)
        old.graphed, old.cache = None, None  # the old state can no longer step
        return cache, graphed

    def _rows(self, state: StreamState, x: torch.Tensor, actions: Actions | None):
        """The batch the network sees: guided streams stack the unconditional rows (no action) below."""
        if state.ctx.shape[0] == x.shape[0]:
            return x, actions
        return torch.cat([x, x]), (None if actions is None else Actions.cat([actions, actions.dropped()]))

    def _prepare(self, state: StreamState) -> None:
        """The static cache's per-block buffers, filled before the block's first forward."""
        if self.static and state.cache.prepared is None:
            _, ph, pw = self.net.cfg.patch_size
            C, H, W = self.latent_shape
            state.cache.prepare(self.net, H // ph, W // pw, state.ctx.device)

    def _forward(self, state: StreamState, x, t, actions, write: bool):
        """One forward of the block against the cache: eager, or the captured graph (one per input shape and
        cache layout: the first block has its own)."""
        self._prepare(state)
        if state.graphed is not None and not torch.is_grad_enabled():
            if state.cache.cross is None:
                state.cache.cross = self.net.context_kv(state.ctx)
            return state.graphed(x, t, actions, write)
        return self.net.velocity(x, t, state.ctx, cache=state.cache, update_cache=write, actions=actions)

    def _write(self, state: StreamState, x: torch.Tensor, t: torch.Tensor, actions: Actions | None) -> None:
        """Append the block's K/V: a forward of x at times t with ``update_cache``."""
        xin, a = self._rows(state, x, actions)
        tin = t if xin.shape[0] == t.shape[0] else torch.cat([t, t])
        with torch.no_grad():
            self._forward(state, xin.detach(), tin, a, write=True)

    def step(self, state: StreamState, actions: Actions | None = None, *, n_steps: int | None = None,
             grad_last: bool = False, decode: bool = True, sync: bool = True,
             emit: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, StreamState]:
        """Generate the next block: (its frames, the state, updated in place).

        ``actions``: the block's frames' actions. ``n_steps`` (few-step only) exits after that many steps
        and ``grad_last`` runs the last one with autograd (the self-forcing rollout); ``decode=False``
        returns the latent x̂0 instead of decoded frames; ``sync=False`` leaves the GPU work queued (the block's
        seconds then count the host's enqueue time only: ``stream/realtime.py`` overlaps decoding with it);
        ``emit(x̂0)`` is called as soon as the block's latents exist, before its context write (the forward
        the next block needs, not this block's frames): a consumer can start decoding them meanwhile."""
        t_start = time.perf_counter()
        b = state.block
        s, e = self.pattern.block_bounds(b)
        C, H, W = self.latent_shape
        x = state.noise.draw((b, 0), (C, e - s, H, W))
        B = x.shape[0]
        sp = self.sampling

        def v_of(x_in, t_scalar, write=False):
            xin, a = self._rows(state, x_in, actions)
            t_vec = torch.full((xin.shape[0],), float(t_scalar), device=x_in.device)
            v = self._forward(state, xin, t_vec, a, write).float()
            return v if xin.shape[0] == B else cfg_combine(*v.chunk(2), sp.cfg)

        if isinstance(sp, FewStep):
            times = sp.times_for(b)
            n = len(times) - 1 if n_steps is None else n_steps
            reuse = sp.noisy_write(b) and times[n - 1] == sp.t_ctx  # the last input already sits at t_ctx
            x, last = few_step_block(v_of, x, times, lambda k, shp: state.noise.draw((b, k), shp), n_steps=n,
                                     write_last=reuse, grad_last=grad_last)
            if emit is not None:
                emit(x)
            if sp.noisy_write(b) and not reuse:
                eps = state.noise.draw((b, CTX_NOISE_TAG), tuple(x.shape[1:]))
                t_c = torch.full((B,), sp.t_ctx, device=x.device)
                self._write(state, (1 - sp.t_ctx) * x.detach() + sp.t_ctx * eps, t_c, actions)
            elif not sp.noisy_write(b):
                self._write(state, x, torch.zeros(B, device=x.device), actions)
            state.last_input = (last[0].detach(), last[1])
        else:
            if n_steps is not None or grad_last:
                raise ValueError("step exits and gradients are for few-step students")
            n = sp.steps_for(b)
            grid = euler_times(n, sp.shift, x.device)
            for k in range(n):
                x = x + (grid[k + 1] - grid[k]) * v_of(x, grid[k])
            if emit is not None:
                emit(x)
            self._write(state, x, torch.zeros(B, device=x.device), actions)
        state.block += 1
        if decode:
            frames, state.codec_state = self.codec.decode(x, state.codec_state)
        else:
            frames = x
        if x.is_cuda and sync:
            torch.cuda.synchronize()
        state.seconds.append(time.perf_counter() - t_start)
        return frames, state


def stream(engine: Engine, state: StreamState, frames: int, actions: Actions | None = None,
           on_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Generate blocks until ``frames`` latent frames exist: the decoded video [B, 3, F, H, W] of the blocks
    generated (a prefilled block is not repeated); ``on_block(b, frames_b)`` receives each block at once.
    ``actions`` covers the whole video's frames (sliced per block)."""
    out = []
    engine.pattern.check(frames)
    while state.frame < frames:
        s, e = engine.pattern.block_bounds(state.block)
        b = state.block
        f, state = engine.step(state, None if actions is None else actions.frames_slice(s, e))
        out.append(f)
        if on_block is not None:
            on_block(b, f)
    return torch.cat(out, dim=2)
