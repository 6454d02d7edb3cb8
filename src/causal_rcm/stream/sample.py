"""Sampling videos from a bundle (the library side of ``causal-rcm generate``, of evaluation and of synth).

- A bidirectional teacher (``Euler``): Euler on the PF-ODE with CFG over the whole video.
- A causal teacher or student (``EulerCFG`` / ``FewStep``): block by block through ``stream/engine.py``,
  optionally from given first frames (``start_frames``: the first block is written as clean context and
  returned as is, so the output lines up with the ground truth frame by frame) and with actions.

Noise is drawn per sample from (seed, start + index), so sample i of a call can be regenerated alone and a
synthetic dataset is the same videos whatever its batch size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..flow import cfg_velocity, euler_sample
from ..io import progress
from ..masks import ChunkPattern
from ..models.conditioning import Actions, encode_actions, frame_action_ids
from ..runtime import autocast_for
from .bundle import Bundle
from .codec import to_uint8, to_unit
from .engine import Engine, Noise, stream
from .sampling import Euler, Sampling


def sample_noise(n: int, shape: tuple[int, ...], seed: int, start: int = 0, device=None) -> torch.Tensor:
    """ε_i ~ N(0, I) from its own generator seeded by (seed, start + i) (``Noise`` with an empty tag)."""
    return Noise(seed, range(start, start + n), device).draw((), shape)


def video_actions(bundle: Bundle, ids: np.ndarray | None, frames: int, device) -> Actions | None:
    """Integer actions [N, T − 1] of the bundle's world → the network's per-frame action input."""
    if ids is None:
        if bundle.net.cfg.action_dim:
            raise ValueError("this world model needs actions (int [N, T − 1]); give --actions")
        return None
    if not bundle.net.cfg.action_dim:
        raise ValueError("this model was trained without actions; drop --actions")
    stride = bundle.codec.temporal_stride
    n_actions = bundle.net.cfg.action_dim // stride
    return encode_actions(frame_action_ids(ids, frames, stride), n_actions, device)


def euler_batch(bundle: Bundle, prompts: list[str], seed: int, start: int, sp: Euler, actions: Actions | None = None,
                bar=None, keep=None, prefix: torch.Tensor | None = None):
    """A bidirectional teacher's Euler+CFG sample of one batch (latents [B, C, T, H, W]); with ``keep`` (RF
    times) also the trajectory states nearest to them (``flow.euler_sample``). ``prefix`` [B, C, P, H, W]:
    given first frames, held clean at t = 0 (a teacher trained with ``prefix_frames``: I2V, world models
    started from real frames). ``bar`` advances by whole videos per Euler step."""
    dev = bundle.device
    C, T, H, W = bundle.latent_shape
    ctx, ctx_u = bundle.contexts(prompts)
    noise = sample_noise(len(prompts), (C, T, H, W), seed, start=start, device=dev)
    kw = {} if actions is None else {"actions": Actions.cat([actions, actions.dropped()])}
    tick = None if bar is None else (lambda i, k=len(prompts): bar.update(k * (i + 1) // sp.steps - k * i // sp.steps))
    P = 0 if prefix is None else prefix.shape[2]

    def velocity(x, t):
        if P:  # the given frames sit at t = 0 and do not move
            x = torch.cat([prefix, x[:, :, P:]], dim=2)
            t = t[:, None].expand(-1, T).clone()
            t[:, :P] = 0
        v = cfg_velocity(bundle.net.velocity, x, t, ctx, ctx_u, sp.cfg, **kw).float()
        if P:
            v[:, :, :P] = 0
        return v

    if P:
        noise = torch.cat([prefix.to(noise.dtype), noise[:, :, P:]], dim=2)
    return euler_sample(velocity, noise, sp.steps, sp.shift, progress=tick, keep=keep)


@torch.no_grad()
def sample_videos(bundle: Bundle, prompts: Sequence[str], seed: int = 0, sampling: Sampling | None = None,
                  batch: int = 64, start: int = 0, actions: np.ndarray | None = None,
                  start_frames: np.ndarray | None = None, show_progress: bool = True,
                  timings: list | None = None) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3] for the prompts, by ``sampling`` (default: the bundle's).

    ``actions`` int [N, T − 1] condition a world model; ``start_frames`` uint8 [N, f, H, W, 3] start from given
    frames (causal models: f = the first block's frames, prefilled; a bidirectional teacher: all f, held at
    t = 0); ``timings`` (a list) receives the seconds of every
    streamed block of every batch (causal models); ``start`` offsets the per-sample noise ids."""
    sp = sampling or bundle.sampling
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to sample")
    C, T, H, W = bundle.latent_shape
    for name, arr, lead in (("actions", actions, (len(prompts), T - 1)), ("start_frames", start_frames, None)):
        if arr is not None and arr.shape[0] != len(prompts):
            raise ValueError(f"{name} holds {arr.shape[0]} videos for {len(prompts)} prompts")
        if arr is not None and lead is not None and arr.shape != lead:
            raise ValueError(f"{name} must have shape {lead}, got {arr.shape}")
    dev = bundle.device
    if actions is None:
        video_actions(bundle, None, T, dev)  # a world model refuses to run without its actions
    # euler_batch advances the bar by whole videos (spread over its steps); streaming by blocks
    units = 1 if isinstance(sp, Euler) else ChunkPattern.parse(sp.pattern).num_blocks(T)
    bar = progress(total=len(prompts) * units, desc=f"sample {len(prompts)} videos", disable=not show_progress,
                   unit="video" if isinstance(sp, Euler) else "block")
    out = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        a = None if actions is None else video_actions(bundle, actions[s:s + batch], T, dev)
        with autocast_for(dev):
            if isinstance(sp, Euler):
                prefix = None if start_frames is None else bundle.codec.encode(
                    to_unit(start_frames[s:s + batch]).to(dev))
                x0 = euler_batch(bundle, chunk, seed, start + s, sp, a, bar, prefix=prefix)
            else:
                x0, secs = _stream_batch(bundle, chunk, seed, start + s, sp, a,
                                         None if start_frames is None else start_frames[s:s + batch], bar)
                if timings is not None:
                    timings.append(secs)
        if isinstance(sp, Euler):  # streamed batches come back decoded already
            x0 = bundle.codec.decode(x0.float(), bundle.codec.init_state(len(chunk)))[0]
        out.append(to_uint8(x0.float()))
    bar.close()
    return np.concatenate(out)


