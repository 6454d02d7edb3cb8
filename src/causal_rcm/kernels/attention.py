"""Attention dispatch: one entry point, several backends that agree up to rounding.

- ``mask is None``: plain SDPA (flash / memory-efficient kernels on GPU). Streaming with a KV cache is
  always this case: the cache holds exactly the keys the current block may see.
- a mask on CUDA: FlexAttention with a block mask built from the mask's frame rule, compiled once and
  cached per (mask, shape) (head sizes it cannot take fall back to the dense path); or the split backend
  below, where ``use_masked_backend("split")`` chose it (``parallel.attention``).
- a mask elsewhere (CPU, tests): SDPA with the dense boolean mask, cached per (mask, shape).
- ``backend="split"``: the mask cut into dense pieces, one unmasked SDPA call per run of query frames that
  see the same key frames (keys gathered with one ``cat`` of whole-frame runs), so the GPU's dense kernels
  (cuDNN, flash) do exactly the unmasked work, forward and backward, with no mask materialised.
- ``backend="math"``: the plain-PyTorch reference (softmax of QKᵀ), which ``torch.func.jvp`` and double
  backward can differentiate; tests use it as the independent path.

Shapes: q [B, H, Lq, d], k and v [B, H, Lk, d]. ``q_offset`` is the number of key tokens that precede the
first query (a cached prefix), so query row i is token ``q_offset + i`` of the masked sequence.
"""
from __future__ import annotations

import functools
import torch
import torch.nn.functional as F

from ..masks import Mask, from_kernel_args

BACKENDS = ("auto", "sdpa", "flex", "split", "math")
MASKED_CUDA_BACKENDS, SDPA_ORDERS = ("flex", "split"), ("default", "cudnn")
_MASKED_CUDA = ["flex"]  # what "auto" runs for a masked attention on CUDA (``use_masked_backend``)
_SDPA_ORDER: list = []   # the open kernel-order context of ``use_sdpa_order("cudnn")``


def use_sdpa_order(name: str) -> None:
    """Process-wide SDPA kernel order on CUDA: "default" (PyTorch's, flash first) or "cudnn" (cuDNN's fused
    attention first, then flash, memory-efficient, math; a shape one cannot take falls through). Compiled
    code fixes its kernel when it traces, so choose before the first compiled call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name not in SDPA_ORDERS:
        raise ValueError(f"the SDPA kernel order is 'default' or 'cudnn', got {name!r}")
    while _SDPA_ORDER:  # leave an earlier choice first
        _SDPA_ORDER.pop().__exit__(None, None, None)
    if name == "default":
        return
    order = sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                         SDPBackend.MATH], set_priority=True)
    order.__enter__()
    _SDPA_ORDER.append(order)


def use_masked_backend(name: str) -> None:
    """Choose what ``backend="auto"`` runs for masked attention on CUDA: "flex" (FlexAttention with the block
    mask) or "split" (dense SDPA pieces, ``_split_attention``). Both compute the same attention."""
    if name not in MASKED_CUDA_BACKENDS:
        raise ValueError(f"masked attention on CUDA runs 'flex' or 'split', got {name!r}")
    _MASKED_CUDA[0] = name


def attention(q, k, v, mask: Mask | None = None, frame_tokens: int | None = None, q_offset: int = 0,
              backend: str = "auto", key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``key_mask`` [Lk] bool: only these keys are attended to by every query (the static-shape KV cache)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if key_mask is not None:
        if mask is not None:
            raise ValueError("give either a frame mask or a key mask")
        if backend == "math":
            s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
            return (s.masked_fill(~key_mask, float("-inf")).softmax(-1) @ v.float()).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[None, :].expand(q.shape[-2], -1))
    if backend == "math":
        from .reference import attention_math

        return attention_math(q, k, v, mask, frame_tokens, q_offset=q_offset)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if frame_tokens is None:
        raise ValueError("a masked attention needs frame_tokens (tokens per latent frame)")
    Lq, Lk = q.shape[-2], k.shape[-2]
    if Lk % frame_tokens or (q_offset + Lq) > Lk:
        raise ValueError(f"keys ({Lk}) must be whole frames of {frame_tokens} tokens and cover the queries "
                         f"(offset {q_offset} + {Lq})")
    T = mask.video_frames(Lk // frame_tokens)
    if backend == "split" or (backend == "auto" and q.is_cuda and _MASKED_CUDA[0] == "split"):
        key = tuple(sorted(mask.kernel_args(T).items()))  # integers: a compiled caller passes constants
        return _split_attention(q, k, v, _pieces(key, frame_tokens, Lq, q_offset))
    use_flex = backend == "flex" or (backend == "auto" and q.is_cuda and _flex_supports(q.shape[-1]))
    if use_flex:
        block_mask = _flex_block_mask(mask, frame_tokens, T, Lq, Lk, q_offset, q.device)
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    dense = _dense_mask(mask, frame_tokens, T, q_offset, Lq, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)


@functools.lru_cache(maxsize=64)
@torch.compiler.assume_constant_result  # a compiled caller gets the plan as constants (no graph break)
def _pieces(mask_args: tuple, frame_tokens: int, Lq: int, q_offset: int):
    """The mask (given by its ``kernel_args`` items) as dense pieces: (key cut points, [(q0, q1, key
    pieces)]): query tokens [q0, q1) (of the query tensor) see exactly the keys of the listed pieces of the
    keys cut at the cut points."""
    args = dict(mask_args)
    fm = from_kernel_args(**args).frame_mask(args["NUM_FRAMES"]).tolist()
    f0, f1 = q_offset // frame_tokens, (q_offset + Lq - 1) // frame_tokens + 1
    groups: list[list] = []  # [first query frame, last + 1, key frame runs]
    for f in range(f0, f1):
        row, runs, start = fm[f], [], None
        for kf, seen in enumerate(row + [False]):
            if seen and start is None:
                start = kf
            elif not seen and start is not None:
                runs.append((start, kf))
                start = None
        if groups and groups[-1][2] == runs:
            groups[-1][1] = f + 1
        else:
            groups.append([f, f + 1, runs])
    cuts = sorted({0, len(fm)} | {b for *_, runs in groups for run in runs for b in run})
    pieces = []
    for a, b, runs in groups:
        q0, q1 = max(a * frame_tokens - q_offset, 0), min(b * frame_tokens - q_offset, Lq)
        keys = tuple(i for s, e in runs for i in range(cuts.index(s), cuts.index(e)))
        pieces.append((q0, q1, keys))
    return tuple(c * frame_tokens for c in cuts), tuple(pieces)


def _split_attention(q, k, v, plan) -> torch.Tensor:
    """Masked attention as unmasked SDPA calls over the plan's pieces. Keys are split once at the cut points
    (one backward for the split: each piece's key gradient accumulates at its own size, never a zero-filled
    full-size tensor per use); a query run that sees no key gets zeros, the limit of an empty softmax."""
    cuts, pieces = plan
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    ks, vs = k.split(sizes, dim=2), v.split(sizes, dim=2)
    outs = []
    for q0, q1, keys in pieces:
        qs = q[:, :, q0:q1]
        if not keys:
            outs.append(torch.zeros_like(qs))
            continue
        kk = ks[keys[0]] if len(keys) == 1 else torch.cat([ks[i] for i in keys], dim=2)
        vv = vs[keys[0]] if len(keys) == 1 else torch.cat([vs[i] for i in keys], dim=2)
        outs.append(F.scaled_dot_product_attention(qs, kk, vv))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _flex_supports(head_dim: int) -> bool:
    """FlexAttention's kernels take power-of-two head sizes of at least 16; others use the dense path."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


