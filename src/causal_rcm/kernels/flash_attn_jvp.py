"""Masked FlashAttention-2 forward + JVP in Triton (METHOD.md §2, §4; design in docs/kernels.md).

    S = scale·QKᵀ (masked),  P = softmax(S),  O = PV
    Ṡ = scale·(Q̇Kᵀ + QK̇ᵀ),  Ȯ = PV̇ + (P⊙Ṡ)V − rowsum(P⊙Ṡ)·O

One program owns BLOCK_M query rows of one (batch, head) and streams key tiles of BLOCK_N keys with the
online softmax. With m the running row max (log2 units), p = exp2(s − m) and α = exp2(m_old − m_new),
all of  l = Σp,  acc = Σ p·v,  r = Σ p·ṡ,  tacc = Σ p·v̇ + (p·ṡ)·v  are rescaled by α, and at the end
O = acc / l,  Ȯ = (tacc − r·O) / l.

Work the mask or the zero tangents make unnecessary is never done:
- key tiles: per query tile, ``_key_ranges`` re-states the frame rule (``Mask.kernel_args``) as at most
  two key-token ranges; nothing outside them is loaded. Inside a range, full tiles of the prefix that
  every row of the tile sees run without an element mask; the rest (range tails, and tiles whose rows
  straddle a block boundary) apply the frame rule element-wise.
- zero tangents: query rows < tangent_rows run the forward only (their own programs); key tiles <
  tangent_keys skip the K̇ and V̇ matmuls (Ṡ = scale·Q̇Kᵀ there, no PV̇ term).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..masks import BLOCK_CAUSAL, NO_MASK, TEACHER_FORCING, Mask
from . import triton_compat
from .reference import check_jvp_args

LOG2E = tl.constexpr(1.4426950408889634)  # softmax in base 2: exp(x) = exp2(x·log2 e), the fast hardware op
# the mask kinds of masks.py, as compile-time constants inside the kernels
_NO_MASK, _BLOCK_CAUSAL, _TEACHER_FORCING = (tl.constexpr(k) for k in (NO_MASK, BLOCK_CAUSAL, TEACHER_FORCING))


triton_compat.apply()


@triton.jit
def _block_of(f, FIRST: tl.constexpr, CHUNK: tl.constexpr):
    """ChunkPattern.block_of for frame indices >= 0 (scalars or tensors)."""
    return tl.where(f < FIRST, 0, (f - FIRST) // CHUNK + 1)


@triton.jit
def _block_start(b, FIRST: tl.constexpr, CHUNK: tl.constexpr):
    """First frame of block b."""
    return tl.where(b == 0, 0, FIRST + (b - 1) * CHUNK)


@triton.jit
def _key_ranges(r0, r1, LK, N_TOK, T, MASK_KIND: tl.constexpr, FIRST: tl.constexpr,
                CHUNK: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr):
    """Key-token ranges [a_lo, a_hi) and [b_lo, b_hi) that query tokens r0..r1 (inclusive) may see.

    ``a_ev`` / ``b_ev`` end the part of each range that every row of the tile sees, so its full tiles need
    no element mask. Block-causal: the sink plus the window up to the end of the last row's block
    (one range when they touch). Teacher forcing: the clean prefix (clean rows: clean blocks <= theirs;
    noisy rows: clean blocks < theirs) and the noisy rows' own noisy blocks.
    """
    f0 = r0 // N_TOK
    f1 = r1 // N_TOK
    if MASK_KIND == _NO_MASK:
        a_lo, a_ev, a_hi = 0, LK, LK
        b_lo, b_ev, b_hi = 0, 0, 0
    elif MASK_KIND == _BLOCK_CAUSAL:
        b0 = _block_of(f0, FIRST, CHUNK)
        b1 = _block_of(f1, FIRST, CHUNK)
        uniform = b0 == b1
        end = tl.minimum((FIRST + b1 * CHUNK) * N_TOK, LK)
        if WINDOW == 0:
            a_lo, a_ev, a_hi = 0, tl.where(uniform, end, (FIRST + b0 * CHUNK) * N_TOK), end
            b_lo, b_ev, b_hi = 0, 0, 0
        else:
            w_lo = tl.maximum(b0 - WINDOW + 1, 0)
            merged = w_lo <= SINK
            if SINK == 0:
                sink_end = 0 * end
            else:
                sink_end = tl.minimum((FIRST + (SINK - 1) * CHUNK) * N_TOK, LK)
            a_lo = 0
            a_hi = tl.where(merged, end, sink_end)
            a_ev = tl.where(merged, tl.where(uniform, end, 0), sink_end)
            b_lo = tl.where(merged, 0, _block_start(w_lo, FIRST, CHUNK) * N_TOK)
            b_hi = tl.where(merged, 0, end)
            b_ev = tl.where(uniform, b_hi, b_lo)
    else:
        clean0 = f0 < T
        noisy1 = f1 >= T
        n0 = _block_of(tl.maximum(f0 - T, 0), FIRST, CHUNK)
        n1 = _block_of(tl.maximum(f1 - T, 0), FIRST, CHUNK)
        c0 = _block_of(tl.minimum(f0, T - 1), FIRST, CHUNK)
        c1 = _block_of(tl.minimum(f1, T - 1), FIRST, CHUNK)
        uniform = (clean0 != noisy1) & tl.where(clean0, c0 == c1, n0 == n1)
        a_lo = 0
        a_hi = tl.maximum(tl.where(clean0, (FIRST + c1 * CHUNK) * N_TOK, 0),
                          tl.where(noisy1, _block_start(n1, FIRST, CHUNK) * N_TOK, 0))
        first_row_end = tl.where(clean0, (FIRST + c0 * CHUNK) * N_TOK, _block_start(n0, FIRST, CHUNK) * N_TOK)
        a_ev = tl.where(uniform, a_hi, tl.where(clean0 & noisy1, 0, first_row_end))
        b_lo = tl.where(noisy1, (T + _block_start(n0, FIRST, CHUNK)) * N_TOK, 0)
        b_hi = tl.where(noisy1, (T + FIRST + n1 * CHUNK) * N_TOK, 0)
        b_ev = tl.where(uniform, b_hi, b_lo)
    return a_lo, a_ev, a_hi, b_lo, b_ev, b_hi


@triton.jit
def _visible(r_blk, r_noisy, offs_n, N_TOK, T, MASK_KIND: tl.constexpr, FIRST: tl.constexpr,
             CHUNK: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr):
    """Mask.visible element-wise: rows given by their block (and half, for teacher forcing), keys by index."""
    kf = offs_n // N_TOK
    if MASK_KIND == _BLOCK_CAUSAL:
        kb = _block_of(kf, FIRST, CHUNK)[None, :]
        qb = r_blk[:, None]
        vis = kb <= qb
        if WINDOW > 0:
            vis = vis & ((kb > qb - WINDOW) | (kb < SINK))
    else:
        k_noisy = kf >= T
        kb = _block_of(tl.where(k_noisy, kf - T, kf), FIRST, CHUNK)[None, :]
        qb = r_blk[:, None]
        vis = tl.where(r_noisy[:, None], tl.where(k_noisy[None, :], kb == qb, kb < qb),
                       (kf < T)[None, :] & (kb <= qb))
    return vis


@triton.jit
def _dot(a, b, acc, DOT_MODE: tl.constexpr):
    """a·b (+ acc) accumulated in fp32. DOT_MODE: "tf32" for fp16/bf16 operands (tensor cores; the flag only
    matters for fp32), "ieee" for fp32 operands, "upcast" to feed bf16 operands as fp32 (Triton 3.6's
    interpreter multiplies bf16 operands wrongly; the values, and so the result, are the same)."""
    if DOT_MODE == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_MODE)
    return out


@triton.jit
def _load_rows(ptrs, row_ok, offs_d, ROWS_MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile; rows outside ``row_ok`` and padded channels >= HEAD_DIM read 0."""
    if ROWS_MASKED:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return x


