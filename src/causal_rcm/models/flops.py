"""Model FLOPs of the DiT, counted analytically from its config and the token counts of each call: what model
FLOP utilisation divides by the time (no recomputation, no kernel internals; a multiply-add is 2 FLOPs).

Per block, for B samples of L query tokens, Lc context tokens and P attended (query, key) pairs per sample:

    self-attention projections q, k, v, o   2·B·L·4D²         attention QKᵀ and PV   4·B·P·D
    cross-attention q, o                    2·B·L·2D²         cross k, v (prompt)    2·B·Lc·2D²
    cross-attention QKᵀ and PV              4·B·L·Lc·D        feed-forward           2·B·L·2DF

plus the patch embedding, the text / time / action embeddings and the head. A backward costs 2× the
forward, less the input layers' gradient with respect to their inputs (the video, the prompt, the times). The forward-mode pass (``forward_jvp``) adds, for the Lt tokens that
carry a tangent, every matmul applied once more to the tangent, and in attention Ṡ = q̇Kᵀ + Qk̇ᵀ, (P⊙Ṡ)V
and PV̇ over the pairs with a tangent query (and key).

``FlopCounter`` hooks the networks of a step and adds up every call: the benchmarks count one iteration.
The forward and backward counts equal ``torch.utils.flop_counter`` on the math attention (tests/test_flops.py).
"""
from __future__ import annotations

import math

import torch

from ..config import WanConfig


def attention_pairs(mask, seq_frames: int, frame_tokens: int, tangent_from: int | None = None) -> tuple[int, ...]:
    """Attended (query, key) pairs of one sample: all; with ``tangent_from`` = f0 also those whose query frame
    is ≥ f0 and those whose query and key frames both are."""
    if mask is None:
        fm = torch.ones(seq_frames, seq_frames, dtype=torch.bool)
    else:
        fm = mask.frame_mask(mask.video_frames(seq_frames))
    n2 = frame_tokens * frame_tokens
    if tangent_from is None:
        return (int(fm.sum()) * n2,)
    f0 = tangent_from
    return int(fm.sum()) * n2, int(fm[f0:].sum()) * n2, int(fm[f0:, f0:].sum()) * n2


def _linear_per_token(cfg: WanConfig) -> int:
    """Matmul FLOPs of one token through all blocks (projections and FFN) plus the patch embedding and head."""
    d, f, patch = cfg.dim, cfg.ffn_dim, math.prod(cfg.patch_size)
    block = 2 * (4 * d * d + 2 * d * d + 2 * d * f)
    return cfg.num_layers * block + _patch(cfg) + 2 * d * cfg.out_dim * patch


def _patch(cfg: WanConfig) -> int:
    return 2 * cfg.in_dim * math.prod(cfg.patch_size) * cfg.dim


def _time_first(cfg: WanConfig) -> int:
    """Per time row: the first layers of the time (r, action) embeddings, whose inputs need no gradient."""
    return 2 * cfg.dim * (cfg.freq_dim * (2 if cfg.dual_time else 1) + cfg.action_dim)


def time_flops(cfg: WanConfig, rows: int) -> int:
    """Time (and r, action) embeddings and the 6-way AdaLN projection for ``rows`` (sample, frame) times."""
    d = cfg.dim
    per = _time_first(cfg) + 2 * d * d + 2 * d * 6 * d
    if cfg.dual_time:
        per += 2 * d * d
    if cfg.action_dim:
        per += 2 * d * d
    return rows * per


def context_flops(cfg: WanConfig, batch: int, context: int, grad: bool = False) -> int:
    """The text embedding and every block's cross-attention k, v of the prompt (``context_kv``); ``grad``:
    with its backward (the prompt itself takes no gradient)."""
    d = cfg.dim
    first = batch * context * 2 * cfg.text_dim * d
    fwd = first + batch * context * (2 * d * d + cfg.num_layers * 2 * 2 * d * d)
    return 3 * fwd - first if grad else fwd


def forward_flops(cfg: WanConfig, batch: int, tokens: int, context: int, pairs: int, time_rows: int,
                  with_context: bool = True, grad: bool = False) -> int:
    """One forward over ``tokens`` query tokens per sample attending ``pairs`` (query, key) pairs;
    ``with_context``: the prompt's k, v computed in this call (not taken from a KV cache); ``grad``: with
    its backward, 2× the forward but for the input layers (patch, text and time embeddings), whose inputs
    take no gradient."""
    d = cfg.dim
    attn = cfg.num_layers * (4 * pairs * d + 4 * tokens * context * d)
    fwd = batch * (tokens * _linear_per_token(cfg) + attn) + time_flops(cfg, time_rows)
    first = batch * tokens * _patch(cfg) + time_rows * _time_first(cfg)
    total = 3 * fwd - first if grad else fwd
    return total + (context_flops(cfg, batch, context, grad) if with_context else 0)


