"""Video codecs: what turns pixels into the model's space and its outputs back into frames, chunk by chunk.

Every codec takes the same calls, so the engine, the server and ``generate`` never ask which one they hold:

    state = codec.init_state(batch_size)
    frames, state = codec.decode(z, state)     # z [B, C, t, h, w]: the next latent frames of the stream
                                               # frames [B, 3, f, H, W] in [−1, 1]: every frame they complete
    z = codec.encode(video)                    # video [B, 3, F, H, W] in [−1, 1] (I2V, real-data TF)

The decoder state is explicit (a causal-convolution cache for the Wan VAE, nothing for pixels), so a
stream decodes each chunk as soon as it exists and the concatenation equals the whole-sequence decode.
Pixel worlds use ``PixelCodec`` (the identity, x = pixel / 127.5 − 1); the Wan VAE and the tiny decoder
live beside it (``WanVAECodec``, ``TinyDecoderCodec``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..models.vae import (TinyDecodeState, TinyVideoDecoder, WanDecodeState, WanStream, channels_last_,
                          load_tiny_decoder)


def to_unit(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """x = pixel / 127.5 − 1: uint8 [N, T, H, W, 3] → float32 [N, 3, T, H, W] in [−1, 1]."""
    v = torch.as_tensor(videos)
    if v.dtype != torch.uint8 or v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {v.dtype} {tuple(v.shape)}")
    return (v.permute(0, 4, 1, 2, 3).to(torch.float32) / 127.5 - 1.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """pixel = round(clamp((x + 1) · 127.5, 0, 255)), the inverse of ``to_unit``: float [N, 3, T, H, W] →
    uint8 [N, T, H, W, 3]."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"expected frames [N, 3, T, H, W], got {tuple(x.shape)}")
    p = ((x.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return p.permute(0, 2, 3, 4, 1).contiguous().numpy()


@runtime_checkable
class VideoCodec(Protocol):
    channels: int         # latent channels C
    temporal_stride: int  # a latent frame after the first stands for this many pixel frames
    spatial_stride: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of a video of ``frames`` pixel frames."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [−1, 1] → latents [B, C, t, h, w]."""

    def init_state(self, batch_size: int) -> Any:
        """The decoder state before the first latent frame."""

    def decode(self, z: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """The next latent frames → (the pixel frames they complete, the new state)."""


def decode_all(codec: VideoCodec, z: torch.Tensor) -> torch.Tensor:
    """The whole-sequence decode through the streaming calls."""
    frames, _ = codec.decode(z, codec.init_state(z.shape[0]))
    return frames


class PixelCodec:
    """Pixel worlds: the model sees RGB in [−1, 1] directly; decoding is the identity and keeps no state."""

    channels, temporal_stride, spatial_stride = 3, 1, 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (3, frames, height, width)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def init_state(self, batch_size: int) -> None:
        return None

    def decode(self, z: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        return z, None


class WanVAECodec:
    """The Wan2.1 VAE (diffusers' ``AutoencoderKLWan``, its own modules and weights). Latents are the
    normalised ones the DiT sees, z = (μ − latents_mean) / latents_std; ``decode`` streams with the VAE's
    causal-convolution cache as the state (``models/vae/wan_stream.py``), ``encode`` is the posterior mean.
    ``compile=True`` runs the decoder through torch.compile (≈ 1.8× faster on an H200; compiles on first use)."""

    def __init__(self, vae, compile: bool = False):
        self.stream = WanStream(vae, compile=compile)
        self.channels = self.stream.channels
        self.temporal_stride, self.spatial_stride = self.stream.temporal_stride, self.stream.spatial_stride

    @classmethod
    def from_config(cls, config: dict) -> "WanVAECodec":
        """``{"kind": "wan_vae", "path": DIR, "dtype": "bfloat16", "device": "cuda", "channels_last": true,
        "compile": false}``; DIR is a local diffusers VAE folder (config.json + weights: the ``vae/`` folder of
        Wan-AI/Wan2.1-T2V-1.3B-Diffusers). channels_last defaults to on for CUDA (faster, same values)."""
        from diffusers import AutoencoderKLWan

        opts = _options(config, "wan_vae", ("path",), ("dtype", "device", "channels_last", "compile"))
        path = Path(opts["path"])
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a diffusers AutoencoderKLWan folder (config.json + "
                                    "diffusion_pytorch_model.safetensors, e.g. the vae/ folder of a Wan2.1 checkpoint)")
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=_dtype(opts), local_files_only=True)
        device = _device(opts)
        vae = vae.to(device)
        if opts.get("channels_last", device.type == "cuda"):
            channels_last_(vae)
        return cls(vae, compile=bool(opts.get("compile", False)))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return self.stream.latent_shape(frames, height, width)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.stream.encode(video)

    def init_state(self, batch_size: int) -> WanDecodeState:
        return self.stream.init_state(batch_size)

    def decode(self, z: torch.Tensor, state: WanDecodeState) -> tuple[torch.Tensor, WanDecodeState]:
        return self.stream.decode(z, state)


class TinyDecoderCodec:
    """A TAEHV-family decoder (``models/vae/tiny.py``) on the Wan latents: same frames, same alignment, a
    fraction of the cost; its state is one frame per MemBlock. It has no encoder of its own: ``encode`` goes to
    ``encoder`` (the Wan VAE codec, whose latents the DiT was trained on) when one is given."""

    def __init__(self, decoder: TinyVideoDecoder, encoder: VideoCodec | None = None):
        cfg = decoder.config
        if encoder is not None and encoder.channels != cfg.latent_channels:
            raise ValueError(f"encoder makes {encoder.channels}-channel latents, the decoder takes {cfg.latent_channels}")
        self.decoder, self.encoder = decoder.eval(), encoder
        self.channels, self.temporal_stride, self.spatial_stride = (cfg.latent_channels, cfg.temporal_stride,
                                                                    cfg.spatial_stride)

    @classmethod
    def from_config(cls, config: dict) -> "TinyDecoderCodec":
        """``{"kind": "taehv", "path": "taew2_1.pth", "dtype": "bfloat16", "device": "cuda", "channels_last": true,
        "encoder": {"kind": "wan_vae", ...}}`` (encoder optional; channels_last defaults to on for CUDA)."""
        opts = _options(config, "taehv", ("path",), ("dtype", "device", "channels_last", "encoder"))
        device = _device(opts)
        decoder = load_tiny_decoder(opts["path"]).to(device, _dtype(opts))
        if opts.get("channels_last", device.type == "cuda"):
            decoder = decoder.to(memory_format=torch.channels_last)
        return cls(decoder, make_codec(opts["encoder"]) if "encoder" in opts else None)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        st, ss = self.temporal_stride, self.spatial_stride
        if frames < 1 or (frames - 1) % st or height % ss or width % ss:
            raise ValueError(f"expected 1 + {st}k frames of H×W divisible by {ss}; got {frames} of {height}×{width}")
        return (self.channels, 1 + (frames - 1) // st, height // ss, width // ss)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise NotImplementedError("TinyDecoderCodec only decodes; give it encoder=WanVAECodec(vae) "
                                      "(config: \"encoder\": {\"kind\": \"wan_vae\", \"path\": ...}) to encode")
        return self.encoder.encode(video)

    def init_state(self, batch_size: int) -> TinyDecodeState:
        return self.decoder.init_state(batch_size)

    def decode(self, z: torch.Tensor, state: TinyDecodeState) -> tuple[torch.Tensor, TinyDecodeState]:
        return self.decoder.decode(z, state)


def _options(config: dict, kind: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    opts = {k: v for k, v in config.items() if k != "kind"}
    unknown = sorted(opts.keys() - set(required) - set(optional))
    missing = [k for k in required if k not in opts]
    if unknown or missing:
        raise ValueError(f"codec {kind!r}: missing {missing}, unknown {unknown}; it takes {list(required + optional)}")
    return opts


def _dtype(opts: dict) -> torch.dtype:
    name = opts.get("dtype", "bfloat16")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"codec dtype {name!r}: choose float32, bfloat16 or float16")
    return getattr(torch, name)


def _device(opts: dict) -> torch.device:
    return torch.device(opts.get("device", "cuda" if torch.cuda.is_available() else "cpu"))


CODECS = {"pixel": PixelCodec, "wan_vae": WanVAECodec, "taehv": TinyDecoderCodec}


def make_codec(config: dict | None) -> VideoCodec:
    """The codec a bundle's config names: ``{"kind": "pixel"}`` (none means pixels),
    ``{"kind": "wan_vae", "path": DIR}`` or ``{"kind": "taehv", "path": FILE}`` (see their ``from_config``)."""
    kind = (config or {}).get("kind", "pixel")
    if kind not in CODECS:
        raise ValueError(f"unknown codec {kind!r}; known: {sorted(CODECS)}")
    return CODECS[kind]() if kind == "pixel" else CODECS[kind].from_config(config)
