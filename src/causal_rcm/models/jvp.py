"""Forward-mode pass through WanDiT: (v, v̇) = (v_θ(x, t, c), ∂v/∂x·ẋ + ∂v/∂t·ṫ [+ ∂v/∂r·ṙ]).

This is the dv/dt that continuous-time consistency distillation needs (METHOD.md §4). It runs under
no_grad and carries, next to the primal activations [B, L, D], tangents only for the frames that have
them: ``tangent_from`` = f0 says frames < f0 have ẋ = 0 and ṫ = 0 *and* attend to no frame ≥ f0, so their
tangents are exactly zero in every layer (the clean context of the teacher-forcing layout, with f0 = T).
Those tokens then cost only a primal forward: linear layers apply W to the suffix tangent only, and
attention runs the masked JVP kernel with ``tangent_rows = tangent_keys = f0·N``.

Linear maps (patch embedding, projections, RoPE) take their tangent by hand (W·ẋ, no bias); the small
nonlinear pieces (norms with modulation, GELU, gates, the time embedding) go through ``torch.func.jvp``
locally on the suffix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import jvp

from ..kernels import attention_jvp
from .masks import Mask
from .wan import apply_rope, fp32, gate, layer_norm, modulate


def _suffix_frames(m: torch.Tensor, f0: int) -> torch.Tensor:
    """Per-frame modulation [B, Ft, ...] restricted to the tangent frames (per-sample ones stay as they are)."""
    return m if m.shape[1] == 1 else m[:, f0:]


def _lin(layer: torch.nn.Linear, xd: torch.Tensor) -> torch.Tensor:
    return F.linear(xd, layer.weight)


@torch.no_grad()
def forward_jvp(model, x, t, context, x_dot, t_dot, mask: Mask | None = None, tangent_from: int = 0,
                r=None, r_dot=None):
    """(v, v̇) for the whole network; see the module docstring.

    x [B, C, F, H, W]; t [B] or [B, F]; x_dot for frames [f0, F) ([B, C, F − f0, H, W]) or for all F frames
    (then its first f0 frames must be zero by the caller's structure and v̇ comes back for all F frames,
    zero before f0); t_dot like t, or [B, F − f0]. With r (MeanFlow's second time) pass r_dot too.
    """
    B, C, Fr, H, W = x.shape
    f0 = tangent_from
    full_tangent = x_dot.shape[2] == Fr
    if full_tangent:
        x_dot = x_dot[:, :, f0:]
    if x_dot.shape[2] != Fr - f0:
        raise ValueError(f"x_dot has {x_dot.shape[2]} frames; expected {Fr - f0} (frames {f0}..{Fr - 1}) or {Fr}")

    # times: per frame whenever some frames carry no tangent
    if f0 > 0 and t.ndim == 1:
        t = t[:, None].repeat(1, Fr)
    if t_dot.ndim == 1 and t.ndim == 2:
        t_dot = t_dot[:, None].repeat(1, Fr - f0)
    if t.ndim == 2 and t_dot.shape[1] == Fr - f0 and f0 > 0:
        t_dot = torch.cat([torch.zeros(B, f0, dtype=t_dot.dtype, device=t_dot.device), t_dot], dim=1)
    if r is not None:
        r_dot = torch.zeros_like(r) if r_dot is None else r_dot
        (e, e0), (de, de0) = jvp(lambda tt, rr: model.time_embed(tt, rr), (t, r), (t_dot.to(t.dtype), r_dot))
    else:
        (e, e0), (de, de0) = jvp(lambda tt: model.time_embed(tt), (t,), (t_dot.to(t.dtype),))
    de, de0 = _suffix_frames(de, f0), _suffix_frames(de0, f0)

    tokens, (nf, hp, wp) = model.patchify(x)
    N = hp * wp
    Lp = f0 * N  # tokens without tangent
    pe = model.patch_embedding
    td = F.conv3d(x_dot.to(pe.weight.dtype), pe.weight, None, pe.stride).flatten(2).transpose(1, 2)

    frame_pos = mask.frame_positions(mask.video_frames(nf)) if mask is not None else torch.arange(nf)
    cos, sin = model.rope(frame_pos, hp, wp, x.device)
    rope_s = (cos[Lp:], sin[Lp:])
    ctx_kv = model.context_kv(context)

    for blk, kv in zip(model.blocks, ctx_kv):
        tokens, td = _block_jvp(blk, tokens, td, e0, de0, kv, (cos, sin), rope_s, mask, N, Lp, f0)

    # head: modulate(LN(x), shift, scale) -> linear, with e (not e0)
    head = model.head
    mod = fp32(head.modulation)[:, None]
    shift, scale = (mod + e[:, :, None]).unbind(2)
    dshift, dscale = de[:, :, None].expand(-1, -1, 2, -1).unbind(2)
    out = head.head(modulate(layer_norm(tokens, head.eps), shift, scale).type_as(tokens))
    _, dh = jvp(lambda xs, sh, sc: modulate(layer_norm(xs, head.eps), sh, sc),
                (tokens[:, Lp:], _suffix_frames(shift, f0), _suffix_frames(scale, f0)), (td, dshift, dscale))
    dout = _lin(head.head, dh.type_as(tokens))

    v = model.unpatchify(out, (nf, hp, wp))
    v_dot = model.unpatchify(dout, (nf - f0, hp, wp))
    if full_tangent and f0 > 0:
        v_dot = torch.cat([torch.zeros_like(v[:, :, :f0]), v_dot], dim=2)
    return v, v_dot


def _block_jvp(blk, x, xd, e0, de0, ctx_kv, rope, rope_s, mask, N, Lp, f0):
    """One WanBlock: primal on all tokens, tangent on tokens >= Lp (see WanBlock.forward)."""
    mods = (fp32(blk.modulation)[:, None] + e0).unbind(2)          # 6 x [B, Ft, D]
    dmods = de0.unbind(2)                                              # 6 x [B, Ft', D]
    shift1, scale1, g1, shift2, scale2, g2 = mods
    s = lambda m: _suffix_frames(m, f0)  # noqa: E731

    def norm_mod(norm, xs, sh, sc):
        return modulate(norm(xs), sh, sc)

    # self-attention
    h = modulate(blk.norm1(x), shift1, scale1).type_as(x)
    _, hd = jvp(lambda xs, sh, sc: norm_mod(blk.norm1, xs, sh, sc), (x[:, Lp:], s(shift1), s(scale1)),
                (xd, dmods[0], dmods[1]))
    hd = hd.type_as(x)
    a = blk.self_attn
    uq, uk = a.q(h), a.k(h)
    q = apply_rope(a.heads(a.norm_q(uq)), *rope).transpose(1, 2)
    k = apply_rope(a.heads(a.norm_k(uk)), *rope).transpose(1, 2)
    v = a.heads(a.v(h)).transpose(1, 2)
    qd = _rms_jvp(a.norm_q, uq[:, Lp:], _lin(a.q, hd))
    kd = _rms_jvp(a.norm_k, uk[:, Lp:], _lin(a.k, hd))
    # tangents in the primal's dtype (the kernel takes one dtype for all six operands)
    qd = apply_rope(a.heads(qd), *rope_s).transpose(1, 2).to(q.dtype)
    kd = apply_rope(a.heads(kd), *rope_s).transpose(1, 2).to(k.dtype)
    vd = a.heads(_lin(a.v, hd)).transpose(1, 2).to(v.dtype)
    o, od = attention_jvp(q, k, v, qd, kd, vd, mask, N, tangent_rows=Lp, tangent_keys=Lp)
    y, yd = a.out(o), _lin(a.o, od.transpose(1, 2).flatten(2))
    x, xd = _gate_jvp(x, xd, y, yd, g1, dmods[2], Lp, f0)

    # cross-attention (context has no tangent)
    c = blk.cross_attn
    h3 = blk.norm3(x).type_as(x)
    _, h3d = jvp(blk.norm3, (x[:, Lp:],), (xd,))
    h3d = h3d.type_as(x)
    uc = c.q(h3)
    cq = c.heads(c.norm_q(uc)).transpose(1, 2)
    cqd = c.heads(_rms_jvp(c.norm_q, uc[:, Lp:], _lin(c.q, h3d))).transpose(1, 2).to(cq.dtype)
    ck, cv = (z.to(cq.dtype) for z in ctx_kv)
    empty = ck[:, :, :0]
    co, cod = attention_jvp(cq, ck, cv, cqd, empty, empty, None, None, tangent_rows=Lp, tangent_keys=ck.shape[2])
    x = x + c.out(co)
    xd = xd + _lin(c.o, cod.transpose(1, 2).flatten(2)).type_as(xd)

    # feed-forward
    h2 = modulate(blk.norm2(x), shift2, scale2).type_as(x)
    _, h2d = jvp(lambda xs, sh, sc: norm_mod(blk.norm2, xs, sh, sc), (x[:, Lp:], s(shift2), s(scale2)),
                 (xd, dmods[3], dmods[4]))
    lin1, act, lin2 = blk.ffn
    z = lin1(h2)
    zd = _lin(lin1, h2d.type_as(x))
    _, ad = jvp(act, (z[:, Lp:],), (zd,))
    y, yd = lin2(act(z)), _lin(lin2, ad)
    return _gate_jvp(x, xd, y, yd, g2, dmods[5], Lp, f0)


def _rms_jvp(norm, u_s, ud):
    """Tangent of RMSNorm at the suffix pre-activations u_s along ud."""
    return jvp(norm, (u_s,), (ud,))[1]


def _gate_jvp(x, xd, y, yd, g, dg, Lp, f0):
    """x + y·g and its tangent on the suffix."""
    out = gate(x, y, g)
    _, od = jvp(lambda xs, ys, gs: gate(xs, ys, gs), (x[:, Lp:], y[:, Lp:], _suffix_frames(g, f0)),
                (xd, yd.type_as(y), dg))
    return out, od
