"""The Wan2.1 DiT's building blocks: embeddings, RoPE, norms, modulation, attention projections, and the
one helper every forward-mode pass uses (``split_jvp``).

Precision: sinusoids, RoPE tables, norms and modulation run in fp32 (cheap and sensitive); matmuls run in the
input / autocast dtype. Shapes: tokens [B, L, D]; heads [B, L, H, d]; per-frame modulation [B, Ft, D] with
Ft = 1 (one time per sample) or the number of frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import jvp

from ..runtime import to_device


def fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: low-precision tensors go up to fp32, fp64 (tests) stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[cos(p·ω_i), sin(p·ω_i)], ω_i = 10000^(−i/half) (Wan's timestep embedding), fp32 (as diffusers)."""
    half = dim // 2
    position = fp32(position)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=position.dtype, device=position.device) / half)
    arg = position[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def rope_freqs(head_dim: int) -> list[torch.Tensor]:
    """Per-axis rotation frequencies (frame, height, width): head_dim splits as d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋."""
    hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * hw, hw, hw)
    # explicit CPU device: models are also built under torch.device('meta') for loading
    return [1.0 / torch.pow(10000.0, torch.arange(0, a, 2, dtype=torch.float64, device="cpu") / a) for a in dims]


def rope_tables(freqs: list[torch.Tensor], frame_pos: torch.Tensor, hp: int, wp: int, device):
    """cos, sin of shape [L, head_dim/2] for tokens ordered (frame, row, column)."""
    f = frame_pos.to(device="cpu", dtype=torch.float64)
    axes = [torch.outer(f, freqs[0]), torch.outer(torch.arange(hp, dtype=torch.float64, device="cpu"), freqs[1]),
            torch.outer(torch.arange(wp, dtype=torch.float64, device="cpu"), freqs[2])]
    nf = len(f)
    angles = torch.cat([axes[0][:, None, None].expand(nf, hp, wp, -1),
                        axes[1][None, :, None].expand(nf, hp, wp, -1),
                        axes[2][None, None, :].expand(nf, hp, wp, -1)], dim=-1).reshape(nf * hp * wp, -1)
    return to_device(angles.cos().float(), device), to_device(angles.sin().float(), device)  # no host sync


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs: x [B, L, H, d]; cos, sin [L, d/2] (fp32 products, x's dtype out)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    c, s = cos[:, None].to(ct), sin[:, None].to(ct)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def layer_norm(x, eps, weight=None, bias=None):
    """LayerNorm computed in fp32, returned in x's dtype (as diffusers' FP32LayerNorm)."""
    return F.layer_norm(fp32(x), x.shape[-1:], weight, bias, eps).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·(1 + scale) + shift with per-frame (or per-sample) modulation: x [B, L, D]; shift, scale
    [B, Ft, D] with Ft = 1 or the number of frames. Broadcast inside, never a per-token copy."""
    B, L, D = x.shape
    Ft = shift.shape[1]
    y = torch.addcmul(shift[:, :, None], x.view(B, Ft, L // Ft, D), 1 + scale[:, :, None])
    return y.view(B, L, D)


def gate(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x + y·g in fp32 with per-frame g [B, Ft, D]; returned in x's dtype."""
    B, L, D = x.shape
    Ft = g.shape[1]
    out = torch.addcmul(fp32(x).view(B, Ft, L // Ft, D), y.view(B, Ft, L // Ft, D), g[:, :, None])
    return out.view(B, L, D).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # fused kernel; low-precision inputs are accumulated in fp32 inside it
        return F.rms_norm(x, x.shape[-1:], self.weight.to(x.dtype), self.eps)


class LayerNorm(nn.Module):
    """LayerNorm in fp32 (affine only where Wan has it: the cross-attention norm)."""

    def __init__(self, dim: int, eps: float, affine: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x):
        w = None if self.weight is None else fp32(self.weight)
        b = None if self.bias is None else fp32(self.bias)
        return layer_norm(x, self.eps, w, b)


class Attention(nn.Module):
    """Wan's attention projections: q, k, v, o and RMSNorm over the full width of q and k."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.fused_norm_rope = True  # CUDA without gradients: kernels/norm_rope.py (WanDiT.use_fused_norm_rope)

    def heads(self, x):  # [B, L, D] -> [B, L, H, d]
        return x.unflatten(-1, (self.num_heads, -1))

    def qkv(self, x, rope):
        """Self-attention q, k, v as [B, H, L, d], with RoPE on q and k."""
        cos, sin = rope
        uq, uk = self.q(x), self.k(x)
        if (self.fused_norm_rope and uq.is_cuda and uq.dtype != torch.float64 and not torch.is_grad_enabled()
                and isinstance(self.norm_q, RMSNorm) and not torch.compiler.is_compiling()):  # compiled: Inductor fuses
            from ..kernels.norm_rope import rmsnorm_rope  # fused inference path (one pass per row)

            d = uq.shape[-1] // self.num_heads
            q = self.heads(rmsnorm_rope(uq, self.norm_q.weight, cos, sin, d, self.norm_q.eps))
            k = self.heads(rmsnorm_rope(uk, self.norm_k.weight, cos, sin, d, self.norm_k.eps))
        else:
            q = apply_rope(self.heads(self.norm_q(uq)), cos, sin)
            k = apply_rope(self.heads(self.norm_k(uk)), cos, sin)
        v = self.heads(self.v(x))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def context_kv(self, ctx):
        k = self.heads(self.norm_k(self.k(ctx))).transpose(1, 2)
        v = self.heads(self.v(ctx)).transpose(1, 2)
        return k, v

    def out(self, o):  # [B, H, L, d] -> [B, L, D]
        return self.o(o.transpose(1, 2).flatten(2))


def split_jvp(fn, tokens: tuple, tangents: tuple, Lp: int, f0: int = 0, frame_args: tuple = (),
              frame_tangents: tuple = ()):
    """(y, ẏ) of a token-wise ``fn(*tokens, *frame_args)`` when only tokens ≥ Lp (frames ≥ f0) carry tangents.

    The tokens before Lp (the clean context of the teacher-forcing layout) get a primal call only; the rest
    go through ``torch.func.jvp``, which computes primal and tangent in one pass. ``fn`` is a module or a
    function of modules, so every weight is used through its module (FSDP2's hooks see the block that owns
    them). ``frame_args`` [B, Ft, D] are per-frame (or per-sample, Ft = 1) inputs such as the modulation; the
    suffix part of a per-frame one starts at frame f0. ``tangents`` hold the suffix tokens only; so do
    ``frame_tangents`` (their frames ≥ f0). Returns y for all tokens and ẏ for the suffix.
    """
    def part(a, pre):
        return a if a.shape[1] == 1 else (a[:, :f0] if pre else a[:, f0:])

    suffix = tuple(t[:, Lp:] for t in tokens) + tuple(part(a, False) for a in frame_args)
    y_s, y_dot = jvp(fn, suffix, tuple(tangents) + tuple(frame_tangents))
    if Lp == 0:
        return y_s, y_dot
    y_p = fn(*(t[:, :Lp] for t in tokens), *(part(a, True) for a in frame_args))
    return torch.cat([y_p, y_s], dim=1), y_dot
