"""Which earlier blocks a block sees: the rule the block-causal mask and the KV cache share (METHOD.md §2).

    Full()                 every earlier block (a video of known length)
    Window(W, sink=S)      the sink blocks j < S plus the W − 1 blocks before the current one (j > b − W):
                           an endless stream holds at most S + W − 1 cached blocks

``BlockCausal`` asks ``sees(b, j)`` for its frame mask; ``KVCache`` asks ``keeps(j, next_block)`` when it
evicts and ``capacity_blocks`` when it sizes its buffers, so "streaming == the masked full-sequence
forward" holds for every policy by construction. Positions (RoPE) keep growing with the absolute frame
index whatever the policy: a rolling cache forgets old blocks, not where the stream is.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVPolicy:
    window: int | None = None  # blocks a block sees counting itself; None: all earlier blocks
    sink: int = 0              # the first ``sink`` blocks stay visible forever

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 block (or None), got {self.window}")
        if self.sink < 0:
            raise ValueError(f"sink must be >= 0 blocks, got {self.sink}")

    @property
    def endless(self) -> bool:
        """Whether a stream under this policy needs bounded memory (a window)."""
        return self.window is not None

    def sees(self, b, j):
        """May block b attend to block j? (ints or broadcasting tensors)"""
        ok = j <= b
        if self.window is not None:
            ok = ok & ((j > b - self.window) | (j < self.sink))
        return ok

    def keeps(self, j: int, next_block: int) -> bool:
        """Is cached block j still needed once ``next_block`` is the next block to generate?"""
        return self.window is None or j >= next_block - self.window + 1 or j < self.sink

    @property
    def capacity_blocks(self) -> int | None:
        """Cached blocks plus the current one, at most (None: unbounded)."""
        return None if self.window is None else self.sink + self.window


FULL = KVPolicy()


def window(w: int, sink: int = 0) -> KVPolicy:
    return KVPolicy(w, sink)
