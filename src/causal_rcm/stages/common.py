"""What every stage shares: the evaluation settings, starting a run, and loading the bundles a stage needs."""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import check_dir_writable
from ..stream.bundle import Bundle


@dataclass(frozen=True)
class EvalConfig:
    prompts: int = 16
    per_prompt: int = 16
    seed: int = 1234
    batch: int = 256
    paired: str = ""  # paired teacher-ODE targets (stages/paired.py): students also report paired_rmse@1, @2

    def __post_init__(self):
        for name in ("prompts", "per_prompt", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"eval.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"eval.seed must be an integer >= 0, got {self.seed!r}")


def config_dict(cfg) -> dict:
    """A (nested) config dataclass as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin_run(stage: str, cfg, run_dir: str | Path, seed: int, world_size: int = 1, is_main: bool = True) -> dict:
    """Check the run folder can be written and seed every generator; returns the resolved config (with the
    world size), which ``run_loop`` compares with a run it resumes and writes to RUN/config.json."""
    check_dir_writable(run_dir, "run folder")
    seed_everything(seed)
    return {"stage": stage, **config_dict(cfg), "world_size": world_size}


def load_bundle_for(path: str, what: str, device, trainable: bool = False) -> Bundle:
    """A bundle the stage's config names (``what=path``), with a message naming the key when it is missing."""
    if not path:
        raise ValueError(f"this stage needs {what}= (a bundle path)")
    return Bundle.load(path, device=device, trainable=trainable)


def evaluator(bundle: Bundle, tc, evaluate):
    """The periodic evaluation of a run: ``evaluate`` for a world model; a free-text model (no world, so no
    world metrics) runs without one and must say so with ``train.eval_every=0``."""
    if bundle.world is not None:
        return evaluate
    if tc.eval_every > 0:
        raise ValueError("a free-text model has no world metrics to evaluate during training: set "
                         "train.eval_every=0")
    return None
