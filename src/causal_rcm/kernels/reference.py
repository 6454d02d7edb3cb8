"""Pure-PyTorch reference for masked attention and its forward-mode derivative (METHOD.md §2, §4).

    S = scale·QKᵀ (masked),  P = softmax(S),  O = PV
    Ṡ = scale·(Q̇Kᵀ + QK̇ᵀ),  Ȯ = PV̇ + (P⊙Ṡ)V − rowsum(P⊙Ṡ)·O

Shapes: q [B, H, Lq, d], k and v [B, H, Lk, d]. Query row i is token ``q_offset + i`` of the masked
sequence. Known zero tangents are structure given by the caller: ``tq`` holds query rows
[tangent_rows, Lq), ``tk`` and ``tv`` hold keys [tangent_keys, Lk); rows < tangent_rows may not see keys
>= tangent_keys (so their output tangent is exactly zero and is not returned).

The math is dense over query-row chunks (at most ``REF_CHUNK_ELEMENTS`` scores at a time), in fp32 for
half-precision inputs and fp64 for fp64 inputs, and made of plain differentiable ops, so tests can check
the explicit tangent of ``attention_ref`` (the JVP reference, with ``attention_jvp``'s signature) against
``torch.func.jvp`` of ``attention_math`` (the forward alone). The Triton kernel (``flash_attn_jvp.py``)
computes the same function without the dense scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks import Mask

# Scores materialised at once per query chunk (B·H·rows·Lk); 2^25 fp32 scores = 128 MiB per temporary.
REF_CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class JvpShape:
    """Checked sizes of one (masked) attention call: ``T`` video frames (None without a mask)."""

    B: int
    H: int
    Lq: int
    Lk: int
    d: int
    T: int | None
    scale: float


def check_attention_args(q, k, v, mask: Mask | None, frame_tokens: int | None, scale: float | None,
                         q_offset: int) -> JvpShape:
    """Validate shapes and the mask's frame layout; returns the sizes and the softmax scale."""
    if q.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape != v.shape or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"expected q [B, H, Lq, d] and k, v [B, H, Lk, d]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, Lq, d = q.shape
    Lk = k.shape[-2]
    T = None
    if mask is not None:
        if frame_tokens is None or frame_tokens < 1:
            raise ValueError("a masked attention needs frame_tokens (tokens per latent frame)")
        if Lk % frame_tokens or q_offset < 0 or q_offset + Lq > Lk:
            raise ValueError(f"keys ({Lk}) must be whole frames of {frame_tokens} tokens and cover the "
                             f"queries (q_offset {q_offset} + Lq {Lq})")
        T = mask.video_frames(Lk // frame_tokens)
    scale = float(d ** -0.5 if scale is None else scale)
    if not scale > 0:
        raise ValueError(f"the softmax scale must be positive, got {scale}")
    return JvpShape(B, H, Lq, Lk, d, T, scale)


def check_jvp_args(q, k, v, tq, tk, tv, mask: Mask | None, frame_tokens: int | None, scale: float | None,
                   q_offset: int, tangent_rows: int, tangent_keys: int) -> JvpShape:
    """``check_attention_args`` plus the tangents' shapes and the zero-tangent structure.

    The structure is checked from the mask's frame rule, never from data: every frame holding a row
    < tangent_rows must not see any frame holding a key >= tangent_keys.
    """
    shp = check_attention_args(q, k, v, mask, frame_tokens, scale, q_offset)
    B, H, Lq, Lk, d = shp.B, shp.H, shp.Lq, shp.Lk, shp.d
    if not (0 <= tangent_rows <= Lq and 0 <= tangent_keys <= Lk):
        raise ValueError(f"need 0 <= tangent_rows <= Lq ({Lq}) and 0 <= tangent_keys <= Lk ({Lk}); got "
                         f"{tangent_rows}, {tangent_keys}")
    want = {"tq": (tq, (B, H, Lq - tangent_rows, d)), "tk": (tk, (B, H, Lk - tangent_keys, d)),
            "tv": (tv, (B, H, Lk - tangent_keys, d))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (tangents of rows/keys from tangent_rows/"
                             f"tangent_keys on); got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must match q's dtype and device ({q.dtype}, {q.device}); got "
                             f"{t.dtype}, {t.device}")
    if tangent_rows > 0 and tangent_keys < Lk:
        if mask is None:
            raise ValueError("dense attention: every row sees every key, so rows without tangent "
                             "(tangent_rows > 0) need tangent_keys == Lk")
        N = frame_tokens
        qf = torch.arange(q_offset // N, (q_offset + tangent_rows - 1) // N + 1)
        kf = torch.arange(tangent_keys // N, (Lk - 1) // N + 1)
        if mask.visible(qf[:, None], kf[None, :], shp.T).any():
            raise ValueError(
                f"rows < tangent_rows ({tangent_rows}) see keys >= tangent_keys ({tangent_keys}) under "
                f"{mask}: their output tangent would not be zero; pass smaller tangent_rows or larger "
                f"tangent_keys")
    return shp


def _visible(mask: Mask | None, frame_tokens, T, rows: torch.Tensor, Lk: int) -> torch.Tensor | None:
    """Bool [rows, Lk] token mask from the frame rule (None = dense)."""
    if mask is None:
        return None
    kf = torch.arange(Lk, device=rows.device) // frame_tokens
    return mask.visible((rows // frame_tokens)[:, None], kf[None, :], T)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _row_chunks(shp: JvpShape):
    rows = max(1, REF_CHUNK_ELEMENTS // max(1, shp.B * shp.H * shp.Lk))
    return [(i, min(i + rows, shp.Lq)) for i in range(0, shp.Lq, rows)]


def _softmax_rows(q_c, kT, mask, frame_tokens, T, i0, i1, q_offset, scale):
    """P for query rows [i0, i1): masked softmax of scale·QKᵀ."""
    s = scale * (q_c @ kT)
    vis = _visible(mask, frame_tokens, T, torch.arange(i0, i1, device=q_c.device) + q_offset, kT.shape[-1])
    if vis is not None:
        s = s.masked_fill(~vis, float("-inf"))
    return torch.softmax(s, dim=-1)


def attention_math(q, k, v, mask: Mask | None = None, frame_tokens: int | None = None,
                   scale: float | None = None, q_offset: int = 0) -> torch.Tensor:
    """O = softmax(scale·QKᵀ + mask)·V, chunked over query rows; output in q's dtype."""
    shp = check_attention_args(q, k, v, mask, frame_tokens, scale, q_offset)
    ct = _compute_dtype(q)
    kT, v_ = k.to(ct).transpose(-1, -2), v.to(ct)
    out = []
    for i0, i1 in _row_chunks(shp):
        q_c = q[..., i0:i1, :].to(ct)
        out.append(_softmax_rows(q_c, kT, mask, frame_tokens, shp.T, i0, i1, q_offset, shp.scale) @ v_)
    return torch.cat(out, dim=-2).to(q.dtype)


def attention_ref(q, k, v, tq, tk, tv, mask: Mask | None = None, frame_tokens: int | None = None,
                  scale: float | None = None, *, q_offset: int = 0, tangent_rows: int = 0,
                  tangent_keys: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) with Ȯ = PV̇ + (P⊙Ṡ)V − rowsum(P⊙Ṡ)·O, Ṡ = scale·(Q̇Kᵀ + QK̇ᵀ); Ȯ of rows >= tangent_rows."""
    shp = check_jvp_args(q, k, v, tq, tk, tv, mask, frame_tokens, scale, q_offset, tangent_rows, tangent_keys)
    ct = _compute_dtype(q)
    B, H, d = shp.B, shp.H, shp.d
    kT, v_ = k.to(ct).transpose(-1, -2), v.to(ct)
    zk = torch.zeros(B, H, tangent_keys, d, dtype=ct, device=q.device)
    tkT = torch.cat([zk, tk.to(ct)], dim=-2).transpose(-1, -2)
    tv_ = torch.cat([zk, tv.to(ct)], dim=-2)
    tq_ = torch.cat([torch.zeros(B, H, tangent_rows, d, dtype=ct, device=q.device), tq.to(ct)], dim=-2)
    out, tout = [], []
    for i0, i1 in _row_chunks(shp):
        q_c = q[..., i0:i1, :].to(ct)
        p = _softmax_rows(q_c, kT, mask, frame_tokens, shp.T, i0, i1, q_offset, shp.scale)
        o = p @ v_
        s_dot = shp.scale * (tq_[..., i0:i1, :] @ kT + q_c @ tkT)
        ps = p * s_dot
        out.append(o)
        tout.append(p @ tv_ + ps @ v_ - ps.sum(dim=-1, keepdim=True) * o)
    o, to = torch.cat(out, dim=-2), torch.cat(tout, dim=-2)
    return o.to(q.dtype), to[..., tangent_rows:, :].to(q.dtype)
