"""A model bundle: what is loaded and saved (the network, its text encoder, its world, how it is sampled).

On disk a bundle is one ``.safetensors`` file (``io.save_bundle``: ``net.*`` and ``text_encoder.*`` tensors,
a checksum, and the config in its metadata):

    {"kind": "teacher" | "causal_teacher" | "student", "model": {...WanConfig...},
     "text_encoder": {"kind": "world", ...}, "world": {...WorldConfig...} (optional for free-text models),
     "codec": {"kind": "pixel"} (optional), "sampling": {"method": "euler" | "causal_euler" | "few_step", ...},
     ... (extras such as "method": "tf_scm")}

``Bundle.load`` builds every part from that config (the text encoder by its ``kind``) and hands back frozen
modules on the requested device; a stage that trains one asks for ``trainable=True``. Sampling lives in
``stream/sample.py``; the typed sampling in ``stream/sampling.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import WanConfig
from ..io import BundleError, load_bundle, save_bundle
from ..kv_policy import FULL, KVPolicy
from ..masks import ChunkPattern
from ..models.conditioning import TextEncoder, TextEncoderConfig, WorldTextEncoder
from ..models.wan import WanDiT
from ..runtime import resolve_device
from ..worlds.base import WorldConfig
from .codec import VideoCodec, make_codec
from .sampling import EulerCFG, FewStep, Sampling, sampling_from_dict, to_dict

KINDS = ("teacher", "causal_teacher", "student")


def _world_text_encoder(cfg: dict, tensors: dict | None) -> TextEncoder:
    te = WorldTextEncoder(TextEncoderConfig.from_dict({k: v for k, v in cfg.items() if k != "kind"}))
    if tensors is not None:
        te.load_state_dict({k: v.float() for k, v in tensors.items()})
    return te


TEXT_ENCODERS = {"world": _world_text_encoder}


def net_config(config: dict) -> WanConfig:
    """The network's config from a bundle's config."""
    mc = dict(config["model"])
    return WanConfig.from_dict({**mc, "patch_size": tuple(mc["patch_size"])})


def text_encoder_config(te: TextEncoder) -> dict:
    return {"kind": getattr(te, "kind", "world"), **te.cfg.to_dict()}


@dataclass
class Bundle:
    net: WanDiT
    text_encoder: TextEncoder
    sampling: Sampling
    world: WorldConfig | None = None
    kind: str = "teacher"
    codec_config: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown bundle kind {self.kind!r}; one of {KINDS}")
        self.codec: VideoCodec = make_codec(self.codec_config)

    # ----- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device=None, trainable: bool = False) -> "Bundle":
        groups, config = load_bundle(path)
        return cls.from_config(path, config, groups).to(device, trainable)

    @classmethod
    def from_config(cls, path, config: dict, groups: dict, net: WanDiT | None = None) -> "Bundle":
        """A bundle from its config and tensor groups; ``net``: a network already built and filled (one
        sharded over processes by ``train/placement.py``) instead of one built from ``groups["net"]``."""
        for key in ("model", "text_encoder"):
            if key not in config:
                raise BundleError(f"{path}: bundle config lacks {key!r}")
        try:
            if net is None:
                net = WanDiT(net_config(config))
                net.load_state_dict({k: v.float() for k, v in groups["net"].items()})
            te_cfg = config["text_encoder"]
            te_kind = te_cfg.get("kind", "world")
            if te_kind not in TEXT_ENCODERS:
                raise BundleError(f"{path}: unknown text encoder kind {te_kind!r}; known: {sorted(TEXT_ENCODERS)}")
            te = TEXT_ENCODERS[te_kind](te_cfg, groups.get("text_encoder"))
            world = WorldConfig.from_dict(config["world"]) if config.get("world") else None
            sampling = sampling_from_dict(config.get("sampling", {}))
        except (KeyError, RuntimeError, TypeError) as e:
            raise BundleError(f"{path}: the bundle's tensors do not fit its config ({str(e).splitlines()[0]})") from None
        extra = {k: v for k, v in config.items()
                 if k not in ("kind", "model", "text_encoder", "world", "sampling", "codec")}
        return cls(net, te, sampling, world, config.get("kind", "teacher"), config.get("codec"), extra)

    def config(self) -> dict:
        out = {"kind": self.kind, "model": self.net.cfg.to_dict(), "text_encoder": text_encoder_config(self.text_encoder),
               "world": None if self.world is None else dataclasses.asdict(self.world),
               "sampling": to_dict(self.sampling), **self.extra}
        if self.codec_config is not None:
            out["codec"] = self.codec_config
        return out

    def save(self, path: str | Path, dtype: torch.dtype | None = None, **extra) -> Path:
        """Write the network and text encoder as a bundle; ``extra`` joins the config (e.g. method=...)."""
        return save_bundle(path, {"net": self.net, "text_encoder": self.text_encoder}, {**self.config(), **extra},
                           dtype)

    # ----- placement ----------------------------------------------------------------------------------
    def to(self, device=None, trainable: bool = False) -> "Bundle":
        dev = resolve_device(device)
        self.net.to(dev).train(trainable).requires_grad_(trainable)
        self.text_encoder.to(dev).eval().requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # ----- what sampling needs ------------------------------------------------------------------------
    @property
    def causal(self) -> bool:
        return isinstance(self.sampling, (FewStep, EulerCFG))

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one video in the network's space."""
        w = self.world_or_raise()
        C, T, H, W = self.codec.latent_shape(w.frames, w.size, w.size)
        if C != self.net.cfg.in_dim:
            raise BundleError(f"the codec gives {C} channels, the network takes {self.net.cfg.in_dim}")
        return C, T, H, W

    @property
    def first_block_frames(self) -> int:
        """Pixel frames a world model is started from: the first block (I2V prefill) of a causal model, the
        ``context_frames`` a bidirectional teacher was trained to take (``prefix_frames``), else 1."""
        if not self.causal:
            return int(self.extra.get("context_frames", 1))
        first = ChunkPattern.parse(self.sampling.pattern).first
        return 1 + self.codec.temporal_stride * (first - 1)

    def world_or_raise(self) -> WorldConfig:
        if self.world is None:
            raise ValueError("this bundle names no built-in world: give the video size explicitly")
        return self.world

    def engine(self, policy: KVPolicy | None = None, graphs: bool = False):
        """The streaming engine of a causal bundle: a video of the world's length (``policy`` None), or an
        endless stream under a windowed KV policy; ``graphs`` captures the per-chunk forward (CUDA)."""
        from .engine import Engine

        C, T, H, W = self.latent_shape
        return Engine(self.net, self.sampling, (C, H, W), self.codec, policy or FULL,
                      None if policy is not None and policy.window else T, graphs=graphs)

    @torch.no_grad()
    def contexts(self, prompts: list[str]):
        """(conditional, unconditional) text contexts of the prompts."""
        ctx = self.text_encoder.encode(list(prompts))
        return ctx, self.text_encoder.encode([""] * len(prompts))
