"""A KV cache of static shape: what a per-chunk forward captured once as a CUDA graph needs.

``KVCache`` keeps exactly the keys the next block sees, so its length changes from block to block. This
cache instead holds one slot of the widest block's tokens per block its KV policy keeps (``kv_policy.py``:
every block of a video, or the sink blocks plus a ring of W slots for an endless stream) and attends over
all of them with a key mask. Block j lives in slot j (j < sink or a full policy) or in ring slot
sink + (j − sink) mod W; the block written there last, j − W, is invisible to j and to every later block,
so a block writes its K/V straight into its own slot, read-only denoising calls included (scratch that the
context write overwrites). Keys are stored after RoPE at absolute positions, as in ``KVCache``.

Everything that changes from block to block (the slot's token indices, the key mask, the RoPE tables) lives
in fixed buffers filled by ``prepare(block, ...)`` outside the captured region; the forward itself only
writes into and reads from fixed addresses. Attention reads only the *visible prefix* of the slots: the
slots up to the last one the block sees (``layout``: its token count, and whether a key mask is needed for
holes inside it: partly filled or invisible slots). Until a stream's cache is full the prefix grows; from
then on (every slot visible, a ring in steady state) it stays the same, so a graph captured for one layout
replays for every later block with that layout: a handful of captures per engine, and dense attention over
exactly the keys a full-length cache holds. The same path runs eagerly and equals the dynamic cache's
output up to rounding (tests). ``reset()`` empties the cache for a new stream and keeps every buffer, so a
new stream can replay the graphs captured for the last one (``Engine.start(..., reuse=old_state)``).
"""
from __future__ import annotations

import torch

from ..kernels.attention import attention
from ..kv_policy import FULL, KVPolicy
from ..masks import ChunkPattern
from ..runtime import to_device


