"""Streaming decode (and whole-clip encode) with diffusers' ``AutoencoderKLWan``, the Wan2.1 VAE.

The network is diffusers' own: this module only owns the *loop* that diffusers runs inside
``AutoencoderKLWan._decode`` and the cache that loop threads through the decoder, so a stream can hand
the decoder a few latent frames at a time and keep the cache between calls.

How diffusers decodes a clip of T latent frames (diffusers 0.42, ``_decode``):

    cache = [None] * (number of WanCausalConv3d in vae.decoder)
    x = post_quant_conv(z)                                   # 1×1×1: frame by frame
    out = decoder(x[:, :, :1], cache, first_chunk=True)      # latent 0 → 1 frame
    for i in 1..T−1: out += decoder(x[:, :, i:i+1], cache)   # latent i → 4 frames
    return clamp(out, −1, 1)                                 # 1 + 4(T − 1) frames

Every temporal operation in the decoder is a causal convolution whose module, when it is called with a
cache list, (a) prepends the cached last 2 frames of its own input from the previous call and (b)
*replaces* its list entry by the last 2 frames of the current input. The attention block is per frame.
So a call on t frames at once computes exactly what t calls on one frame compute (kernel 3 in time
needs 2 frames of history, and the cache holds them whatever t was), and the concatenation of any
split equals the whole decode. The one exception is the first latent frame: the temporal upsamplers
mark their entry ``"Rep"`` and skip their time convolution for it (that is what makes latent 0 one
frame instead of four), which only works on a one-frame call. Hence the first decode call splits off
latent 0; every later call hands its whole chunk to the decoder in one go, which is also what makes the
streaming decode a little faster per frame than diffusers' frame-by-frame loop.

The state is a value: ``decode`` passes the decoder a fresh *list* holding the old state's references
(dozens of pointers, no tensor is copied); diffusers assigns new tensors into that list and never writes
into a cached tensor, so the old state stays valid (a stream can branch or retry from it) and the new
one shares every untouched tensor with it.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # diffusers is optional: it is imported where a Wan VAE is actually used
    from diffusers import AutoencoderKLWan


@dataclass(frozen=True)
class WanDecodeState:
    """Where a stream's Wan decode stands after some latent frames.

    cache: one entry per ``WanCausalConv3d`` of ``vae.decoder`` (diffusers' ``feat_cache`` indexing):
        None (not reached yet), ``"Rep"`` (a temporal upsampler after latent 0) or a tensor
        [B, C_l, ≤2, h_l, w_l], the last input frames of that convolution.
    batch_size: B.
    frames: latent frames decoded so far (0: the next call starts the clip).
    size: latent (h, w) of the stream, fixed by its first call.
    """

    cache: tuple
    batch_size: int
    frames: int = 0
    size: tuple[int, int] | None = None


def wan_strides(vae: AutoencoderKLWan) -> tuple[int, int]:
    """(temporal, spatial) stride of a Wan2.1-style VAE, read from its architecture: every down stage but
    the last halves H and W, and the ones flagged in ``temperal_downsample`` also halve time."""
    cfg = vae.config
    stages = len(cfg.dim_mult) - 1
    return 2 ** sum(bool(d) for d in cfg.temperal_downsample[:stages]), 2**stages


def channels_last_(vae: torch.nn.Module) -> torch.nn.Module:
    """Put every 3-D conv weight of ``vae`` in channels_last_3d and every 2-D one in channels_last, in place.

    cuDNN's fast bf16 convolutions read channels-last data; with the weights so and the decoder's input
    made channels_last_3d, diffusers' modules keep that layout through their cats, pads, norms and the
    per-frame 2-D upsampling convs (a permute + reshape that stays a view), so no conv pays a layout change.
    ``vae.decode`` gives the same values either way; only speed changes.
    """
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
        elif isinstance(m, torch.nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return vae


class WanStream:
    """Chunk-by-chunk decode and whole-clip encode of normalised Wan latents with a diffusers VAE.

    Latents are the *normalised* ones the DiT sees, as in diffusers' Wan pipelines:
    z = (μ − latents_mean) / latents_std, with μ the posterior mean; decode undoes it first.
    compile: run the decoder through ``torch.compile`` (the network stays diffusers'; inductor fuses its
    memory-bound norm / SiLU / cat / pad kernels, most of the GPU time). Each new chunk length and cache
    state compiles on first use (tens of seconds at 480p): warm a stream up before it must be real-time.
    For the fastest eager path, also put the VAE in channels-last layout first (``channels_last_``).
    """

    def __init__(self, vae: AutoencoderKLWan, compile: bool = False):
        from diffusers import AutoencoderKLWan
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        if not isinstance(vae, AutoencoderKLWan):
            raise ValueError(f"expected a diffusers AutoencoderKLWan, got {type(vae).__name__}")
        cfg = vae.config
        if cfg.is_residual or cfg.patch_size is not None:
            raise ValueError("this is a Wan2.2-style VAE (is_residual / patch_size); WanStream decodes the "
                             "Wan2.1 VAE (also used by Wan2.2-A14B)")
        self.vae = vae.eval()
        self.decoder = torch.compile(vae.decoder, dynamic=False) if compile else vae.decoder
        self.compiled = compile
        self.channels = cfg.z_dim
        self.temporal_stride, self.spatial_stride = wan_strides(vae)
        self.num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        p = next(vae.parameters())
        # fp32 statistics on the VAE's device, made once here so decode never moves data from the host
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=p.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=p.device).view(1, -1, 1, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of a clip of ``frames`` = 1 + s_t·(t − 1) pixel frames of H×W (multiples of s_s)."""
        st, ss = self.temporal_stride, self.spatial_stride
        if frames < 1 or (frames - 1) % st or height % ss or width % ss:
            raise ValueError(f"the Wan VAE takes 1 + {st}k frames of H×W divisible by {ss}; "
                             f"got {frames} frames of {height}×{width}")
        return (self.channels, 1 + (frames - 1) // st, height // ss, width // ss)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean.device != device:  # the VAE moved after construction: follow it once, not per call
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self.mean, self.std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """z = (μ − mean) / std in fp32 (the DiT's latent space)."""
        mean, std = self._stats(mu.device)
        return (mu.float() - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """μ = z · std + mean in fp32, then cast to the VAE's dtype (the decoder's input)."""
        mean, std = self._stats(z.device)
        return (z.float() * std + mean).to(self.dtype)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [−1, 1], F = 1 + 4k → normalised latents [B, 16, 1 + k, H/8, W/8] (fp32).

        The posterior *mean* (``latent_dist.mode()``, what Wan's I2V pipeline takes with
        ``sample_mode="argmax"``): encoding a conditioning frame or a training clip must be
        deterministic, and the posterior's std is tiny next to the latents' spread anyway.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, F, H, W], got {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])
        mu = self.vae.encode(video.to(self.dtype)).latent_dist.mode()
        return self.normalize(mu)

    def init_state(self, batch_size: int) -> WanDecodeState:
        """An empty cache: the next decode call starts a clip (its first latent frame gives one frame)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        return WanDecodeState(cache=(None,) * self.num_convs, batch_size=batch_size)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, state: WanDecodeState) -> tuple[torch.Tensor, WanDecodeState]:
        """The next t latent frames → (their frames [B, 3, f, 8h, 8w] in [−1, 1], the new state).

        f = 1 + 4(t − 1) on a stream's first call, 4t afterwards; the frames are exactly the ones
        ``vae.decode`` of the whole latent sequence gives for these latents. No host synchronisation:
        safe to run on a side CUDA stream.
        """
        self._check(z, state)
        # one layout for every call, whatever strides the sampler's output has: a compiled decoder guards on
        # strides, and elementwise work and cuDNN convolutions carry the input's layout into the cache
        cl = self.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
        x = self.denormalize(z).contiguous(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
        x = self.vae.post_quant_conv(x)
        cache = list(state.cache)  # the new state's list; the tensors it points to are shared, not copied
        parts = []
        # diffusers' cache bookkeeping breaks the graph, so dynamo compiles per conv shape × cache state ×
        # chunk length: more variants than its default limit of 8 per function (then it would fall back to eager)
        with torch._dynamo.config.patch(recompile_limit=256) if self.compiled else nullcontext():
            if state.frames == 0:  # latent 0 alone: the temporal upsamplers' "Rep" step needs a 1-frame call
                parts.append(self.decoder(x[:, :, :1], feat_cache=cache, feat_idx=[0], first_chunk=True))
                x = x[:, :, 1:]
            if x.shape[2]:
                parts.append(self.decoder(x, feat_cache=cache, feat_idx=[0]))
        frames = (parts[0] if len(parts) == 1 else torch.cat(parts, 2)).clamp_(-1.0, 1.0)
        return frames, WanDecodeState(tuple(cache), state.batch_size, state.frames + z.shape[2],
                                      (z.shape[3], z.shape[4]))

    def _check(self, z: torch.Tensor, state: WanDecodeState) -> None:
        if not isinstance(state, WanDecodeState) or len(state.cache) != self.num_convs:
            raise ValueError("state is not a WanDecodeState of this VAE; start one with init_state(batch_size)")
        if z.ndim != 5 or z.shape[1] != self.channels or z.shape[2] < 1:
            raise ValueError(f"expected latents [B, {self.channels}, t ≥ 1, h, w], got {tuple(z.shape)}")
        if z.shape[0] != state.batch_size:
            raise ValueError(f"latents have batch {z.shape[0]}, the state was made for {state.batch_size}")
        if state.size is not None and tuple(z.shape[3:]) != state.size:
            raise ValueError(f"latents are {tuple(z.shape[3:])}, this stream started at {state.size}")
        device = next(self.vae.parameters()).device
        if z.device != device:
            raise ValueError(f"latents on {z.device}, the VAE on {device}")
