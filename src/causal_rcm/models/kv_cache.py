"""Explicit streaming state: the per-layer self-attention K/V of the blocks generated so far.

The cache holds exactly the keys the next block may see under its KV policy (``kv_policy.py``, shared with
the block-causal mask): every earlier block (``Full``), or the sink blocks plus the W − 1 most recent ones
(``Window``). So a streaming forward is plain dense attention over [cache | current block] and equals the
block-causal full-sequence forward with the same policy. A windowed cache has a fixed capacity and serves an
endless stream: positions keep growing, old blocks roll out.

Keys are stored after RoPE at their absolute frame positions. Each forward over the next block takes a
``CacheView``: it gives the block's RoPE positions, answers ``keys_values(layer, k, v)`` with the cached
prefix followed by the block's own K/V, and, for an appending call (the context write), ``commit()`` adds
the block and evicts what the policy no longer keeps. A view made with gradients enabled concatenates
(gradient flows through the current block only, cached blocks are constants: METHOD.md §5); without, it
writes the block into scratch space past the committed prefix and attends to a slice.
Cross-attention K/V of the prompt are computed once per stream (``cross``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..kernels.attention import attention
from ..kv_policy import FULL, KVPolicy
from ..masks import ChunkPattern


class KVCache:
    def __init__(self, num_layers: int, frame_tokens: int, pattern: ChunkPattern | str,
                 policy: KVPolicy = FULL, max_frames: int | None = None):
        self.num_layers, self.frame_tokens = num_layers, frame_tokens
        self.pattern, self.policy = ChunkPattern.parse(pattern), policy
        widest = max(self.pattern.first, self.pattern.chunk)
        if policy.capacity_blocks is not None:
            cap_frames = policy.capacity_blocks * widest
            if max_frames is not None:
                cap_frames = min(cap_frames, max_frames)
        elif max_frames is None:
            raise ValueError("a cache that keeps every block needs max_frames (the video's length); an endless "
                             "stream needs a window policy")
        else:
            cap_frames = max_frames
        self.max_frames = max_frames
        self.capacity = cap_frames * frame_tokens
        self.k: torch.Tensor | None = None  # [layers, B, H, capacity, d], allocated at first use
        self.v: torch.Tensor | None = None
        self.length = 0          # committed tokens
        self.next_frame = 0      # absolute frame index (RoPE position) of the next block
        self.cached_blocks: list[tuple[int, int]] = []  # (block index, tokens) in storage order
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def next_block(self) -> int:
        return int(self.pattern.block_of(torch.tensor(self.next_frame)))

    @property
    def cached_frames(self) -> int:
        return self.length // self.frame_tokens

    def view(self, num_frames: int, write: bool) -> "CacheView":
        """The view one forward over the next ``num_frames`` frames uses (``write``: it appends them)."""
        if self.max_frames is not None and self.next_frame + num_frames > self.max_frames:
            raise ValueError(f"cache was sized for {self.max_frames} frames; {self.next_frame} are done and "
                             f"{num_frames} more were asked for")
        b = self.next_block
        start, end = self.pattern.block_bounds(b)
        if (start, end) != (self.next_frame, self.next_frame + num_frames):
            raise ValueError(f"streaming with pattern {self.pattern.name} expects block {b} = frames "
                             f"[{start}, {end}), got frames [{self.next_frame}, {self.next_frame + num_frames})")
        n = num_frames * self.frame_tokens
        if self.length + n > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} + {n} tokens > capacity {self.capacity}")
        return CacheView(self, b, num_frames, write, torch.is_grad_enabled())

    # ----- replayed backprop: the prefix a block saw ------------------------------------------------
    def rewind_to(self, frame: int) -> None:
        """Forget the blocks from ``frame`` on (their K/V stay in the buffer, unused): the state the cache had
        before that block was written. A rolling window has evicted what it would need: refused there."""
        if self.policy.window is not None:
            raise ValueError("a rolling-window cache cannot be rewound (it has evicted old blocks)")
        if frame > self.next_frame:
            raise ValueError(f"cannot rewind to frame {frame}: only {self.next_frame} frames are cached")
        keep, n = [], 0
        for j, tokens in self.cached_blocks:
            if n + tokens > frame * self.frame_tokens:
                break
            keep.append((j, tokens))
            n += tokens
        if n != frame * self.frame_tokens:
            raise ValueError(f"frame {frame} is not a block boundary of the cached blocks")
        self.cached_blocks, self.length, self.next_frame = keep, n, frame

    @contextmanager
    def prefix(self, frame: int):
        """The cache as it was before frame ``frame`` was written, for the duration of the block."""
        saved = (self.length, self.next_frame, list(self.cached_blocks))
        self.rewind_to(frame)
        try:
            yield self
        finally:
            self.length, self.next_frame, self.cached_blocks = saved

    # ----- storage ------------------------------------------------------------------------------------
    def _allocate(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        B, H, _, d = k_new.shape
        shape = (self.num_layers, B, H, self.capacity, d)
        self.k = torch.empty(shape, dtype=k_new.dtype, device=k_new.device)
        self.v = torch.empty(shape, dtype=v_new.dtype, device=v_new.device)

    def _commit(self, block: int, tokens: int, frames: int) -> None:
        self.length += tokens
        self.next_frame += frames
        self.cached_blocks.append((block, tokens))
        self._evict(next_block=block + 1)

    def _evict(self, next_block: int) -> None:
        """Keep the blocks the policy still needs; compact them to the front of the buffer."""
        keep = [self.policy.keeps(j, next_block) for j, _ in self.cached_blocks]
        if all(keep):
            return
        src, dst, kept = 0, 0, []
        for (j, n), k in zip(self.cached_blocks, keep):
            if k:
                if src != dst:
                    self.k[:, :, :, dst:dst + n] = self.k[:, :, :, src:src + n].clone()
                    self.v[:, :, :, dst:dst + n] = self.v[:, :, :, src:src + n].clone()
                kept.append((j, n))
                dst += n
            src += n
        self.cached_blocks, self.length = kept, dst


class CacheView:
    """One forward's access to the cache: positions, per-layer keys/values, and the commit of a write."""

    def __init__(self, cache: KVCache, block: int, num_frames: int, write: bool, differentiable: bool):
        self.cache, self.block, self.num_frames = cache, block, num_frames
        self.write, self.differentiable = write, differentiable
        self.tokens = num_frames * cache.frame_tokens
        self.positions = torch.arange(cache.next_frame, cache.next_frame + num_frames)

    def keys_values(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Keys/values this call attends to: the cached prefix followed by the current block's own."""
        c, L, n = self.cache, self.cache.length, k_new.shape[2]
        if c.k is None:
            c._allocate(k_new, v_new)
        if k_new.shape[0] != c.k.shape[1]:
            raise ValueError(f"cache holds batch {c.k.shape[1]}, got {k_new.shape[0]}")
        if self.differentiable:
            if self.write:
                c.k[layer, :, :, L:L + n] = k_new.detach()
                c.v[layer, :, :, L:L + n] = v_new.detach()
            k_all = torch.cat([c.k[layer, :, :, :L].to(k_new.dtype), k_new], dim=2)
            v_all = torch.cat([c.v[layer, :, :, :L].to(v_new.dtype), v_new], dim=2)
            return k_all, v_all
        # writing past ``length`` is scratch space unless this call commits
        c.k[layer, :, :, L:L + n] = k_new
        c.v[layer, :, :, L:L + n] = v_new
        return c.k[layer, :, :, :L + n], c.v[layer, :, :, :L + n]

    def rope(self, model, hp: int, wp: int, device):
        """RoPE tables of the block's frames at their absolute positions."""
        return model.rope(self.positions, hp, wp, device)

    def attend(self, layer: int, q, k_new, v_new, backend: str = "auto"):
        """Self-attention of the block's queries over [cached prefix | the block's own keys]."""
        return attention(q, *self.keys_values(layer, k_new, v_new), backend=backend)

    def commit(self) -> None:
        if self.write:
            self.cache._commit(self.block, self.tokens, self.num_frames)
