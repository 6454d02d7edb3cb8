"""What every stage shares: the world, teacher sampling and evaluation configs, and starting a run."""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import blobworld

WORLDS = ("blobworld",)


@dataclass(frozen=True)
class WorldConfig:
    name: str = "blobworld"
    variant: str = "t2v"
    size: int = 32
    frames: int = 21

    def __post_init__(self):
        if self.name not in WORLDS:
            raise ValueError(f"unknown world {self.name!r}; built-in worlds: {WORLDS}")
        if self.variant not in blobworld.VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {blobworld.VARIANTS}")

    def prompts(self) -> tuple[str, ...]:
        return blobworld.T2V_PROMPTS if self.variant == "t2v" else blobworld.AGENT_PROMPTS

    def sample(self, n: int, seed: int, prompts=None, start: int = 0) -> dict:
        return blobworld.sample_worlds(n, seed, size=self.size, frames=self.frames, variant=self.variant,
                                       prompts=prompts, start=start)

    def eval_prompts(self, k: int) -> list[str]:
        """k prompts spread evenly over the world's list (so 1-, 2- and 3-ball prompts all appear)."""
        ps = self.prompts()
        k = min(k, len(ps))
        return [ps[(i * len(ps)) // k] for i in range(k)]


@dataclass(frozen=True)
class SampleConfig:
    """Teacher sampling: Euler on the PF-ODE with a shifted grid and CFG (METHOD.md §6)."""

    steps: int = 50
    cfg: float = 3.0
    shift: float = 3.0


@dataclass(frozen=True)
class EvalConfig:
    prompts: int = 16
    per_prompt: int = 16
    seed: int = 1234
    batch: int = 256


def config_dict(cfg) -> dict:
    """A (nested) config dataclass as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin_run(stage: str, cfg, run_dir: str | Path, seed: int) -> Path:
    """Create the run folder, write its resolved config.json, seed every generator."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"stage": stage, **config_dict(cfg)}, indent=2))
    seed_everything(seed)
    return run_dir
