"""A model bundle: what is loaded and saved (the network, its text encoder, its world, how it is sampled).

On disk a bundle is one ``.safetensors`` file (``io.save_bundle``: ``net.*`` and ``text_encoder.*`` tensors,
a checksum, and the config in its metadata):

    {"kind": "teacher" | "causal_teacher" | "student", "model": {...WanConfig...},
     "text_encoder": {"kind": "world", ...} | {"kind": "umt5", "path": ..., "tokenizer": ...},
     "world": {...WorldConfig...} | "video": {"frames": 81, "height": 480, "width": 832},
     "codec": {"kind": "pixel" | "wan_vae" | "taehv", ...} (optional),
     "sampling": {"method": "euler" | "causal_euler" | "few_step", ...}, ... (extras such as "method": "tf_scm")}

A model of a built-in world names its world (which gives the video size, prompts and metrics); a free-text
model (Wan2.1) names its video size instead. The world's small text encoder is stored in the bundle; the
umT5 encoder (5.7B parameters) and the Wan VAE are referenced by the paths the user gave, never copied.
``Bundle.load`` builds every part from that config (the text encoder by its ``kind``) and hands back frozen
modules on the requested device; a stage that trains one asks for ``trainable=True``. Sampling lives in
``stream/sample.py``; the typed sampling in ``stream/sampling.py``.
"""
from __future__ import annotations

import dataclasses
import json
import weakref
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


_SHARED_ENCODERS: "weakref.WeakValueDictionary[str, TextEncoder]" = weakref.WeakValueDictionary()


def _umt5_text_encoder(cfg: dict, tensors: dict | None) -> TextEncoder:
    """The umT5 encoder a bundle refers to. Frozen and the same for every bundle of a recipe, so the bundles
    of one process share one instance (a stage loads up to three bundles: 11 GB each otherwise)."""
    from ..models.text.umt5 import UMT5Config, UMT5TextEncoder

    if tensors:
        raise BundleError("a umT5 text encoder is referenced by its path; the bundle must not hold its tensors")
    key = json.dumps(cfg, sort_keys=True)
    te = _SHARED_ENCODERS.get(key)
    if te is None:
        te = UMT5TextEncoder(UMT5Config.from_dict({k: v for k, v in cfg.items() if k != "kind"}))
        _SHARED_ENCODERS[key] = te
    return te


TEXT_ENCODERS = {"world": _world_text_encoder, "umt5": _umt5_text_encoder}


@dataclass(frozen=True)
class VideoSize:
    """The pixel size of a free-text model's videos (a world model's comes from its world)."""

    frames: int
    height: int
    width: int

    def __post_init__(self):
        for k in ("frames", "height", "width"):
            v = getattr(self, k)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"video.{k} must be a positive integer, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "VideoSize":
        return cls(**d)


def net_config(config: dict) -> WanConfig:
    """The network's config from a bundle's config."""
    mc = dict(config["model"])
    return WanConfig.from_dict({**mc, "patch_size": tuple(mc["patch_size"])})


def text_encoder_config(te: TextEncoder) -> dict:
    return {"kind": getattr(te, "kind", "world"), **te.cfg.to_dict()}


def stored_modules(net, text_encoder) -> dict:
    """What a bundle file holds: the network, and the text encoder unless it is referenced by path (umT5)."""
    return {"net": net, **({"text_encoder": text_encoder} if getattr(text_encoder, "stored", True) else {})}


@dataclass
class Bundle:
    net: WanDiT
    text_encoder: TextEncoder
    sampling: Sampling
    world: WorldConfig | None = None
    kind: str = "teacher"
    codec_config: dict | None = None
    extra: dict = field(default_factory=dict)
    video: VideoSize | None = None  # a free-text model's video size (world models: None, the world's)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown bundle kind {self.kind!r}; one of {KINDS}")
        if (self.world is None) == (self.video is None):
            raise ValueError(f"a bundle names exactly one of a 'world' and (a free-text model) a 'video' size; "
                             f"this one names {'neither' if self.world is None else 'both'}")
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
            video = VideoSize.from_dict(config["video"]) if config.get("video") else None
            sampling = sampling_from_dict(config.get("sampling", {}))
        except (KeyError, RuntimeError, TypeError) as e:
            raise BundleError(f"{path}: the bundle's tensors do not fit its config ({str(e).splitlines()[0]})") from None
        extra = {k: v for k, v in config.items()
                 if k not in ("kind", "model", "text_encoder", "world", "video", "sampling", "codec")}
        try:
            return cls(net, te, sampling, world, config.get("kind", "teacher"), config.get("codec"), extra, video)
        except ValueError as e:  # the bundle's own rules (__post_init__), named with the file
            raise BundleError(f"{path}: {e}") from None

    def config(self) -> dict:
        out = {"kind": self.kind, "model": self.net.cfg.to_dict(), "text_encoder": text_encoder_config(self.text_encoder),
               "world": None if self.world is None else dataclasses.asdict(self.world),
               "sampling": to_dict(self.sampling), **self.extra}
        if self.video is not None:
            out["video"] = dataclasses.asdict(self.video)
        if self.codec_config is not None:
            out["codec"] = self.codec_config
        return out

    def save(self, path: str | Path, dtype: torch.dtype | None = None, **extra) -> Path:
        """Write the network and text encoder as a bundle; ``extra`` joins the config (e.g. method=...)."""
        return save_bundle(path, stored_modules(self.net, self.text_encoder), {**self.config(), **extra}, dtype)

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
    def video_size(self) -> VideoSize:
        """Frames, height and width of one video in pixels (the world's, or a free-text model's own)."""
        if self.world is not None:
            return VideoSize(self.world.frames, self.world.size, self.world.size)
        return self.video

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one video in the network's space."""
        v = self.video_size
        C, T, H, W = self.codec.latent_shape(v.frames, v.height, v.width)
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
            raise ValueError("this is a free-text model (no built-in world): it has no world prompts, actions or "
                             "metrics")
        return self.world

    def engine(self, policy: KVPolicy | None = None, graphs: bool = False, compile: bool = False):
        """The streaming engine of a causal bundle: a video of the model's length (``policy`` None), or an
        endless stream under a windowed KV policy; ``graphs`` captures the per-chunk forward (CUDA),
        ``compile`` compiles the blocks around their attention."""
        from .engine import Engine

        C, T, H, W = self.latent_shape
        return Engine(self.net, self.sampling, (C, H, W), self.codec, policy or FULL,
                      None if policy is not None and policy.window else T, graphs=graphs, compile=compile)

    @torch.no_grad()
    def contexts(self, prompts: list[str]):
        """(conditional, unconditional) text contexts of the prompts."""
        ctx = self.text_encoder.encode(list(prompts))
        return ctx, self.text_encoder.encode([""] * len(prompts))
