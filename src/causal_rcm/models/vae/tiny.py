"""A tiny streaming video decoder of the TAEHV family (Wan2.1 latents → RGB), our own implementation.

TAEHV (madebyollin/taehv) decodes a video model's latents with 2-D convolutions only; time enters through
two kinds of block, both causal:

    MemBlock      y_t = ReLU(F([x_t, x_{t−1}]) + x_t)        F: conv3×3 → ReLU → conv3×3 → ReLU → conv3×3
                  (x_{−1} = 0: the block remembers its own previous input frame, nothing else)
    TimeGrow      one frame → s frames: a 1×1 conv to s·C channels, channel group j becomes frame s·t + j

so a chunk's frames can be decoded all at once (frames are batch items) as long as each MemBlock is told
its input at the frame before the chunk: that frame, per MemBlock, is the whole decoder state.

Layout, fixed by the published ``taew2_1`` state dict (``decoder.<index>...``; widths w = 256, 128, 64, 64):

    0 SoftClamp (3·tanh(z/3))   1 conv3×3 16→w0 (+bias)   2 ReLU
    3–5   MemBlock(w0) ×3    6 Upsample ×2 (nearest)    7 TimeGrow(w0, 1)   8 conv3×3 w0→w1 (no bias)
    9–11  MemBlock(w1) ×3   12 Upsample ×2             13 TimeGrow(w1, 2)  14 conv3×3 w1→w2 (no bias)
    15–17 MemBlock(w2) ×3   18 Upsample ×2             19 TimeGrow(w2, 2)  20 conv3×3 w2→w3 (no bias)
    21 ReLU   22 conv3×3 w3→3 (+bias)      MemBlock keys: conv.0 / conv.2 / conv.4 (each with bias)

Frame count: t latents make 4t raw frames; the first 3 raw frames of a clip are dropped (TAEHV's
``frames_to_trim`` = temporal stride − 1), so a clip of t latents gives 1 + 4(t − 1) frames, latent 0
gives frame 0 and latent k ≥ 1 gives frames 4k − 3 … 4k, the Wan VAE's alignment.
Latents: TAEHV decodes the *normalised* latents the diffusion model works in (no mean / std); output is
RGB in [0, 1], mapped here to [−1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TinyDecoderConfig:
    """latent_channels: C of the latents; widths: channels of the three stages and of the head;
    time_upscale: which stage's TimeGrow doubles the frame rate (each stage also doubles H and W)."""

    latent_channels: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_upscale: tuple[bool, bool, bool] = (False, True, True)
    image_channels: int = 3

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def spatial_stride(self) -> int:
        return 2 ** len(self.time_upscale)


def taew2_1() -> TinyDecoderConfig:
    """The configuration of the published ``taew2_1`` decoder (Wan2.1 VAE latents, 16 channels)."""
    return TinyDecoderConfig()


def conv3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3·tanh(z/3): bounds out-of-range latents smoothly before the first convolution."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


class MemBlock(nn.Module):
    """y_t = ReLU(F([x_t, x_{t−1}]) + x_t) on a chunk of frames, given the input frame before the chunk.

    x: [B·T, C, H, W], frames of each video contiguous (b major, t minor); past: [B, C, H, W] (x_{−1} of
    each video; None at the clip's start, meaning zeros). Returns (y like x, x's last frames [B, C, H, W]).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3(2 * channels, channels), nn.ReLU(inplace=True),
                                  conv3(channels, channels), nn.ReLU(inplace=True), conv3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = x.shape[0] // batch
        if past is None:
            past = torch.zeros_like(x[::T])
        # x_{t−1} for every frame, built with 4-D cats along the batch axis so the memory format stays
        pieces = []
        for b in range(batch):
            pieces += [past[b : b + 1], x[b * T : (b + 1) * T - 1]]
        x_prev = torch.cat(pieces, 0)
        y = torch.relu_(self.conv(torch.cat([x, x_prev], 1)) + x)
        # clone: a view would keep the whole chunk's activation alive until the next call
        return y, x[T - 1 :: T].clone()


class TimeGrow(nn.Module):
    """One frame → s frames: [B·T, C, H, W] → [B·T·s, C, H, W], frame s·t + j from channel group j."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.stride == 1:
            return y
        n, c, h, w = x.shape
        # one copy into a tensor of the conv output's memory format (reshape would fall back to NCHW)
        fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty(n * self.stride, c, h, w, device=y.device, dtype=y.dtype, memory_format=fmt)
        out.unflatten(0, (n, self.stride)).copy_(y.unflatten(1, (self.stride, c)))
        return out