def _stream_batch(bundle: Bundle, prompts: list[str], seed: int, start: int, sp, actions: Actions | None,
                  start_frames: np.ndarray | None, bar):
    """One batch streamed block by block: (decoded frames [B, 3, F, H, W], seconds per block)."""
    dev = bundle.device
    C, T, H, W = bundle.latent_shape
    ctx, ctx_u = bundle.contexts(prompts)
    engine = Engine(bundle.net, sp, (C, H, W), bundle.codec, max_frames=T)
    prefill = None
    if start_frames is not None:
        e0 = engine.pattern.block_bounds(0)[1]
        pixel_frames = 1 + bundle.codec.temporal_stride * (e0 - 1)  # the first block's frames in pixels
        if start_frames.shape[1] < pixel_frames:
            raise ValueError(f"start frames hold {start_frames.shape[1]} frames; the first block of "
                             f"{engine.pattern.name} needs {pixel_frames}")
        prefill = bundle.codec.encode(to_unit(start_frames[:, :pixel_frames]).to(dev))
    first_actions = None if actions is None or prefill is None else actions.frames_slice(0, prefill.shape[2])
    state = engine.start(ctx, ctx_u, Noise(seed, list(range(start, start + len(prompts))), dev), prefill,
                         first_actions)
    first = []
    if prefill is not None:
        frames, state.codec_state = bundle.codec.decode(prefill, state.codec_state)
        first.append(frames)
        bar.update(len(prompts))
    video = stream(engine, state, T, actions, on_block=lambda b, f: bar.update(len(prompts)))
    return torch.cat(first + [video], dim=2), state.seconds

