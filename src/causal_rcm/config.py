"""Model configuration and presets.

Configs are frozen dataclasses; presets are plain functions. ``apply_overrides`` takes the CLI's dotted
``key=value`` strings and fails with a message that names the valid keys.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class WanConfig:
    """Shapes of a Wan2.1 text-to-video DiT (the official WanModel's constructor arguments)."""

    in_dim: int = 16
    out_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # MeanFlow students take a second time input r (METHOD.md §4); its embedding lives beside t's.
    dual_time: bool = False
    # World models: size of the per-latent-frame action feature (METHOD.md §7; 0 = no action input)
    action_dim: int = 0
    # The timestep input is time_scale·t (METHOD.md §1: Wan's 1000). sCM's tangent holds t·∂v/∂t, and the
    # sinusoids of 1000·t reach 1000 rad per unit t: a briefly trained small network keeps those wiggles in t,
    # so its ∂v/∂t (and the sCM target) is mostly their noise (sCM, Lu & Song 2024, §4.1: a smaller time
    # scale for stable continuous-time CM). Loaded checkpoints keep 1000 unless their config says otherwise.
    time_scale: float = 1000.0

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim={self.head_dim} must be even and >= 6 for 3-axis RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even")
        if self.action_dim < 0:
            raise ValueError(f"action_dim={self.action_dim} must be >= 0")
        if not 0 < self.time_scale < float("inf"):
            raise ValueError(f"time_scale={self.time_scale} must be a finite number > 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown WanConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count from the shapes alone (matches ``sum(p.numel())`` of WanDiT)."""
        d, f = self.dim, self.ffn_dim
        patch = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        lin = lambda i, o: i * o + o  # noqa: E731
        attn = 4 * lin(d, d) + (2 * d if self.qk_norm else 0)
        block = 2 * attn + lin(d, f) + lin(f, d) + 6 * d + (2 * d if self.cross_attn_norm else 0)
        embed = self.in_dim * patch * d + d + lin(self.text_dim, d) + lin(d, d)
        time = lin(self.freq_dim, d) + lin(d, d) + lin(d, 6 * d)
        if self.dual_time:
            time += lin(self.freq_dim, d) + lin(d, d)
        if self.action_dim:
            time += lin(self.action_dim, d) + lin(d, d) + d
        head = lin(d, self.out_dim * patch) + 2 * d
        return embed + time + self.num_layers * block + head


def _tiny() -> WanConfig:
    return WanConfig(in_dim=4, out_dim=4, dim=24, ffn_dim=48, freq_dim=16, text_dim=16, num_heads=2, num_layers=2)


def _blob_s() -> WanConfig:
    # Pixel-space model for 32x32 RGB Blobworld: 4x4 patches give 64 tokens per frame (1,344 per
    # 21-frame video), which keeps a 2-step causal student inside the CPU budget (issue 2).
    return WanConfig(in_dim=3, out_dim=3, dim=192, ffn_dim=768, freq_dim=128, text_dim=128, num_heads=3,
                     num_layers=6, patch_size=(1, 4, 4))


def _blob_tiny() -> WanConfig:
    # The CPU demo's world (16x16, 9 frames): 16 tokens per frame, ~0.2M parameters. Timestep input 10·t:
    # trained for minutes, the network keeps the wiggles of 1000·t's sinusoids, and its ∂v/∂t (TF-sCM's
    # tangent) came out 2-3x its finite difference over 0.05 (docs/results/claims.md, must-show 4).
    return WanConfig(in_dim=3, out_dim=3, dim=64, ffn_dim=256, freq_dim=64, text_dim=32, num_heads=2,
                     num_layers=3, patch_size=(1, 4, 4), time_scale=10.0)


def _atari() -> WanConfig:
    # Pixel-space model for 64x64 Atari frames: 4x4 patches give 256 tokens per frame (5,376 per 21 frames).
    return WanConfig(in_dim=3, out_dim=3, dim=256, ffn_dim=1024, freq_dim=128, text_dim=128, num_heads=4,
                     num_layers=8, patch_size=(1, 4, 4))


def _wan_1_3b() -> WanConfig:
    return WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)


def _wan_14b() -> WanConfig:
    return WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


PRESETS = {"tiny": _tiny, "blob-tiny": _blob_tiny, "blob-s": _blob_s, "atari": _atari, "wan2.1-1.3b": _wan_1_3b,
           "wan2.1-14b": _wan_14b}


def preset(name: str) -> WanConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def _parse_value(text: str, current):
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if current is None:  # an optional setting: a JSON value (number, list, null), else the text itself (a path)
        try:
            value = json.loads(text.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            return text
        return tuple(value) if isinstance(value, list) else value
    if isinstance(current, (tuple, list)) or isinstance(current, dict):
        value = json.loads(text.replace("(", "[").replace(")", "]"))
        return tuple(value) if isinstance(current, tuple) else value
    return text


def apply_overrides(cfg, overrides: list[str] | dict):
    """Return ``cfg`` with dotted ``key=value`` overrides applied to (nested) frozen dataclasses."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _set(cfg, path: list[str], value, full_key: str):
    names = {f.name for f in fields(cfg)}
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full_key!r}; valid keys here: {sorted(names)}")
    current = getattr(cfg, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full_key!r}: {head!r} has no sub-keys")
        return dataclasses.replace(cfg, **{head: _set(current, path[1:], value, full_key)})
    if isinstance(value, str):
        try:
            value = _parse_value(value, current)
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"config key {full_key!r}: cannot parse {value!r} ({e})") from None
    return dataclasses.replace(cfg, **{head: value})


__all__ = ["WanConfig", "PRESETS", "preset", "apply_overrides"]