@dataclass(frozen=True)
class TinyDecodeState:
    """memory: per MemBlock, its input at the last frame decoded so far ([B, C_k, h_k, w_k]; None before the
    first call); batch_size: B; frames: latent frames decoded so far; size: latent (h, w) of the stream."""

    memory: tuple
    batch_size: int
    frames: int = 0
    size: tuple[int, int] | None = None


class TinyVideoDecoder(nn.Module):
    """The TAEHV-family decoder: ``decoder`` holds the published layout, so ``taew2_1`` loads key for key."""

    def __init__(self, config: TinyDecoderConfig | None = None):
        super().__init__()
        self.config = cfg = config or taew2_1()
        w = cfg.widths
        layers: list[nn.Module] = [SoftClamp(), conv3(cfg.latent_channels, w[0]), nn.ReLU(inplace=True)]
        for i, grow in enumerate(cfg.time_upscale):
            layers += [MemBlock(w[i]), MemBlock(w[i]), MemBlock(w[i]), nn.Upsample(scale_factor=2),
                       TimeGrow(w[i], 2 if grow else 1), conv3(w[i], w[i + 1], bias=False)]
        layers += [nn.ReLU(inplace=True), conv3(w[-1], cfg.image_channels)]
        self.decoder = nn.Sequential(*layers)
        self.num_mem = sum(isinstance(m, MemBlock) for m in self.decoder)

    def init_state(self, batch_size: int) -> TinyDecodeState:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        return TinyDecodeState(memory=(None,) * self.num_mem, batch_size=batch_size)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, state: TinyDecodeState) -> tuple[torch.Tensor, TinyDecodeState]:
        """The next t normalised latent frames [B, C, t, h, w] → (frames [B, 3, f, 8h, 8w] in [−1, 1], state).

        f = 4t − 3 on the stream's first call (its first 3 raw frames are dropped), 4t afterwards.
        Frames of the chunk are decoded together; no host synchronisation (safe on a side CUDA stream).
        """
        self._check(z, state)
        B, C, t, h, w = z.shape
        p = self.decoder[1].weight
        fmt = torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        x = z.to(p.dtype).transpose(1, 2).reshape(B * t, C, h, w).contiguous(memory_format=fmt)
        memory, k = list(state.memory), 0
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                x, memory[k] = layer(x, memory[k], B)
                k += 1
            else:
                x = layer(x)
        frames = x.unflatten(0, (B, -1)).transpose(1, 2)  # [B, 3, s·t, H, W]
        if state.frames == 0:
            frames = frames[:, :, self.config.temporal_stride - 1 :]
        frames = frames.contiguous().clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        return frames, TinyDecodeState(tuple(memory), B, state.frames + t, (h, w))

    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """The whole clip [B, C, t, h, w] at once → [B, 3, 1 + 4(t − 1), 8h, 8w] in [−1, 1]."""
        return self.decode(z, self.init_state(z.shape[0]))[0]

    def _check(self, z: torch.Tensor, state: TinyDecodeState) -> None:
        C = self.config.latent_channels
        if not isinstance(state, TinyDecodeState) or len(state.memory) != self.num_mem:
            raise ValueError("state is not a TinyDecodeState of this decoder; start one with init_state(batch_size)")
        if z.ndim != 5 or z.shape[1] != C or z.shape[2] < 1:
            raise ValueError(f"expected latents [B, {C}, t ≥ 1, h, w], got {tuple(z.shape)}")
        if z.shape[0] != state.batch_size:
            raise ValueError(f"latents have batch {z.shape[0]}, the state was made for {state.batch_size}")
        if state.size is not None and tuple(z.shape[3:]) != state.size:
            raise ValueError(f"latents are {tuple(z.shape[3:])}, this stream started at {state.size}")
        if z.device != self.decoder[1].weight.device:
            raise ValueError(f"latents on {z.device}, the decoder on {self.decoder[1].weight.device}")

    def load_decoder_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the ``decoder.*`` entries of a TAEHV-family state dict (the encoder's, if any, are not used).
        Names and shapes must match exactly: a file for another latent space fails here, not at decode time."""
        own = self.state_dict()
        given = {k: v for k, v in state_dict.items() if k.startswith("decoder.")}
        missing = sorted(own.keys() - given.keys())
        unexpected = sorted(given.keys() - own.keys())
        wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
                 for k, v in given.items() if k in own and v.shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"not a decoder of this configuration ({self.config}): missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")
        self.load_state_dict(given)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file (the latter read with ``weights_only``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path} (give the path of taew2_1.pth or taew2_1.safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def load_tiny_decoder(path: str | Path, config: TinyDecoderConfig | None = None) -> TinyVideoDecoder:
    """A ``TinyVideoDecoder`` (default: the ``taew2_1`` configuration) with the weights of the file at ``path``."""
    model = TinyVideoDecoder(config)
    model.load_decoder_weights(read_state_dict(path))
    return model.eval()