@functools.lru_cache(maxsize=64)
def _dense_mask(mask: Mask, frame_tokens: int, T: int, q_offset: int, Lq: int, device) -> torch.Tensor:
    return mask.dense(frame_tokens, T, device=device)[q_offset:q_offset + Lq]


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def _flex_block_mask(mask: Mask, frame_tokens: int, T: int, Lq: int, Lk: int, q_offset: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask.mask_mod(frame_tokens, T, q_offset), B=None, H=None, Q_LEN=Lq, KV_LEN=Lk,
                             device=device)


def attention_jvp(q, k, v, tq, tk, tv, mask: Mask | None = None, frame_tokens: int | None = None,
                  scale: float | None = None, *, q_offset: int = 0, tangent_rows: int = 0, tangent_keys: int = 0,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) of masked attention: O = softmax(scale·QKᵀ)V, Ȯ = PV̇ + (P⊙Ṡ)V − rowsum(P⊙Ṡ)·O (METHOD.md §4).

    q [B, H, Lq, d], k and v [B, H, Lk, d]; tq holds query rows [tangent_rows, Lq), tk and tv keys
    [tangent_keys, Lk) (zero tangents elsewhere, by structure); Ȯ has shape [B, H, Lq − tangent_rows, d].
    ``backend``: "triton" (CUDA, or CPU under TRITON_INTERPRET=1; kernels/flash_attn_jvp.py), "ref" (dense
    PyTorch; kernels/reference.py), None = Triton for CUDA tensors and the reference elsewhere.
    """
    backend = backend or ("triton" if q.is_cuda else "ref")
    kw = dict(q_offset=q_offset, tangent_rows=tangent_rows, tangent_keys=tangent_keys)
    if backend == "triton":
        from .flash_attn_jvp import flash_attention_jvp  # Triton is imported only where it is used

        return flash_attention_jvp(q, k, v, tq, tk, tv, mask, frame_tokens, scale, **kw)
    if backend == "ref":
        from .reference import attention_ref

        return attention_ref(q, k, v, tq, tk, tv, mask, frame_tokens, scale, **kw)
    raise ValueError(f"unknown attention_jvp backend {backend!r}; choose 'triton', 'ref' or None")
