"""Fused RMSNorm + RoPE for q and k (inference path on CUDA).

    y = u · rsqrt(mean(u²) + eps) · w            (RMSNorm over the full width D, as Wan)
    out[2i] = y[2i]·cos_i − y[2i+1]·sin_i,  out[2i+1] = y[2i]·sin_i + y[2i+1]·cos_i   (per head, pair i)

One program per token row: the row is read once and written once, instead of the several fp32 passes of
the PyTorch composition (norm, cast, four products, two sums, two strided writes). No backward: used only
when gradients are off; training and the forward-mode pass use the PyTorch path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_rope_kernel(U, W, COS, SIN, OUT, stride_ub, stride_ul, stride_ob, stride_ol, stride_cl, L, eps,
                         D: tl.constexpr, HALF_HEAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)          # token index within the batch element
    b = tl.program_id(1)
    i = tl.arange(0, BLOCK)         # pair index across all heads: channels 2i, 2i+1
    ok = i < D // 2
    u_ptr = U + b * stride_ub + row * stride_ul
    x_e = tl.load(u_ptr + 2 * i, mask=ok, other=0.0).to(tl.float32)
    x_o = tl.load(u_ptr + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)
    inv = tl.rsqrt((tl.sum(x_e * x_e, 0) + tl.sum(x_o * x_o, 0)) / D + eps)
    w_e = tl.load(W + 2 * i, mask=ok, other=0.0).to(tl.float32)
    w_o = tl.load(W + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)
    y_e, y_o = x_e * inv * w_e, x_o * inv * w_o
    p = i % HALF_HEAD               # rotation index inside the head
    c = tl.load(COS + row * stride_cl + p, mask=ok, other=1.0)
    s = tl.load(SIN + row * stride_cl + p, mask=ok, other=0.0)
    o_ptr = OUT + b * stride_ob + row * stride_ol
    tl.store(o_ptr + 2 * i, (y_e * c - y_o * s).to(OUT.dtype.element_ty), mask=ok)
    tl.store(o_ptr + 2 * i + 1, (y_e * s + y_o * c).to(OUT.dtype.element_ty), mask=ok)


def rmsnorm_rope(u: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int,
                 eps: float) -> torch.Tensor:
    """u [B, L, D] (rows contiguous), weight [D], cos/sin [L, head_dim/2] fp32 -> [B, L, D] in u's dtype."""
    B, L, D = u.shape
    if u.stride(-1) != 1:
        u = u.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((B, L, D), dtype=u.dtype, device=u.device)
    block = triton.next_power_of_2(D // 2)
    _rmsnorm_rope_kernel[(L, B)](u, weight, cos, sin, out, u.stride(0), u.stride(1), out.stride(0), out.stride(1),
                                 cos.stride(0), L, eps, D=D, HALF_HEAD=head_dim // 2, BLOCK=block,
                                 num_warps=4 if block <= 512 else 8)
    return out