def tangent_flops(cfg: WanConfig, batch: int, tangent_tokens: int, context: int, pairs_t: int, pairs_tt: int,
                  time_rows: int) -> int:
    """What ``forward_jvp`` adds to its primal forward: the tangent through every matmul and attention."""
    d = cfg.dim
    attn = cfg.num_layers * (4 * (pairs_t + pairs_tt) * d + 4 * tangent_tokens * context * d)
    return batch * (tangent_tokens * _linear_per_token(cfg) + attn) + time_flops(cfg, time_rows)


class FlopCounter:
    """Adds up the model FLOPs of every call of the given DiTs while active (``with FlopCounter(a, b) as c``;
    ``c.total``). A forward made with gradients enabled on a network with trainable weights counts its
    backward too (it will be backpropagated); ``forward_jvp`` counts its primal and its tangent."""

    def __init__(self, *nets):
        self.nets, self.total, self._undo = nets, 0, []

    def __enter__(self) -> "FlopCounter":
        for net in self.nets:
            trainable = any(p.requires_grad for p in net.parameters())
            self._undo.append(net.register_forward_pre_hook(self._forward(trainable), with_kwargs=True))
            self._wrap(net, "forward_jvp", self._jvp)
            self._wrap(net, "context_kv", self._context(trainable))
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo() if callable(undo) else undo.remove()
        self._undo = []

    def _wrap(self, net, name: str, count) -> None:
        inner = getattr(net, name)
        had = name in net.__dict__

        def counted(*args, **kwargs):
            count(net, args, kwargs)
            return inner(*args, **kwargs)

        setattr(net, name, counted)
        self._undo.append(lambda: setattr(net, name, inner) if had else delattr(net, name))

    @staticmethod
    def _grad(trainable: bool) -> bool:
        return trainable and torch.is_grad_enabled()

    def _context(self, trainable: bool):
        def count(net, args, kwargs):
            ctx = args[0]
            self.total += context_flops(net.cfg, ctx.shape[0], ctx.shape[1], self._grad(trainable))
        return count

    def _forward(self, trainable: bool):
        def hook(net, args, kwargs):
            x, t = args[0], args[1]
            mask = kwargs.get("mask", args[3] if len(args) > 3 else None)
            cache = kwargs.get("cache")
            B, _, F, H, W = x.shape
            cfg = net.cfg
            N = (H // cfg.patch_size[1]) * (W // cfg.patch_size[2])
            nf = F // cfg.patch_size[0]
            L = nf * N
            if cache is not None:
                pairs = L * (cache.length + L)  # the cache holds exactly the keys the block may see
            else:
                pairs = attention_pairs(mask, nf, N)[0]
            rows = B * (t.shape[1] if t.ndim == 2 else 1)
            # the prompt's k, v: counted by context_kv's wrapper (called inside forward unless cached)
            self.total += forward_flops(cfg, B, L, args[2].shape[1], pairs, rows, with_context=False,
                                        grad=self._grad(trainable))
        return hook

    def _jvp(self, net, args, kwargs) -> None:
        x, t, context, x_dot = args[:4]
        mask, f0 = kwargs.get("mask"), kwargs.get("tangent_from", 0)
        cfg = net.cfg
        B, _, F, H, W = x.shape
        N = (H // cfg.patch_size[1]) * (W // cfg.patch_size[2])
        nf = F // cfg.patch_size[0]
        pairs, pairs_t, pairs_tt = attention_pairs(mask, nf, N, f0)
        rows = B * (t.shape[1] if t.ndim == 2 else 1)
        Lc = context.shape[1]
        self.total += forward_flops(cfg, B, nf * N, Lc, pairs, rows, with_context=False)
        self.total += tangent_flops(cfg, B, (nf - f0) * N, Lc, pairs_t, pairs_tt, rows)
        # forward_jvp calls context_kv itself: that call is counted by its wrapper


__all__ = ["attention_pairs", "forward_flops", "tangent_flops", "context_flops", "time_flops", "FlopCounter"]
