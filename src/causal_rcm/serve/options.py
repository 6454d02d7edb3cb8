"""How a play server runs (the CLI's options), shared by the server process and its model worker."""
from __future__ import annotations

from dataclasses import dataclass

from ..kv_policy import KVPolicy


@dataclass(frozen=True)
class PlayOptions:
    fps: float = 30.0                 # target frames per second per player
    window: int | None = None         # KV window in blocks (counting the current one); None: fit the trained length
    sink: int = 1                     # blocks at the stream's start kept forever
    side_by_side: bool = False        # Atari: also step the real emulator and send its frames
    max_players: int = 4
    device: str | None = None
    threads: int | None = None        # torch CPU threads of the model worker (None: torch's default)
    graphs: bool | None = None        # replay each block's forward as a CUDA graph; None: on a CUDA device
    start_rendered: bool = False      # Blobworld: each stream starts from the world's rendered first block

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")
        if self.max_players < 1:
            raise ValueError(f"--max-players must be >= 1, got {self.max_players}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        KVPolicy(self.window, self.sink)  # validates window and sink
