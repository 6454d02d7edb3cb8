"""Loading a model bundle and sampling videos from it (the library side of ``causal-rcm generate``).

A bundle (``train/checkpoint.py``) holds ``net.*`` (a WanDiT), ``text_encoder.*`` and a config that says
what the network is and how to sample it:

    {"kind": "teacher", "model": {...}, "text_encoder": {...}, "world": {...},
     "sampling": {"method": "euler", "steps": 50, "cfg": 3.0, "shift": 3.0}}

Sampling methods: "euler" (a bidirectional teacher), "causal_euler" (a causal teacher, block by block with
CFG and a KV cache: adds "pattern"), "few_step" (a distilled causal student: "pattern", "steps_first",
"steps", "context"); the causal ones run through ``stream/engine.py``.

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
from .models.masks import ChunkPattern
from .models.conditioning import TextEncoderConfig, WorldTextEncoder
from .models.wan import WanDiT
from .stream.engine import EulerCFG, FewStep, Noise, stream
from .stages.common import WorldConfig
from .train.checkpoint import load_bundle, save_bundle
from .train.loop import progress


def sample_noise(n: int, shape: tuple[int, ...], seed: int, start: int = 0, device=None) -> torch.Tensor:
    """ε_i ~ N(0, I) from its own generator seeded by (seed, start + i) (``Noise`` with an empty tag)."""
    return Noise(seed, range(start, start + n), device).draw((), shape)


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

    def save(self, path: str | Path, **extra) -> Path:
        """Write the network and text encoder as a bundle; ``extra`` joins the config (e.g. method=...)."""
        return save_bundle(path, {"net": self.net, "text_encoder": self.text_encoder}, {**self.config, **extra})

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        w = self.world
        return (self.net.cfg.in_dim, w.frames, w.size, w.size)

    @torch.no_grad()
    def contexts(self, prompts: list[str]):
        ctx = self.text_encoder.encode(prompts)
        return ctx, self.text_encoder.encode([""] * len(prompts))

    @property
    def method(self) -> str:
        return self.sampling.get("method", "euler")

    def resolved_sampling(self, **overrides) -> dict:
        """The bundle's sampling settings with the non-None overrides applied."""
        out = dict(self.sampling)
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int = 0, steps: int | None = None, cfg: float | None = None,
               shift: float | None = None, steps_first: int | None = None, batch: int = 64,
               show_progress: bool = True, timings: list | None = None) -> np.ndarray:
        """uint8 videos [N, T, H, W, 3] for the prompts, by the bundle's sampling method (overrides apply).
        ``timings`` (a list) receives the seconds per streamed block of every batch (causal methods)."""
        sp = self.resolved_sampling(steps=steps, cfg=cfg, shift=shift, steps_first=steps_first)
        method = sp.get("method", "euler")
        if method not in ("euler", "causal_euler", "few_step"):
            raise ValueError(f"unknown sampling method {method!r} in the bundle config")
        if method == "euler" and steps_first is not None:
            raise ValueError("steps_first is for causal models (chunk by chunk); this bundle is a bidirectional teacher")
        out = []
        # progress in (video × unit of work): Euler steps for a bidirectional teacher, blocks for causal models
        units = (int(sp["steps"]) if method == "euler"
                 else ChunkPattern.parse(sp["pattern"]).num_blocks(self.world.frames))
        bar = progress(total=len(prompts) * units, desc=f"sample {len(prompts)} videos", disable=not show_progress,
                       unit="step" if method == "euler" else "block")
        for s in range(0, len(prompts), batch):
            chunk = list(prompts[s:s + batch])
            with autocast_for(self.device):
                ctx, ctx_u = self.contexts(chunk)
                if method == "euler":
                    noise = sample_noise(len(chunk), self.video_shape, seed, start=s, device=self.device)
                    x0 = euler_sample(lambda x, t: cfg_velocity(self.net, x, t, ctx, ctx_u, sp["cfg"]).float(),
                                      noise, units, float(sp["shift"]), progress=lambda i: bar.update(len(chunk)))
                else:
                    how = (EulerCFG(int(sp["steps"]), float(sp["cfg"]), float(sp["shift"]),
                                    None if sp.get("steps_first") is None else int(sp["steps_first"]))
                           if method == "causal_euler" else
                           FewStep(int(sp["steps_first"]), int(sp["steps"]), context=sp.get("context", "clean")))
                    noise = Noise(seed, list(range(s, s + len(chunk))), self.device)
                    x0, secs = stream(self.net, ctx, ctx_u, noise, self.video_shape, sp["pattern"], how,
                                      on_block=lambda b, xb: bar.update(len(chunk)))
                    if timings is not None:
                        timings.append(secs)
            out.append(from_model(x0.float()))
        bar.close()
        return np.concatenate(out)
