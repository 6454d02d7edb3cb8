"""World samples into one ``.npz`` (worlds/samples.py), made in resumable, process-parallel shards.

    write_world_samples(world, "pong.npz", n=10_000, seed=0, workers=8)

generates videos 0 … n − 1 of ``world.sample(·, seed)`` into ``pong.npz.parts/`` (data/shards.py: a killed
run rerun with the same arguments continues after its finished shards), then writes the single sample file
atomically and removes the parts. The file is the same for any ``workers`` and ``shard_size``, since video
i depends on (seed, i) alone (``World.sample(start=...)``).

What goes where: a value of ``world.sample`` that is a list or an array with a leading video dimension is
per-video and travels in the shards (prompts as a str array); anything else (Atari's ``game``) is a
constant of the world, taken from ``world.sample(0, seed)`` and written once into the file.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.shards import read_shards, write_shards
from .samples import save_samples

FORMAT = "causal-rcm-world-samples/1"
_FILE_KEYS = ("videos", "prompts", "actions")


def _per_video(value) -> bool:
    return isinstance(value, list) or (isinstance(value, np.ndarray) and value.ndim >= 1)


@dataclass(frozen=True)
class WorldShard:
    """``make_shard`` for ``write_shards``: videos lo … hi − 1 of ``world`` and ``seed`` as arrays. The world
    travels to the worker processes by pickle (its config and names; emulators are made there)."""

    world: object
    seed: int
    prompt: str | None = None  # every video with this prompt (worlds with prompts)

    def __call__(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        s = self.world.sample(hi - lo, self.seed, start=lo,
                              prompts=None if self.prompt is None else [self.prompt] * (hi - lo))
        out = {}
        for k, v in s.items():
            if _per_video(v):
                out[k] = np.array(v, dtype=str) if k == "prompts" else np.asarray(v)
        return out


def parts_dir(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".parts")


def write_world_samples(world, out_path: str | Path, n: int, seed: int, workers: int = 1, shard_size: int = 64,
                        progress: bool = True, prompt: str | None = None) -> Path:
    """Write videos 0 … n − 1 of (world, seed) as one sample file at ``out_path``; returns the path.

    The parts folder is checked shard by shard (sha256) when a run resumes; other settings into the same
    parts folder raise ValueError naming them (remove the folder to start over)."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    out_path, parts = Path(out_path), parts_dir(out_path)
    if out_path.is_dir():
        raise ValueError(f"{out_path} is a directory; give a .npz file name")
    constants = {k: v for k, v in world.sample(0, seed).items() if not _per_video(v)}
    config = {"world": asdict(world.config), "seed": int(seed), "prompt": prompt}
    write_shards(parts, n, shard_size, config, WorldShard(world, int(seed), prompt), workers=workers, progress=progress,
                 fmt=FORMAT, verify=True, desc=f"{world.config.name} {world.config.variant}")
    data = read_shards(parts, fmt=FORMAT)
    if len(data["sample_ids"]) != n:
        raise ValueError(f"{parts} holds {len(data['sample_ids'])} valid videos of {n} (see the warnings); rerun "
                         "the same command to remake the bad shards")
    extra = {k: v for k, v in data.items() if k not in _FILE_KEYS and k != "sample_ids"}
    save_samples(out_path, data["videos"], [str(p) for p in data["prompts"]], data.get("actions"),
                 world=json.dumps(asdict(world.config)), **extra, **constants)
    shutil.rmtree(parts)
    return out_path
