"""The Wan2.1 text-to-video DiT, with block-causal masks, KV-cache streaming, actions and a forward-mode pass.

Parameter names equal the official Wan2.1 checkpoint's (``blocks.N.self_attn.q.weight``,
``blocks.N.ffn.0.weight``, ``head.head.weight``, ...), so official weights load without key surgery;
``models/loading.py`` maps the diffusers layout onto these names.

Two passes, each a method of the module that owns the weights (so FSDP2 can shard per block and register
``forward_jvp`` beside ``forward``):

- ``forward``: v = v_θ(x, t, c[, a]), bidirectional, masked (block-causal, teacher forcing) or streaming.
- ``forward_jvp``: (v, v̇) = (v_θ, ∂v/∂x·ẋ + ∂v/∂t·ṫ [+ ∂v/∂r·ṙ]), the dv/dt continuous-time consistency
  distillation needs (METHOD.md §4), under no_grad. ``tangent_from`` = f0 says frames < f0 have ẋ = 0, ṫ = 0
  *and* attend to no frame ≥ f0 (the clean context of the teacher-forcing layout, f0 = T), so their
  tangents are exactly zero in every layer: they cost a primal forward only (``layers.split_jvp``) and
  attention runs the masked JVP kernel with ``tangent_rows = tangent_keys = f0·N``.

Shapes: video [B, C, F, H, W]; tokens [B, L, D] with L = F·N, N = (H/ph)·(W/pw) tokens per frame;
attention [B, heads, L, head_dim]; times t in [0, 1], shape [B] or per frame [B, F].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.func import jvp

from ..config import WanConfig
from ..kernels.attention import attention, attention_jvp
from ..kv_policy import FULL, KVPolicy
from ..masks import Mask
from .conditioning import ActionEmbedding, Actions
from .kv_cache import KVCache
from .layers import (Attention, LayerNorm, apply_rope, fp32, gate, layer_norm, modulate, rope_freqs, rope_tables,
                     sinusoidal_embedding, split_jvp)

R_SCALE = 100.0  # MeanFlow's interval t − r is embedded as sinusoids of 100·(t − r) (t itself: time_scale·t)


def _frames(m: torch.Tensor, f0: int) -> torch.Tensor:
    """Per-frame modulation [B, Ft, ...] from frame f0 on (a per-sample one, Ft = 1, stays)."""
    return m if m.shape[1] == 1 else m[:, f0:]


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.norm1 = LayerNorm(d, cfg.eps)
        self.self_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm(d, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm(d, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e0, ctx_kv, rope, attend, backend: str = "auto"):
        """x [B, L, D]; e0 [B, Ft, 6, D] fp32; ctx_kv the prompt's cross-attention (k, v);
        ``attend(q, k, v) -> o`` is the self-attention with its mask or cache bound."""
        q, k, v = self.pre_attention(x, e0, rope)
        return self.post_attention(x, attend(q, k, v), e0, ctx_kv, backend)

    def pre_attention(self, x, e0, rope):
        """Everything before the self-attention: q, k, v [B, H, L, d] (the two halves of ``forward`` are
        what a stream compiles, its cache-bound attention between them: ``compile_for_streaming``)."""
        shift1, scale1 = (fp32(self.modulation)[:, None, :2] + e0[:, :, :2]).unbind(2)
        h = modulate(self.norm1(x), shift1, scale1).type_as(x)
        return self.self_attn.qkv(h, rope)

    def post_attention(self, x, o, e0, ctx_kv, backend: str = "auto"):
        """Everything after the self-attention's output o [B, H, L, d]: the block's output [B, L, D]."""
        g1, shift2, scale2, g2 = (fp32(self.modulation)[:, None, 2:] + e0[:, :, 2:]).unbind(2)
        x = gate(x, self.self_attn.out(o), g1)
        x = x + self.cross(self.norm3(x).type_as(x), ctx_kv, backend)
        h = modulate(self.norm2(x), shift2, scale2).type_as(x)
        return gate(x, self.ffn(h), g2)

    def context_kv(self, ctx):
        """The prompt's cross-attention (k, v) of this block: a method of the block that owns the weights,
        so that a per-block FSDP2 unit gathers them for this call too (``train/parallelize.py``)."""
        return self.cross_attn.context_kv(ctx)

    def cross(self, h, ctx_kv, backend: str = "auto"):
        a = self.cross_attn
        q = a.heads(a.norm_q(a.q(h))).transpose(1, 2)
        k, v = ctx_kv
        return a.out(attention(q, k.to(q.dtype), v.to(q.dtype), backend=backend))

    def forward_jvp(self, x, x_dot, e0, e0_dot, ctx_kv, rope, mask: Mask | None, N: int, f0: int):
        """(x', ẋ') of ``forward``: primal on all tokens, tangent on the tokens of frames ≥ f0.
        x_dot [B, L − f0·N, D]; e0_dot the modulation's tangent on those frames."""
        Lp = f0 * N
        mods = (fp32(self.modulation)[:, None] + e0).unbind(2)       # 6 × [B, Ft, D]
        dmods = e0_dot.unbind(2)
        shift1, scale1, g1, shift2, scale2, g2 = mods

        def norm_mod(norm):
            return lambda xs, sh, sc: modulate(norm(xs), sh, sc).type_as(xs)

        def gate_jvp(x, x_dot, y, y_dot, g, g_dot):
            return split_jvp(gate, (x, y), (x_dot, y_dot.type_as(y)), Lp, f0, (g,), (g_dot,))

        # self-attention: q, k through their RMSNorm, then RoPE (linear: the tangent rotates alike)
        a = self.self_attn
        h, h_dot = split_jvp(norm_mod(self.norm1), (x,), (x_dot,), Lp, f0, (shift1, scale1), dmods[0:2])
        q, q_dot = split_jvp(lambda u: a.norm_q(a.q(u)), (h,), (h_dot,), Lp)
        k, k_dot = split_jvp(lambda u: a.norm_k(a.k(u)), (h,), (h_dot,), Lp)
        v, v_dot = split_jvp(a.v, (h,), (h_dot,), Lp)
        cos, sin = rope
        rot = lambda u, c, s: apply_rope(a.heads(u), c, s).transpose(1, 2)  # noqa: E731
        q, k, v = rot(q, cos, sin), rot(k, cos, sin), a.heads(v).transpose(1, 2)
        # tangents in the primal's dtype (the kernel takes one dtype for all six operands)
        q_dot = rot(q_dot, cos[Lp:], sin[Lp:]).to(q.dtype)
        k_dot = rot(k_dot, cos[Lp:], sin[Lp:]).to(k.dtype)
        v_dot = a.heads(v_dot).transpose(1, 2).to(v.dtype)
        o, o_dot = attention_jvp(q, k, v, q_dot, k_dot, v_dot, mask, N, tangent_rows=Lp, tangent_keys=Lp)
        y, y_dot = split_jvp(a.o, (o.transpose(1, 2).flatten(2),), (o_dot.transpose(1, 2).flatten(2),), Lp)
        x, x_dot = gate_jvp(x, x_dot, y, y_dot, g1, dmods[2])

        # cross-attention: the prompt's keys carry no tangent
        c = self.cross_attn
        h3, h3_dot = split_jvp(lambda xs: self.norm3(xs).type_as(xs), (x,), (x_dot,), Lp)
        cq, cq_dot = split_jvp(lambda u: c.norm_q(c.q(u)), (h3,), (h3_dot,), Lp)
        cq, cq_dot = c.heads(cq).transpose(1, 2), c.heads(cq_dot).transpose(1, 2).to(cq.dtype)
        ck, cv = (z.to(cq.dtype) for z in ctx_kv)
        empty = ck[:, :, :0]
        co, co_dot = attention_jvp(cq, ck, cv, cq_dot, empty, empty, None, None, tangent_rows=Lp,
                                   tangent_keys=ck.shape[2])
        y, y_dot = split_jvp(c.o, (co.transpose(1, 2).flatten(2),), (co_dot.transpose(1, 2).flatten(2),), Lp)
        x, x_dot = x + y, x_dot + y_dot.type_as(x_dot)

        # feed-forward
        h, h_dot = split_jvp(norm_mod(self.norm2), (x,), (x_dot,), Lp, f0, (shift2, scale2), dmods[3:5])
        y, y_dot = split_jvp(self.ffn, (h,), (h_dot.type_as(h),), Lp)
        return gate_jvp(x, x_dot, y, y_dot, g2, dmods[5])


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        """x [B, L, D]; e [B, Ft, D] fp32 (the time embedding before the 6-way projection)."""
        shift, scale = (fp32(self.modulation)[:, None] + e[:, :, None]).unbind(2)
        return self.head(modulate(layer_norm(x, self.eps), shift, scale).type_as(x))

    def forward_jvp(self, x, x_dot, e, e_dot, Lp: int, f0: int):
        shift, scale = (fp32(self.modulation)[:, None] + e[:, :, None]).unbind(2)
        dshift, dscale = e_dot[:, :, None].expand(-1, -1, 2, -1).unbind(2)
        return split_jvp(lambda xs, sh, sc: self.head(modulate(layer_norm(xs, self.eps), sh, sc).type_as(xs)),
                         (x,), (x_dot,), Lp, f0, (shift, scale), (dshift, dscale))


