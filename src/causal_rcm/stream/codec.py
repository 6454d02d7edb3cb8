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

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


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


CODECS = {"pixel": PixelCodec}


def make_codec(config: dict | None) -> VideoCodec:
    """The codec a bundle's config names (``{"kind": "pixel"}``; none means pixels)."""
    kind = (config or {}).get("kind", "pixel")
    if kind not in CODECS:
        raise ValueError(f"unknown codec {kind!r}; known: {sorted(CODECS)}")
    return CODECS[kind]()
