"""The world-data stage of a recipe: videos rendered (or emulated) from a built-in world into one sample
file, in resumable process-parallel shards (``worlds/writer.py``). Worlds that emulate (Atari) train their
teacher on such a file, and their synthetic data start from its real first frames.

    {stage: world, name: data, preset: atari-pong, overrides: [n=4096, workers=14]}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import apply_overrides
from ..worlds.base import WorldConfig
from ..worlds.registry import check_world, make_world
from ..worlds.writer import write_world_samples


@dataclass(frozen=True)
class WorldDataConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    n: int = 4096
    seed: int = 0
    workers: int = 1
    shard_size: int = 64

    def __post_init__(self):
        check_world(self.world)
        for name in ("n", "workers", "shard_size"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


def world_data_preset(name: str) -> WorldDataConfig:
    presets = {
        "blob-agent": WorldDataConfig(WorldConfig("blobworld", "agent", 32, 21)),
        "blob-agent-tiny": WorldDataConfig(WorldConfig("blobworld", "agent", 16, 9)),
        "atari-pong": WorldDataConfig(WorldConfig("atari", "Pong", 64, 21)),
        "atari-breakout": WorldDataConfig(WorldConfig("atari", "Breakout", 64, 21)),
        "atari-tiny": WorldDataConfig(WorldConfig("atari", "Pong", 64, 5), n=16, shard_size=8),
    }
    if name not in presets:
        raise ValueError(f"unknown world-data preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def run_world_data(st: dict, overrides: list[str], run_dir: Path) -> dict:
    cfg = apply_overrides(world_data_preset(st.get("preset", "atari-pong")), overrides)
    out = run_dir / "data.npz"
    if not out.is_file():
        write_world_samples(make_world(cfg.world), out, cfg.n, cfg.seed, cfg.workers, cfg.shard_size)
    return {"data": out, "world": cfg.world}
