"""Built-in worlds behind one interface: ``WorldConfig`` (what bundles and run configs store) and the
``World`` protocol every world implements (``worlds/registry.py`` builds one from a config).

A world renders videos with exact ground truth and scores generated ones without a pretrained network:

    world = make_world(WorldConfig("blobworld", "agent", size=32, frames=21))
    s = world.sample(64, seed=0)                 # videos uint8 [N, T, H, W, 3], prompts, actions, truth
    scores = world.metrics(s)                    # {metric: value}; world.intervals(s) adds 95 % bootstrap CIs

``WorldConfig`` is what bundles and run configs store; ``variant`` names the world's flavour (Blobworld:
"t2v" or "agent"; Atari: the game, "Pong" or "Breakout"). Worlds without prompts use "" for every video;
worlds without actions have ``action_names == ()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class WorldConfig:
    name: str = "blobworld"
    variant: str = "t2v"
    size: int = 32
    frames: int = 21

    def __post_init__(self):
        if int(self.size) != self.size or self.size < 1 or int(self.frames) != self.frames or self.frames < 2:
            raise ValueError(f"a world needs size >= 1 and frames >= 2, got size={self.size}, frames={self.frames}")

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        return cls(**d)


@runtime_checkable
class World(Protocol):
    """What every built-in world provides."""

    config: WorldConfig
    action_names: tuple[str, ...]   # () for a world without actions
    metric_names: tuple[str, ...]
    higher_is_better: dict[str, bool]
    curve_metrics: tuple[str, ...]  # the two metrics training curves show
    starts_from_frames: bool        # world models of this world start from given first frames (Atari)

    def prompts(self) -> tuple[str, ...]:
        """The world's prompts (() for a world without prompts: every video's prompt is "")."""

    def eval_prompts(self, k: int) -> list[str]:
        """k prompts spread over the world's list (k empty prompts for a world without prompts)."""

    def sample(self, n: int, seed: int, prompts=None, actions: np.ndarray | None = None, start: int = 0) -> dict:
        """Videos start … start + n − 1 of the world's stream ``seed``: ``videos`` uint8 [N, T, H, W, 3],
        ``prompts`` list[str], ``actions`` int64 [N, T − 1] (worlds with actions) and world-specific truth."""

    def behaviour_actions(self, seeds) -> np.ndarray:
        """Action sequences of the world's behaviour policy (the data's), row i from seed i: [n, T − 1]."""

    def metrics(self, samples: dict, context_frames: int = 0) -> dict[str, float]:
        """Scores of a sample dict (videos, prompts, actions and what the world needs for ground truth);
        ``context_frames``: the given frames a world model started from (not scored)."""

    def intervals(self, samples: dict, context_frames: int = 0, n_boot: int = 1000, seed: int = 0) -> dict:
        """{metric: (value, low, high)}: 95 % bootstrap intervals over videos."""


def spread(items, k: int) -> list:
    """k items spread evenly over a list (so every kind appears: 1-, 2- and 3-ball prompts)."""
    k = min(k, len(items))
    return [items[(i * len(items)) // k] for i in range(k)]
