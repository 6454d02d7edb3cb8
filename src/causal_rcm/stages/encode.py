"""Real clips as a training dataset: captioned videos encoded by a model's codec (the Wan VAE) into latents.

    causal-rcm encode --ckpt RUN/teacher/teacher.safetensors --videos CLIPS --out RUN/real [--batch 4]

CLIPS holds ``NAME.mp4`` + ``NAME.txt`` (``data/videos.py``); each clip's first frames at the model's video
size (scaled to cover, centre-cropped) are encoded to the posterior mean the DiT sees. The output is the
synthetic dataset format (``data/synthetic.py``) with ``space: latent`` and ``source: videos``: the teacher
forcing stages read it as they read synthetic latents (``data=RUN/real``), which is real-data TF. A killed
run continues when rerun with the same arguments.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.synthetic import write_synthetic
from ..data.videos import list_clips, read_clip
from ..runtime import resolve_device
from ..stream.bundle import Bundle
from ..stream.codec import to_unit
from .synth import stores_latents


def encode_clips(ckpt: str | Path, videos: str | Path, out: str | Path, batch: int = 4, shard_size: int = 64,
                 device=None, progress: bool = True) -> Path:
    if int(batch) != batch or batch < 1 or int(shard_size) != shard_size or shard_size < 1:
        raise ValueError(f"batch and shard_size must be integers >= 1, got {batch}, {shard_size}")
    clips = list_clips(videos)
    bundle = Bundle.load(ckpt, device=resolve_device(device))
    if not stores_latents(bundle):
        raise ValueError(f"{ckpt} works on pixels: its stages read pixel videos (world sample files), not latents")
    v = bundle.video_size
    names = [p.name for p, _ in clips]
    config = {"source": "videos", "clips": hashlib.sha256("\n".join(names).encode()).hexdigest(),
              "codec": bundle.codec_config, "world": None, "video": asdict(v), "space": "latent",
              "video_shape": list(bundle.latent_shape), "sampling": None, "prompts": {"source": "captions"},
              "actions": False, "ode_times": None, "ode_grid_times": None, "data": None, "context_frames": 0}

    @torch.no_grad()
    def make_shard(lo: int, hi: int) -> dict:
        latents = []
        for s in range(lo, hi, batch):
            clip = np.stack([read_clip(p, v.frames, v.height, v.width) for p, _ in clips[s:min(hi, s + batch)]])
            latents.append(bundle.codec.encode(to_unit(clip).to(bundle.device)).to("cpu", torch.float16).numpy())
        return {"latents": np.concatenate(latents), "prompts": np.array([c for _, c in clips[lo:hi]], dtype=str)}

    return write_synthetic(out, len(clips), shard_size, config, make_shard, progress, str(bundle.device))