class WanDiT(nn.Module):
    """v_θ(x_t, t, c): the Wan2.1 T2V transformer predicting the RF velocity ε − x0."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.dual_time:
            # MeanFlow's second time r enters through its own embedding, added to t's; zero-initialised
            # last layer so that the initial student equals the teacher (METHOD.md §4).
            self.r_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.action_dim:
            self.action_embedding = ActionEmbedding(cfg.action_dim, d)  # METHOD.md §7, zero-initialised
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._freqs = rope_freqs(cfg.head_dim)
        self._rope_memo: dict = {}
        self.init_weights()

    # ----- construction -------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Wan's initialisation: Xavier linears, zero biases, N(0, 0.02) embeddings, zero output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        if self.cfg.dual_time:
            nn.init.zeros_(self.r_embedding[2].weight)
        if self.cfg.action_dim:
            self.action_embedding.reset_parameters()
        nn.init.zeros_(self.head.head.weight)

    @classmethod
    def from_state_dict(cls, state_dict, num_heads: int | None = None, **overrides) -> "WanDiT":
        """Build from an official Wan2.1 or a diffusers state dict (or a file / diffusers model), with the
        config inferred from tensor shapes. See ``models/loading.py``."""
        from .loading import load_wan

        return load_wan(cls, state_dict, num_heads=num_heads, **overrides)

    # ----- embeddings ---------------------------------------------------------------------------
    def time_embed(self, t: torch.Tensor, r: torch.Tensor | None = None, actions: Actions | None = None):
        """t [B] or [B, F] in [0, 1] -> e [B, Ft, D] and e0 [B, Ft, 6, D], fp32 (×time_scale here only); the
        action embedding of each frame joins its time embedding before the AdaLN projection (§7)."""
        if actions is not None and not self.cfg.action_dim:
            raise ValueError("this model takes no actions (action_dim=0)")
        t2 = t[:, None] if t.ndim == 1 else t
        if self.cfg.action_dim:
            if actions is not None and actions.frames != t2.shape[1]:
                t2 = t2.expand(-1, actions.frames)
        B, Ft = t2.shape
        wdtype = self.time_embedding[0].weight.dtype
        with torch.autocast(t.device.type, enabled=False):
            e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, self.cfg.time_scale * t2.reshape(-1)).to(wdtype))
            if self.cfg.dual_time:
                if r is None:
                    raise ValueError("this model takes a second time input r (dual_time=True)")
                r2 = (r[:, None] if r.ndim == 1 else r).expand(B, Ft)
                # (t − r) enters at a tenth of the timestep scale: with ×1000 the frequencies make ∂u/∂t of
                # the fresh embedding so steep that MeanFlow's target (which contains it) runs away
                s = sinusoidal_embedding(self.cfg.freq_dim, R_SCALE * (t2 - r2).reshape(-1))
                e = e + self.r_embedding(s.to(wdtype))
            e = fp32(e).view(B, Ft, -1)
            if self.cfg.action_dim:
                if actions is None:  # no actions given: every frame "no action" (the unconditional input)
                    actions = Actions(torch.zeros(B, Ft, self.cfg.action_dim, device=t.device),
                                      torch.zeros(B, Ft, dtype=torch.bool, device=t.device))
                if actions.frames != Ft:
                    raise ValueError(f"actions cover {actions.frames} frames, the times {Ft}")
                e = e + fp32(self.action_embedding(actions))
            e0 = fp32(self.time_projection(e.to(wdtype))).unflatten(-1, (6, -1))
        return e, e0

    def context_kv(self, context: torch.Tensor):
        """The prompt's cross-attention K/V for every layer (computed once per prompt when streaming)."""
        ctx = self.text_embedding(context)
        return [blk.context_kv(ctx) for blk in self.blocks]

    def patchify(self, x):
        """[B, C, F, H, W] -> tokens [B, F·N, D] and the token grid (F, Hp, Wp)."""
        B, C, Fr, H, W = x.shape
        pt, ph, pw = self.cfg.patch_size
        if C != self.cfg.in_dim or Fr % pt or H % ph or W % pw:
            raise ValueError(f"input {tuple(x.shape)} does not fit in_dim={self.cfg.in_dim} and patch "
                             f"{self.cfg.patch_size}")
        h = self.patch_embedding(x)
        # contiguous: a transposed view would make every later elementwise op and norm stride badly
        return h.flatten(2).transpose(1, 2).contiguous(), h.shape[2:]

    def unpatchify(self, h, grid):
        """[B, L, pt·ph·pw·C] -> [B, C, F, H, W] (patch vector ordered (pt, ph, pw, c) as in Wan)."""
        B = h.shape[0]
        f, hp, wp = grid
        pt, ph, pw = self.cfg.patch_size
        h = h.view(B, f, hp, wp, pt, ph, pw, -1)
        return h.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, -1, f * pt, hp * ph, wp * pw)

    def rope(self, frame_pos: torch.Tensor, hp: int, wp: int, device):
        """RoPE cos/sin tables, memoised per (positions, grid, device): built in fp64 on the CPU once."""
        key = (tuple(frame_pos.tolist()), hp, wp, str(device))
        if key not in self._rope_memo:
            if len(self._rope_memo) >= 64:
                self._rope_memo.clear()
            self._rope_memo[key] = rope_tables(self._freqs, frame_pos, hp, wp, device)
        return self._rope_memo[key]

    # ----- forward --------------------------------------------------------------------------------
    def forward(self, x, t, context, mask: Mask | None = None, cache: KVCache | None = None,
                update_cache: bool = False, r: torch.Tensor | None = None, actions: Actions | None = None,
                attn_backend: str = "auto"):
        """v = v_θ(x, t, context[, actions]).

        - ``mask=None, cache=None``: bidirectional.
        - ``mask``: a frame mask (block-causal, teacher forcing). For teacher forcing x holds
          [clean T | noisy T] along the frame axis and t is [B, 2T] (actions cover the 2T frames too).
        - ``cache``: streaming; x is the next block of frames, attending to the cached blocks and itself.
          ``update_cache=True`` appends this block's K/V (the context write), otherwise the cache is only read.
        """
        if mask is not None and cache is not None:
            raise ValueError("give either a mask (full sequence) or a KV cache (streaming), not both")
        if t.ndim == 2 and t.shape[1] != x.shape[2] // self.cfg.patch_size[0]:
            raise ValueError(f"per-frame t has {t.shape[1]} frames, x has {x.shape[2]}")
        tokens, grid = self.patchify(x)
        nf, hp, wp = grid
        N = hp * wp
        e, e0 = self.time_embed(t, r, actions)

        view = None
        if cache is not None:
            view = cache.view(nf, write=update_cache)
            if cache.cross is None:
                cache.cross = self.context_kv(context)
            ctx_kv = cache.cross
            rope = view.rope(self, hp, wp, x.device)
        else:
            frame_pos = mask.frame_positions(mask.video_frames(nf)) if mask is not None else torch.arange(nf)
            ctx_kv = self.context_kv(context)
            rope = self.rope(frame_pos, hp, wp, x.device)

        for i, blk in enumerate(self.blocks):
            if view is not None:
                def attend(q, k, v, i=i):
                    return view.attend(i, q, k, v, attn_backend)
            else:
                def attend(q, k, v):
                    return attention(q, k, v, mask, N, backend=attn_backend)
            tokens = blk(tokens, e0, ctx_kv[i], rope, attend, attn_backend)
        if view is not None:
            view.commit()
        return self.unpatchify(self.head(tokens, e), grid)

    def velocity(self, x, t, context, **kw):
        """``forward`` with MeanFlow's r = 0 where the model takes r (dual_time): u(x, r = 0, t) is the average
        velocity over [0, t], so x̂0 = x − t·u is the one-jump prediction every sampler and rollout uses."""
        if self.cfg.dual_time and kw.get("r") is None:
            kw["r"] = torch.zeros_like(t)
        return self(x, t, context, **kw)

    @torch.no_grad()
    def forward_jvp(self, x, t, context, x_dot, t_dot, mask: Mask | None = None, tangent_from: int = 0,
                    r=None, r_dot=None, actions: Actions | None = None):
        """(v, v̇) along (x_dot, t_dot [, r_dot]); see the module docstring.

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
            (e, e0), (de, de0) = jvp(lambda tt, rr: self.time_embed(tt, rr, actions), (t, r),
                                     (t_dot.to(t.dtype), r_dot))
        else:
            (e, e0), (de, de0) = jvp(lambda tt: self.time_embed(tt, None, actions), (t,), (t_dot.to(t.dtype),))
        de, de0 = _frames(de, f0), _frames(de0, f0)

        # patch embedding: frames < f0 primal only, the rest with their tangent (a linear map: W·ẋ)
        pe = self.patch_embedding
        if f0 > 0:
            y_p = pe(x[:, :, :f0])
        y_s, y_dot = jvp(pe, (x[:, :, f0:],), (x_dot.to(x.dtype),))
        grid = (Fr // self.cfg.patch_size[0], *y_s.shape[3:])
        nf, hp, wp = grid
        N = hp * wp
        tokens = (torch.cat([y_p, y_s], dim=2) if f0 > 0 else y_s).flatten(2).transpose(1, 2).contiguous()
        td = y_dot.flatten(2).transpose(1, 2)

        frame_pos = mask.frame_positions(mask.video_frames(nf)) if mask is not None else torch.arange(nf)
        rope = self.rope(frame_pos, hp, wp, x.device)
        ctx_kv = self.context_kv(context)
        for blk, kv in zip(self.blocks, ctx_kv):
            tokens, td = blk.forward_jvp(tokens, td, e0, de0, kv, rope, mask, N, f0)
        out, dout = self.head.forward_jvp(tokens, td, e, de, f0 * N, f0)

        v = self.unpatchify(out, grid)
        v_dot = self.unpatchify(dout, (nf - f0, hp, wp))
        if full_tangent and f0 > 0:
            v_dot = torch.cat([torch.zeros_like(v[:, :, :f0]), v_dot], dim=2)
        return v, v_dot

    # ----- streaming --------------------------------------------------------------------------------
    def compile_for_streaming(self) -> "WanDiT":
        """``torch.compile`` each block's two halves around its self-attention (``pre_attention``,
        ``post_attention``: norms, modulation, RoPE, projections, cross-attention and FFN fused by Inductor;
        the cache-bound attention between them stays as it is). The blocks are identical, so one graph per
        block shape serves them all; a stream's chunks have one or two shapes. Idempotent; in place."""
        if not getattr(self, "_compiled_for_streaming", False):
            for blk in self.blocks:
                blk.pre_attention = torch.compile(blk.pre_attention, dynamic=False)
                blk.post_attention = torch.compile(blk.post_attention, dynamic=False)
            self._compiled_for_streaming = True
        return self

    def new_cache(self, frame_tokens: int, pattern, policy: KVPolicy = FULL, max_frames: int | None = None,
                  static: bool = False):
        """The streaming state's KV cache: ``KVCache``, or with ``static`` the fixed-shape ``StaticKVCache``
        a captured per-chunk forward needs."""
        from .static_cache import StaticKVCache

        cls = StaticKVCache if static else KVCache
        return cls(self.cfg.num_layers, frame_tokens, pattern, policy, max_frames)

    def frame_tokens(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)

    def use_fused_norm_rope(self, enabled: bool = True) -> "WanDiT":
        """Route q/k RMSNorm + RoPE through the fused Triton kernel when running on CUDA without gradients
        (fp32/bf16/fp16): the default, 7% faster 1.3B forwards on an H100 (docs/benchmarks.md). Sampling and
        frozen teachers take it; a forward with gradients and the forward-mode pass use the PyTorch
        composition. ``False`` keeps the composition everywhere."""
        for blk in self.blocks:
            blk.self_attn.fused_norm_rope = enabled
        return self
