"""The Wan2.1 text-to-video DiT, with block-causal masks and KV-cache streaming.

Parameter names equal the official Wan2.1 checkpoint's (``blocks.N.self_attn.q.weight``,
``blocks.N.ffn.0.weight``, ``head.head.weight``, ...), so official weights load without key surgery;
``models/loading.py`` maps the diffusers layout onto these names.

Precision: the time embedding, AdaLN modulation, norms and RoPE run in fp32 (they are cheap and
sensitive); matmuls and attention run in the input / autocast dtype.

Shapes: video [B, C, F, H, W]; tokens [B, L, D] with L = F·N, N = (H/ph)·(W/pw) tokens per frame;
attention [B, heads, L, head_dim]; times t in [0, 1], shape [B] or per frame [B, F].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import WanConfig
from ..kernels.attention import attention
from .kv_cache import KVCache
from .masks import Mask


R_SCALE = 100.0  # MeanFlow's interval t − r is embedded as sinusoids of 100·(t − r) (t itself: 1000·t)


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
    return angles.cos().float().to(device), angles.sin().float().to(device)


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
                and isinstance(self.norm_q, RMSNorm)):
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
        shift1, scale1, g1, shift2, scale2, g2 = (fp32(self.modulation)[:, None] + e0).unbind(2)
        h = modulate(self.norm1(x), shift1, scale1).type_as(x)
        q, k, v = self.self_attn.qkv(h, rope)
        x = gate(x, self.self_attn.out(attend(q, k, v)), g1)
        x = x + self.cross(self.norm3(x).type_as(x), ctx_kv, backend)
        h = modulate(self.norm2(x), shift2, scale2).type_as(x)
        return gate(x, self.ffn(h), g2)

    def cross(self, h, ctx_kv, backend: str = "auto"):
        a = self.cross_attn
        q = a.heads(a.norm_q(a.q(h))).transpose(1, 2)
        k, v = ctx_kv
        return a.out(attention(q, k.to(q.dtype), v.to(q.dtype), backend=backend))


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
        nn.init.zeros_(self.head.head.weight)

    @classmethod
    def from_state_dict(cls, state_dict, num_heads: int | None = None, **overrides) -> "WanDiT":
        """Build from an official Wan2.1 or a diffusers state dict (or a file / diffusers model), with the
        config inferred from tensor shapes. See ``models/loading.py``."""
        from .loading import load_wan

        return load_wan(cls, state_dict, num_heads=num_heads, **overrides)

    # ----- embeddings ---------------------------------------------------------------------------
    def time_embed(self, t: torch.Tensor, r: torch.Tensor | None = None):
        """t [B] or [B, F] in [0, 1] -> e [B, Ft, D] and e0 [B, Ft, 6, D], fp32 (×1000 here only)."""
        t2 = t[:, None] if t.ndim == 1 else t
        B, Ft = t2.shape
        wdtype = self.time_embedding[0].weight.dtype
        with torch.autocast(t.device.type, enabled=False):
            e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, 1000.0 * t2.reshape(-1)).to(wdtype))
            if self.cfg.dual_time:
                if r is None:
                    raise ValueError("this model takes a second time input r (dual_time=True)")
                r2 = (r[:, None] if r.ndim == 1 else r).expand(B, Ft)
                # (t − r) enters at a tenth of the timestep scale: with ×1000 the frequencies make ∂u/∂t of
                # the fresh embedding so steep that MeanFlow's target (which contains it) runs away
                s = sinusoidal_embedding(self.cfg.freq_dim, R_SCALE * (t2 - r2).reshape(-1))
                e = e + self.r_embedding(s.to(wdtype))
            e = fp32(e).view(B, Ft, -1)
            e0 = fp32(self.time_projection(e.to(wdtype))).unflatten(-1, (6, -1))
        return e, e0

    def context_kv(self, context: torch.Tensor):
        """The prompt's cross-attention K/V for every layer (computed once per prompt when streaming)."""
        ctx = self.text_embedding(context)
        return [blk.cross_attn.context_kv(ctx) for blk in self.blocks]

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

    # ----- forward --------------------------------------------------------------------------------
    def forward(self, x, t, context, mask: Mask | None = None, cache: KVCache | None = None,
                update_cache: bool = False, r: torch.Tensor | None = None, attn_backend: str = "auto"):
        """v = v_θ(x, t, context).

        - ``mask=None, cache=None``: bidirectional.
        - ``mask``: a frame mask (block-causal, teacher-forcing). For teacher forcing x holds
          [clean T | noisy T] along the frame axis and t is [B, 2T].
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
        e, e0 = self.time_embed(t, r)

        if cache is not None:
            frame_pos = cache.begin(nf, write=update_cache)
            ctx_kv = cache.cross if cache.cross[0] is not None else None
            if ctx_kv is None:
                ctx_kv = cache.cross = self.context_kv(context)
        else:
            frame_pos = mask.frame_positions(mask.video_frames(nf)) if mask is not None else torch.arange(nf)
            ctx_kv = self.context_kv(context)
        rope = self.rope(frame_pos, hp, wp, x.device)

        for i, blk in enumerate(self.blocks):
            if cache is not None:
                def attend(q, k, v, i=i):
                    return attention(q, *cache.keys_values(i, k, v), backend=attn_backend)
            else:
                def attend(q, k, v):
                    return attention(q, k, v, mask, N, backend=attn_backend)
            tokens = blk(tokens, e0, ctx_kv[i], rope, attend, attn_backend)
        if cache is not None:
            cache.end()
        return self.unpatchify(self.head(tokens, e), grid)

    def use_fused_norm_rope(self, enabled: bool = True) -> "WanDiT":
        """Route q/k RMSNorm + RoPE through the fused Triton kernel when running on CUDA without gradients
        (fp32/bf16/fp16): the default, 7% faster 1.3B forwards on an H100 (docs/benchmarks.md). Sampling and
        frozen teachers take it; a forward with gradients and the forward-mode pass use the PyTorch
        composition. ``False`` keeps the composition everywhere."""
        for blk in self.blocks:
            blk.self_attn.fused_norm_rope = enabled
        return self

    def rope(self, frame_pos: torch.Tensor, hp: int, wp: int, device):
        """RoPE cos/sin tables, memoised per (positions, grid, device): built in fp64 on the CPU once."""
        key = (tuple(frame_pos.tolist()), hp, wp, str(device))
        if key not in self._rope_memo:
            if len(self._rope_memo) >= 64:
                self._rope_memo.clear()
            self._rope_memo[key] = rope_tables(self._freqs, frame_pos, hp, wp, device)
        return self._rope_memo[key]

    def forward_jvp(self, x, t, context, x_dot, t_dot, mask: Mask | None = None, tangent_from: int = 0,
                    r=None, r_dot=None):
        """(v, dv) along (x_dot, t_dot): the forward-mode pass (models/jvp.py), under no_grad."""
        from .jvp import forward_jvp

        return forward_jvp(self, x, t, context, x_dot, t_dot, mask, tangent_from, r, r_dot)

    def new_cache(self, max_frames: int, frame_tokens: int, pattern=None, window=None, sink=0) -> KVCache:
        return KVCache(self.cfg.num_layers, frame_tokens, max_frames, pattern, window, sink)

    def frame_tokens(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)