class StaticKVCache:
    def __init__(self, num_layers: int, frame_tokens: int, pattern: ChunkPattern | str, policy: KVPolicy = FULL,
                 max_frames: int | None = None):
        self.num_layers, self.frame_tokens = num_layers, frame_tokens
        self.pattern, self.policy, self.max_frames = ChunkPattern.parse(pattern), policy, max_frames
        if policy.window is None and max_frames is None:
            raise ValueError("a cache that keeps every block needs max_frames; an endless stream needs a window")
        self.slots = policy.capacity_blocks if policy.window is not None else self.pattern.num_blocks(max_frames)
        self.slot_tokens = max(self.pattern.first, self.pattern.chunk) * frame_tokens
        self.capacity = self.slots * self.slot_tokens
        self.k: torch.Tensor | None = None        # [layers, B, H, capacity, d], allocated at first use
        self.v: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = None  # [capacity] bool: the keys the current block sees
        self.write_index: torch.Tensor | None = None  # [slot_tokens] long: where the current block's tokens go
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None
        self.filled: dict[int, int] = {}           # slot -> block it holds (committed)
        self.next_frame = 0
        self.cross = None
        self.prepared: int | None = None           # the block the buffers describe
        self.layout: tuple[int, bool] = (0, False)  # (visible prefix in tokens, whether holes need the key mask)

    def reset(self) -> None:
        """Empty the cache for a new stream of the same shape: bookkeeping only, every buffer (and so every
        graph captured over them) is kept. The new stream's prompt K/V go into ``cross`` in place."""
        self.filled, self.next_frame, self.prepared, self.layout = {}, 0, None, (0, False)

    @property
    def next_block(self) -> int:
        return int(self.pattern.block_of(torch.tensor(self.next_frame)))

    @property
    def cached_frames(self) -> int:
        return sum(self.pattern.block_bounds(j)[1] - self.pattern.block_bounds(j)[0] for j in self.filled.values())

    def slot_of(self, j: int) -> int:
        w, s = self.policy.window, self.policy.sink
        return j if (w is None or j < s) else s + (j - s) % w

    def prepare(self, model, hp: int, wp: int, device) -> None:
        """Fill the per-block buffers for the next block: its slot's token indices, the key mask (the visible
        committed blocks and its own tokens) and its RoPE tables. Called outside any captured region."""
        b = self.next_block
        if self.max_frames is not None and self.pattern.block_bounds(b)[1] > self.max_frames:
            raise ValueError(f"cache was sized for {self.max_frames} frames; block {b} would pass them")
        s, e = self.pattern.block_bounds(b)
        n = (e - s) * self.frame_tokens
        if self.key_mask is None:
            self.key_mask = torch.zeros(self.capacity, dtype=torch.bool, device=device)
            self.write_index = torch.zeros(self.slot_tokens, dtype=torch.long, device=device)
            half = model.cfg.head_dim // 2
            self.rope_cos = torch.zeros(self.slot_tokens, half, device=device)
            self.rope_sin = torch.zeros(self.slot_tokens, half, device=device)
        mask = torch.zeros(self.capacity, dtype=torch.bool)
        for slot, j in self.filled.items():
            if self.policy.sees(b, j):
                js, je = self.pattern.block_bounds(j)
                mask[slot * self.slot_tokens: slot * self.slot_tokens + (je - js) * self.frame_tokens] = True
        base = self.slot_of(b) * self.slot_tokens
        mask[base: base + n] = True
        visible = int(mask.nonzero().max()) + 1
        self.layout = (visible, not bool(mask[:visible].all()))
        # pinned, non-blocking copies: preparing a block does not wait for the GPU to finish the last one
        self.key_mask.copy_(to_device(mask, device), non_blocking=True)
        self.write_index[:n].copy_(to_device(torch.arange(base, base + n), device), non_blocking=True)
        cos, sin = model.rope(torch.arange(s, e), hp, wp, device)
        self.rope_cos[:n].copy_(cos)
        self.rope_sin[:n].copy_(sin)
        self.prepared = b

    def view(self, num_frames: int, write: bool) -> "StaticView":
        b = self.next_block
        start, end = self.pattern.block_bounds(b)
        if (start, end) != (self.next_frame, self.next_frame + num_frames):
            raise ValueError(f"streaming with pattern {self.pattern.name} expects block {b} = frames "
                             f"[{start}, {end}), got frames [{self.next_frame}, {self.next_frame + num_frames})")
        if self.prepared != b:
            raise ValueError(f"call prepare() for block {b} before its forwards (static buffers describe block "
                             f"{self.prepared})")
        if torch.is_grad_enabled():
            raise ValueError("the static cache serves inference; training rollouts use KVCache")
        return StaticView(self, b, num_frames, write)

    def commit(self, block: int) -> None:
        """Record block ``block`` as written into its slot (bookkeeping only: its K/V are already there)."""
        self.filled = {s: j for s, j in self.filled.items() if self.policy.keeps(j, block + 1) and s != self.slot_of(block)}
        self.filled[self.slot_of(block)] = block
        self.next_frame = self.pattern.block_bounds(block)[1]
        self.prepared = None


class StaticView:
    """One forward's access to the static cache: fixed buffers in, fixed buffers out."""

    def __init__(self, cache: StaticKVCache, block: int, num_frames: int, write: bool):
        self.cache, self.block, self.write = cache, block, write
        self.tokens = num_frames * cache.frame_tokens

    def rope(self, model, hp: int, wp: int, device):
        c = self.cache
        return c.rope_cos[: self.tokens], c.rope_sin[: self.tokens]

    def attend(self, layer: int, q, k_new, v_new, backend: str = "auto"):
        c = self.cache
        if c.k is None:
            B, H, _, d = k_new.shape
            c.k = torch.zeros((c.num_layers, B, H, c.capacity, d), dtype=k_new.dtype, device=k_new.device)
            c.v = torch.zeros_like(c.k)
        idx = c.write_index[: self.tokens]
        c.k[layer].index_copy_(2, idx, k_new.to(c.k.dtype))
        c.v[layer].index_copy_(2, idx, v_new.to(c.v.dtype))
        visible, holes = c.layout
        k, v = c.k[layer, :, :, :visible].to(q.dtype), c.v[layer, :, :, :visible].to(q.dtype)
        return attention(q, k, v, key_mask=c.key_mask[:visible] if holes else None, backend=backend)

    def commit(self) -> None:
        if self.write:
            self.cache.commit(self.block)
