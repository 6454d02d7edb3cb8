"""Explicit streaming state: the per-layer self-attention K/V of the blocks generated so far.

The cache holds exactly the keys the next block may see (METHOD.md §2, "streaming"): every earlier block
without a window; with a window of W blocks, the sink blocks plus the W − 1 most recent ones. So a
streaming forward is plain dense attention over [cache | current block] and equals the block-causal
full-sequence forward with the same window and sink.

Keys are stored after RoPE at their absolute frame positions. A forward either *reads* the cache (the
current block's own K/V join the keys for this call only) or *appends* (they are committed at the end of
the call, then old blocks beyond the window are evicted). Cross-attention K/V of the prompt are computed
at the first call and reused (``cross``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .masks import ChunkPattern


class KVCache:
    def __init__(self, num_layers: int, frame_tokens: int, max_frames: int, pattern: ChunkPattern | str | None = None,
                 window: int | None = None, sink: int = 0):
        if window is not None and pattern is None:
            raise ValueError("a rolling window is counted in blocks: give the chunk pattern too")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 block, got {window}")
        self.num_layers = num_layers
        self.frame_tokens = frame_tokens
        self.max_frames = max_frames
        self.pattern = ChunkPattern.parse(pattern) if pattern is not None else None
        self.window, self.sink = window, sink
        if window is None:
            cap_frames = max_frames
        else:
            widest = max(self.pattern.first, self.pattern.chunk)
            cap_frames = min(max_frames, (sink + window) * widest)
        self.capacity = cap_frames * frame_tokens
        self.k: torch.Tensor | None = None  # [layers, B, H, capacity, d], allocated at first use
        self.v: torch.Tensor | None = None
        self.length = 0          # committed tokens
        self.next_frame = 0      # absolute frame index (RoPE position) of the next block
        self.cached_blocks: list[tuple[int, int]] = []  # (block index, tokens) in storage order
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self._pending = 0        # tokens of the call in flight
        self._write = False

    def reset(self, keep_cross: bool = False) -> None:
        self.length, self.next_frame, self.cached_blocks = 0, 0, []
        if not keep_cross:
            self.cross = [None] * self.num_layers

    def rewind_to(self, frame: int) -> None:
        """Forget the blocks from ``frame`` on (their K/V stay in the buffer, unused): the state the cache had
        before that block was written. Replayed backprop uses it; a rolling window has evicted what it would
        need, so it is refused there."""
        if self.window is not None:
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

    @property
    def cached_frames(self) -> int:
        return self.length // self.frame_tokens

    def begin(self, num_frames: int, write: bool) -> torch.Tensor:
        """Start a forward over ``num_frames`` new frames; returns their RoPE positions."""
        if self.next_frame + num_frames > self.max_frames:
            raise ValueError(f"cache was sized for {self.max_frames} frames; {self.next_frame} are done and "
                             f"{num_frames} more were asked for")
        if self.pattern is not None:
            b = int(self.pattern.block_of(torch.tensor(self.next_frame)))
            start, end = self.pattern.block_bounds(b)
            if (start, end) != (self.next_frame, self.next_frame + num_frames):
                raise ValueError(f"streaming with pattern {self.pattern.name} expects block {b} = frames "
                                 f"[{start}, {end}), got frames [{self.next_frame}, {self.next_frame + num_frames})")
        n = num_frames * self.frame_tokens
        if self.length + n > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} + {n} tokens > capacity {self.capacity}")
        self._pending, self._write = n, write
        return torch.arange(self.next_frame, self.next_frame + num_frames)

    def keys_values(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Keys/values this call attends to: the cached prefix followed by the current block's own."""
        L, n = self.length, k_new.shape[2]
        if self.k is None:
            B, H, _, d = k_new.shape
            shape = (self.num_layers, B, H, self.capacity, d)
            self.k = torch.empty(shape, dtype=k_new.dtype, device=k_new.device)
            self.v = torch.empty(shape, dtype=v_new.dtype, device=v_new.device)
        if k_new.shape[0] != self.k.shape[1]:
            raise ValueError(f"cache holds batch {self.k.shape[1]}, got {k_new.shape[0]}")
        if k_new.requires_grad or v_new.requires_grad:
            # Gradient flows through the current block only; cached blocks are constants (METHOD.md §5).
            if self._write:
                self.k[layer, :, :, L:L + n] = k_new.detach()
                self.v[layer, :, :, L:L + n] = v_new.detach()
            k_all = torch.cat([self.k[layer, :, :, :L].to(k_new.dtype), k_new], dim=2)
            v_all = torch.cat([self.v[layer, :, :, :L].to(v_new.dtype), v_new], dim=2)
            return k_all, v_all
        # Writing past ``length`` is scratch space unless this call commits.
        self.k[layer, :, :, L:L + n] = k_new
        self.v[layer, :, :, L:L + n] = v_new
        return self.k[layer, :, :, :L + n], self.v[layer, :, :, :L + n]

    def end(self) -> None:
        """Finish the call: commit the block's K/V if it was an appending call, then evict."""
        n, frames = self._pending, self._pending // self.frame_tokens
        self._pending = 0
        if not self._write:
            return
        block = int(self.pattern.block_of(torch.tensor(self.next_frame))) if self.pattern is not None else -1
        self.length += n
        self.next_frame += frames
        self.cached_blocks.append((block, n))
        if self.window is not None:
            self._evict(next_block=block + 1)

    def _evict(self, next_block: int) -> None:
        """Keep the sink blocks and the blocks the next block still sees (j > next_block − W)."""
        keep = [j >= next_block - self.window + 1 or j < self.sink for j, _ in self.cached_blocks]
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
