"""Streaming in real time: each block's frames reach the consumer as soon as they exist.

On a GPU the decoder runs on a second CUDA stream, queued as soon as a block's latents exist (before its
context write) and overlapped with that write and the next block's denoising on the main stream (an event
orders the two), the frames are converted to uint8 on the GPU and copied into pinned host
memory asynchronously, and a block is handed over once its copy has landed. On a CPU the same loop runs in
order. ``realtime_frames`` yields ``(block, frames uint8 [B, f, H, W, 3], seconds since start)``; the
latency protocol (``benchmarks/stream_latency.py``) is built on those times.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from ..models.conditioning import Actions
from .engine import Engine, StreamState


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[B, 3, f, H, W] in [−1, 1] → uint8 [B, f, H, W, 3] on the frames' device."""
    return ((frames.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


def _side_stream(engine: Engine, device: torch.device) -> torch.cuda.Stream:
    """The engine's decode stream, made once and kept for every video it streams (not one per video: what a
    compiled decoder was warmed up under stays what it runs under)."""
    if engine.decode_stream is None or engine.decode_stream.device != device:
        engine.decode_stream = torch.cuda.Stream(device)
    return engine.decode_stream


def realtime_frames(engine: Engine, state: StreamState, frames: int, actions: Actions | None = None
                    ) -> Iterator[tuple[int, np.ndarray, float]]:
    """Blocks until ``frames`` latent frames exist (windowed engines: as many as asked, endlessly)."""
    t0 = time.perf_counter()
    cuda = state.ctx.is_cuda
    side = _side_stream(engine, state.ctx.device) if cuda else None
    pending = None
    while state.frame < frames:
        b = state.block
        s, e = engine.pattern.block_bounds(b)
        if not cuda:
            x0, state = engine.step(state, None if actions is None else actions.frames_slice(s, e), decode=False)
            f, state.codec_state = engine.codec.decode(x0, state.codec_state)
            yield b, _to_uint8(f).numpy(), time.perf_counter() - t0
            continue
        out = {}

        def decode(x0: torch.Tensor) -> None:  # queued once the latents exist, beside the context write
            made = torch.cuda.Event()
            made.record()
            with torch.cuda.stream(side):
                side.wait_event(made)
                x0.record_stream(side)
                f, state.codec_state = engine.codec.decode(x0, state.codec_state)
                u8 = _to_uint8(f)
                out["host"] = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
                out["host"].copy_(u8, non_blocking=True)
                out["landed"] = torch.cuda.Event()
                out["landed"].record(side)

        state = engine.step(state, None if actions is None else actions.frames_slice(s, e), decode=False,
                            sync=False, emit=decode)[1]
        if pending is not None:  # the previous block's frames, ready while this block denoises
            pb, ev, h = pending
            ev.synchronize()
            yield pb, h.numpy(), time.perf_counter() - t0
        pending = (b, out["landed"], out["host"])
    if pending is not None:
        pb, ev, h = pending
        ev.synchronize()
        yield pb, h.numpy(), time.perf_counter() - t0