@triton.jit
def _attend_tiles(acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV,
                  stride_kn, stride_vn, stride_tkn, stride_tvn,
                  start, stop, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
                  TANGENT: tl.constexpr, KEY_T: tl.constexpr, MASKED: tl.constexpr,
                  BLOCK_N: tl.constexpr, STAGES: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  MASK_KIND: tl.constexpr, FIRST: tl.constexpr, CHUNK: tl.constexpr, WINDOW: tl.constexpr,
                  SINK: tl.constexpr, DOT_MODE: tl.constexpr):
    """Online-softmax update over key tiles starting at start, start + BLOCK_N, … < stop (keys < hi).

    MASKED tiles bound the keys by ``hi`` and apply the frame rule; KEY_T tiles add QK̇ᵀ to Ṡ and PV̇ to
    the tangent accumulator. The tangent accumulators hold tacc / scale and r / scale.
    """
    qk_scale = sm_scale * LOG2E
    for n0 in tl.range(start, stop, BLOCK_N, num_stages=STAGES):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_k = offs_n < hi
        k = _load_rows(K + offs_n[:, None] * stride_kn + offs_d[None, :], in_k, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        s = _dot(q, tl.trans(k), None, DOT_MODE)  # S / scale
        if MASKED:
            vis = in_k[None, :]
            if MASK_KIND != _NO_MASK:
                vis = vis & _visible(r_blk, r_noisy, offs_n, N_TOK, T, MASK_KIND, FIRST, CHUNK, WINDOW, SINK)
            s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        if MASKED:
            # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps exp2 at 0.
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        p = tl.math.exp2(s * qk_scale - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V + offs_n[:, None] * stride_vn + offs_d[None, :], in_k, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        if TANGENT:
            # Ṡ / scale, and below P⊙Ṡ / scale: the scale is applied once, to Ȯ at the end.
            s_dot = _dot(qd, tl.trans(k), None, DOT_MODE)
            if KEY_T:
                kd = _load_rows(TK + (offs_n - TANGENT_KEYS)[:, None] * stride_tkn + offs_d[None, :], in_k,
                                offs_d, MASKED, HEAD_DIM, BLOCK_D)
                s_dot = _dot(q, tl.trans(kd), s_dot, DOT_MODE)
            ps = p * s_dot
            r_i = r_i * alpha + tl.sum(ps, 1)
            tacc = tacc * alpha[:, None]
            tacc = _dot(ps.to(v.dtype), v, tacc, DOT_MODE)
            if KEY_T:
                vd = _load_rows(TV + (offs_n - TANGENT_KEYS)[:, None] * stride_tvn + offs_d[None, :], in_k,
                                offs_d, MASKED, HEAD_DIM, BLOCK_D)
                tacc = _dot((p * (1.0 / sm_scale)).to(vd.dtype), vd, tacc, DOT_MODE)
        acc = acc * alpha[:, None]
        acc = _dot(p.to(v.dtype), v, acc, DOT_MODE)
        m_i = m_new
    return acc, tacc, m_i, l_i, r_i


@triton.jit
def _attend_part(acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
                 lo, ev, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
                 TANGENT: tl.constexpr, KEY_T: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, FIRST: tl.constexpr,
                 CHUNK: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr, DOT_MODE: tl.constexpr):
    """Keys [lo, hi): the full tiles of [lo, ev) without element mask, the remaining tiles masked."""
    mid = lo + ((tl.minimum(tl.maximum(ev, lo), hi) - lo) // BLOCK_N) * BLOCK_N
    acc, tacc, m_i, l_i, r_i = _attend_tiles(
        acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
        lo, mid, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale, TANGENT, KEY_T, False,
        BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
    return _attend_tiles(
        acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
        mid, hi, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale, TANGENT, KEY_T, True,
        BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)


@triton.jit
def _attend_range(acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
                  lo, ev, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
                  TANGENT: tl.constexpr, KEY_T_MODE: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr, FIRST: tl.constexpr,
                  CHUNK: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr, DOT_MODE: tl.constexpr):
    """One key range, split at TANGENT_KEYS into keys with zero tangent and keys with a tangent.

    KEY_T_MODE: 0 no key has a tangent, 2 every key has one, 1 keys >= TANGENT_KEYS have one.
    """
    if TANGENT and KEY_T_MODE == 1:
        split = tl.minimum(tl.maximum(TANGENT_KEYS, lo), hi)
        acc, tacc, m_i, l_i, r_i = _attend_part(
            acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
            lo, tl.minimum(ev, split), split, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
            TANGENT, False, BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
        acc, tacc, m_i, l_i, r_i = _attend_part(
            acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
            split, tl.maximum(ev, split), hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
            TANGENT, True, BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
    else:
        acc, tacc, m_i, l_i, r_i = _attend_part(
            acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
            lo, ev, hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale,
            TANGENT, TANGENT and KEY_T_MODE == 2, BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK,
            WINDOW, SINK, DOT_MODE)
    return acc, tacc, m_i, l_i, r_i


@triton.jit
def _attend_query_tile(Q, K, V, TQ, TK, TV, O, TO, stride_qm, stride_kn, stride_vn, stride_tqm, stride_tkn,
                       stride_tvn, stride_om, stride_tom, row0, LQ, LK, Q_OFFSET, TANGENT_ROWS, TANGENT_KEYS,
                       N_TOK, T, sm_scale, TANGENT: tl.constexpr, KEY_T_MODE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KIND: tl.constexpr,
                       FIRST: tl.constexpr, CHUNK: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr,
                       DOT_MODE: tl.constexpr):
    """Query rows [row0, row0 + BLOCK_M) of one head: O, and Ȯ for rows >= TANGENT_ROWS when TANGENT."""
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < LQ
    q = _load_rows(Q + offs_m[:, None] * stride_qm + offs_d[None, :], row_ok, offs_d, True, HEAD_DIM, BLOCK_D)
    a_lo, a_ev, a_hi, b_lo, b_ev, b_hi = _key_ranges(
        Q_OFFSET + row0, Q_OFFSET + tl.minimum(row0 + BLOCK_M, LQ) - 1, LK, N_TOK, T,
        MASK_KIND, FIRST, CHUNK, WINDOW, SINK)
    # Each row's block (and half) for the element mask; rows past LQ behave as the last real row.
    rf = (Q_OFFSET + tl.minimum(offs_m, LQ - 1)) // N_TOK
    r_noisy = rf >= T
    if MASK_KIND == _TEACHER_FORCING:
        r_blk = _block_of(tl.where(r_noisy, rf - T, rf), FIRST, CHUNK)
    else:
        r_blk = _block_of(rf, FIRST, CHUNK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    has_t = row_ok & (offs_m >= TANGENT_ROWS)
    if TANGENT:
        qd = _load_rows(TQ + (offs_m - TANGENT_ROWS)[:, None] * stride_tqm + offs_d[None, :], has_t, offs_d,
                        True, HEAD_DIM, BLOCK_D)
        tacc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        r_i = tl.zeros([BLOCK_M], tl.float32)
    else:
        qd = q
        tacc = 0.0
        r_i = 0.0
    acc, tacc, m_i, l_i, r_i = _attend_range(
        acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
        a_lo, a_ev, a_hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale, TANGENT, KEY_T_MODE,
        BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
    if MASK_KIND == _TEACHER_FORCING or WINDOW > 0:  # dense and window-less block-causal masks give a single range
        acc, tacc, m_i, l_i, r_i = _attend_range(
            acc, tacc, m_i, l_i, r_i, q, qd, K, V, TK, TV, stride_kn, stride_vn, stride_tkn, stride_tvn,
            b_lo, b_ev, b_hi, TANGENT_KEYS, r_blk, r_noisy, offs_d, N_TOK, T, sm_scale, TANGENT, KEY_T_MODE,
            BLOCK_N, STAGES, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
    inv_l = 1.0 / l_i  # every row sees at least its own block, so l > 0
    o = acc * inv_l[:, None]
    out_mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(O + offs_m[:, None] * stride_om + offs_d[None, :], o.to(O.dtype.element_ty), mask=out_mask)
    if TANGENT:
        to = (tacc - r_i[:, None] * o) * (inv_l * sm_scale)[:, None]
        tl.store(TO + (offs_m - TANGENT_ROWS)[:, None] * stride_tom + offs_d[None, :], to.to(TO.dtype.element_ty),
                 mask=out_mask & has_t[:, None])


@triton.jit
def _attn_fwd_jvp_kernel(
        Q, K, V, TQ, TK, TV, O, TO,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_tqb, stride_tqh, stride_tqm, stride_tkb, stride_tkh, stride_tkn, stride_tvb, stride_tvh, stride_tvn,
        stride_ob, stride_oh, stride_om, stride_tob, stride_toh, stride_tom,
        H, LQ, LK, Q_OFFSET, TANGENT_ROWS, TANGENT_KEYS, N_TOK, T, sm_scale, N_JVP_TILES, JVP_ROW0, N_FWD_TILES,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N_FWD: tl.constexpr, STAGES_FWD: tl.constexpr, BLOCK_N_JVP: tl.constexpr, STAGES_JVP: tl.constexpr,
        HAS_FWD: tl.constexpr, HAS_JVP: tl.constexpr, KEY_T_MODE: tl.constexpr,
        MASK_KIND: tl.constexpr, FIRST: tl.constexpr, CHUNK: tl.constexpr, WINDOW: tl.constexpr,
        SINK: tl.constexpr, DOT_MODE: tl.constexpr):
    """Grid (B·H, N_JVP_TILES + N_FWD_TILES). Axis 1 lists JVP tiles (rows JVP_ROW0…, with tangent) and then
    forward-only tiles (rows 0…), each group last tile first: under causal masks later rows see more keys,
    so the longest programs start first and the short ones fill the tail."""
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    TQ += b * stride_tqb + h * stride_tqh
    TK += b * stride_tkb + h * stride_tkh
    TV += b * stride_tvb + h * stride_tvh
    O += b * stride_ob + h * stride_oh
    TO += b * stride_tob + h * stride_toh
    if HAS_JVP:
        if t < N_JVP_TILES:
            _attend_query_tile(
                Q, K, V, TQ, TK, TV, O, TO, stride_qm, stride_kn, stride_vn, stride_tqm, stride_tkn, stride_tvn,
                stride_om, stride_tom, JVP_ROW0 + (N_JVP_TILES - 1 - t) * BLOCK_M, LQ, LK, Q_OFFSET,
                TANGENT_ROWS, TANGENT_KEYS, N_TOK, T, sm_scale, True, KEY_T_MODE, BLOCK_M, BLOCK_N_JVP,
                STAGES_JVP, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)
    if HAS_FWD:
        if t >= N_JVP_TILES:
            _attend_query_tile(
                Q, K, V, TQ, TK, TV, O, TO, stride_qm, stride_kn, stride_vn, stride_tqm, stride_tkn, stride_tvn,
                stride_om, stride_tom, (N_FWD_TILES - 1 - (t - N_JVP_TILES)) * BLOCK_M, LQ, LK, Q_OFFSET,
                TANGENT_ROWS, TANGENT_KEYS, N_TOK, T, sm_scale, False, KEY_T_MODE, BLOCK_M, BLOCK_N_FWD,
                STAGES_FWD, HEAD_DIM, BLOCK_D, MASK_KIND, FIRST, CHUNK, WINDOW, SINK, DOT_MODE)


@dataclass(frozen=True)
class Tiles:
    """Tile shape and pipelining of one kind of program (forward-only rows or rows with tangent)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class KernelConfig:
    """``fused``: one launch runs both kinds of program (needs equal block_m and num_warps); otherwise the
    forward-only rows and the tangent rows are two launches with their own tiles."""

    fwd: Tiles
    jvp: Tiles
    fused: bool = True


# The interpreter (CPU tests): the smallest tiles tl.dot takes, so tiny shapes still span several tiles.
INTERPRETER_CONFIG = KernelConfig(Tiles(16, 16, 1, 1), Tiles(16, 16, 1, 1))


def default_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> KernelConfig:
    """Fixed tiles per head_dim and dtype. The d = 128 half-precision entry is the fastest of the candidates
    timed on one H100 (benchmarks/attention_jvp.py --sweep; docs/kernels.md); the others were chosen from
    the compiler's register report (no spills in the loops), not timed. Tangent programs keep two
    [BLOCK_M, d] fp32 accumulators and two [BLOCK_M, BLOCK_N] fp32 score tiles in registers, so they take
    narrower key tiles than forward-only ones. Two launches were at least as fast as one fused launch
    (whose register allocation must fit both kinds of program)."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    if dtype == torch.float32 or head_dim > 128:
        return KernelConfig(Tiles(64, 32, 4, 2), Tiles(64, 32, 4, 2))
    if head_dim <= 64:
        return KernelConfig(Tiles(128, 128, 8, 3), Tiles(128, 64, 8, 3), fused=False)
    return KernelConfig(Tiles(128, 128, 8, 3), Tiles(128, 32, 8, 3), fused=False)


def _dot_mode(q: torch.Tensor) -> str:
    if q.dtype == torch.float32:
        return "ieee"
    return "upcast" if q.dtype == torch.bfloat16 and not q.is_cuda else "tf32"


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def flash_attention_jvp(q, k, v, tq, tk, tv, mask: Mask | None = None, frame_tokens: int | None = None,
                        scale: float | None = None, *, q_offset: int = 0, tangent_rows: int = 0,
                        tangent_keys: int = 0, config: KernelConfig | None = None):
    """The Triton kernel behind ``attention_jvp(..., backend="triton")``; ``config`` overrides the tile table."""
    shp = check_jvp_args(q, k, v, tq, tk, tv, mask, frame_tokens, scale, q_offset, tangent_rows, tangent_keys)
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton attention JVP runs on CUDA tensors, or on the CPU only under Triton's "
                           "interpreter (TRITON_INTERPRET=1 set before triton is imported); use backend='ref'")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton attention JVP takes fp16, bf16 or fp32 inputs, got {q.dtype}")
    B, H, Lq, Lk, d = shp.B, shp.H, shp.Lq, shp.Lk, shp.d
    q, k, v, tq, tk, tv = (_rows_contiguous(x) for x in (q, k, v, tq, tk, tv))
    o = torch.empty(B, H, Lq, d, dtype=q.dtype, device=q.device)
    to = torch.empty(B, H, Lq - tangent_rows, d, dtype=q.dtype, device=q.device)
    if Lq == 0 or B * H == 0:
        return o, to
    cfg = config or default_config(d, q.dtype, q.device)
    if cfg.fused and (cfg.fwd.block_m != cfg.jvp.block_m or cfg.fwd.num_warps != cfg.jvp.num_warps):
        raise ValueError(f"a fused launch needs equal block_m and num_warps for both programs: {cfg}")
    # Rows [0, fwd_rows) run forward-only programs; the rest (tangent rows, and the few rows without
    # tangent that share their first tile) run tangent programs.
    has_jvp = tangent_rows < Lq
    fwd_rows = (tangent_rows // cfg.fwd.block_m) * cfg.fwd.block_m if has_jvp else Lq
    n_fwd = triton.cdiv(fwd_rows, cfg.fwd.block_m)
    n_jvp = triton.cdiv(Lq - fwd_rows, cfg.jvp.block_m) if has_jvp else 0
    key_t_mode = 0 if tangent_keys == Lk else (2 if tangent_keys == 0 else 1)
    tq_, to_ = (tq, to) if has_jvp else (q, o)  # never-read stand-ins for zero-size tensors
    tk_, tv_ = (tk, tv) if key_t_mode else (k, v)
    ka = mask.kernel_args(shp.T) if mask is not None else dict(
        MASK_KIND=NO_MASK, FIRST=1, CHUNK=1, NUM_FRAMES=1, WINDOW=0, SINK=0)
    common = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), KEY_T_MODE=key_t_mode,
                  MASK_KIND=ka["MASK_KIND"], FIRST=ka["FIRST"], CHUNK=ka["CHUNK"], WINDOW=ka["WINDOW"],
                  SINK=ka["SINK"], DOT_MODE=_dot_mode(q))
    args = (q, k, v, tq_, tk_, tv_, o, to_, *_strides(q), *_strides(k), *_strides(v), *_strides(tq_),
            *_strides(tk_), *_strides(tv_), *_strides(o), *_strides(to_), H, Lq, Lk, q_offset, tangent_rows,
            tangent_keys, frame_tokens or 1, ka["NUM_FRAMES"], shp.scale)

    def launch(n_j, n_f, tiles: Tiles):
        _attn_fwd_jvp_kernel[(B * H, n_j + n_f)](
            *args, n_j, fwd_rows, n_f, BLOCK_M=tiles.block_m, BLOCK_N_FWD=cfg.fwd.block_n,
            STAGES_FWD=cfg.fwd.num_stages, BLOCK_N_JVP=cfg.jvp.block_n, STAGES_JVP=cfg.jvp.num_stages,
            HAS_FWD=n_f > 0, HAS_JVP=n_j > 0, num_warps=tiles.num_warps, num_stages=tiles.num_stages, **common)

    if cfg.fused:
        launch(n_jvp, n_fwd, cfg.jvp)
    else:
        if n_jvp:
            launch(n_jvp, 0, cfg.jvp)
        if n_fwd:
            launch(0, n_fwd, cfg.fwd)
    return o, to
