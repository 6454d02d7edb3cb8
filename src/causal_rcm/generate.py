"""Loading a model bundle and sampling videos from it (the library side of ``causal-rcm generate``).

A bundle (``train/checkpoint.py``) holds ``net.*`` (a WanDiT), ``text_encoder.*`` and a config that says
what the network is and how to sample it:

    {"kind": "teacher", "model": {...}, "text_encoder": {...}, "world": {...},
     "sampling": {"method": "euler", "steps": 50, "cfg": 3.0, "shift": 3.0}}

Noise is drawn per sample from (seed, index), so sample i of a call can be regenerated alone.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import WanConfig
from .data.blobworld import from_model
from .flow import cfg_velocity, euler_sample
from .models.conditioning import TextEncoderConfig, WorldTextEncoder
from .models.wan import WanDiT
from .stages.common import WorldConfig
from .train.checkpoint import load_bundle
from .train.loop import progress


def sample_noise(n: int, shape: tuple[int, ...], seed: int, start: int = 0, device=None) -> torch.Tensor:
    """ε_i ~ N(0, I) from its own generator seeded by (seed, start + i)."""
    out = torch.empty((n, *shape))
    for i in range(n):
        s = int(np.random.SeedSequence([seed, start + i]).generate_state(1)[0])
        out[i] = torch.randn(shape, generator=torch.Generator().manual_seed(s))
    return out.to(device)


def autocast_for(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class Generator:
    def __init__(self, net: WanDiT, text_encoder: WorldTextEncoder, config: dict, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.config = config
        self.world = WorldConfig(**config["world"])
        self.sampling = dict(config.get("sampling", {}))

    @classmethod
    def load(cls, path: str | Path, device=None) -> "Generator":
        groups, config = load_bundle(path)
        for key in ("model", "text_encoder", "world"):
            if key not in config:
                raise ValueError(f"{path}: bundle config lacks {key!r}")
        net = WanDiT(WanConfig.from_dict({**config["model"], "patch_size": tuple(config["model"]["patch_size"])}))
        net.load_state_dict({k: v.float() for k, v in groups["net"].items()})
        te = WorldTextEncoder(TextEncoderConfig.from_dict(config["text_encoder"]))
        te.load_state_dict({k: v.float() for k, v in groups["text_encoder"].items()})
        return cls(net, te, config, device)

    @classmethod
    def from_modules(cls, net, text_encoder, world: WorldConfig, sampling: dict, kind: str = "teacher"):
        config = dict(kind=kind, model=net.cfg.to_dict(), text_encoder=text_encoder.cfg.to_dict(),
                      world=asdict(world), sampling=sampling)
        return cls(net, text_encoder, config, next(net.parameters()).device)

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        w = self.world
        return (self.net.cfg.in_dim, w.frames, w.size, w.size)

    @torch.no_grad()
    def contexts(self, prompts: list[str]):
        ctx = self.text_encoder.encode(prompts)
        return ctx, self.text_encoder.encode([""] * len(prompts))

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int = 0, steps: int | None = None, cfg: float | None = None,
               shift: float | None = None, batch: int = 64, show_progress: bool = True) -> np.ndarray:
        """uint8 videos [N, T, H, W, 3] for the prompts (Euler on the PF-ODE with CFG)."""
        steps = int(steps or self.sampling.get("steps", 50))
        cfg = float(cfg if cfg is not None else self.sampling.get("cfg", 3.0))
        shift = float(shift if shift is not None else self.sampling.get("shift", 3.0))
        out = []
        bar = progress(total=len(prompts) * steps, desc="sample", disable=not show_progress)
        for s in range(0, len(prompts), batch):
            chunk = list(prompts[s:s + batch])
            noise = sample_noise(len(chunk), self.video_shape, seed, start=s, device=self.device)
            with autocast_for(self.device):
                ctx, ctx_u = self.contexts(chunk)
                x0 = euler_sample(lambda x, t: cfg_velocity(self.net, x, t, ctx, ctx_u, cfg).float(), noise,
                                  steps, shift, progress=lambda i: bar.update(len(chunk)))
            out.append(from_model(x0.float()))
        bar.close()
        return np.concatenate(out)
