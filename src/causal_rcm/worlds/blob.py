"""Blobworld behind the ``World`` interface: the renderer (``blobworld.py``, spec §1–3) and the metrics
(``blobworld_metrics.py``, spec §4) as one world."""
from __future__ import annotations

import numpy as np

from .base import spread
from .blobworld import ACTION_NAMES, AGENT_PROMPTS, STICKY, T2V_PROMPTS, sample_worlds, sticky_actions
from .blobworld_metrics import AGENT_METRICS, HIGHER_IS_BETTER, T2V_METRICS, evaluate, evaluate_intervals


REFERENCE_SEED = 0xB10B  # Blob-FD's rendered reference set


class Blobworld:
    """The Blobworld world (shared/specs/blobworld.md) behind the ``World`` interface."""

    def __init__(self, config):
        self.config = config
        self.agent = config.variant == "agent"
        self.action_names = ACTION_NAMES if self.agent else ()
        self.metric_names = (AGENT_METRICS if self.agent else T2V_METRICS) + ("blob_fd",)
        self.higher_is_better = {k: HIGHER_IS_BETTER[k] for k in self.metric_names}
        self.curve_metrics = ("prompt_accuracy", "action_accuracy" if self.agent else "motion_error")
        self.starts_from_frames = False

    def prompts(self) -> tuple[str, ...]:
        return AGENT_PROMPTS if self.agent else T2V_PROMPTS

    def eval_prompts(self, k: int) -> list[str]:
        return spread(self.prompts(), k)

    def sample(self, n: int, seed: int, prompts=None, actions=None, start: int = 0) -> dict:
        c = self.config
        return sample_worlds(n, seed, size=c.size, frames=c.frames, variant=c.variant, prompts=prompts,
                             actions=actions, start=start)

    def behaviour_actions(self, seeds) -> np.ndarray:
        """Sticky random actions (§3), row i from its own seed: int64 [len(seeds), T − 1]."""
        if not self.agent:
            raise ValueError("the t2v variant has no actions")
        T = self.config.frames
        rows = []
        for s in seeds:
            rng = np.random.default_rng(int(s))
            rows.append(sticky_actions(rng.integers(0, 5, 1), rng.random((1, T - 2)) < STICKY,
                                       rng.integers(0, 5, (1, T - 2))))
        return np.concatenate(rows)

    def reference(self, prompts) -> np.ndarray:
        """Blob-FD's reference: freshly rendered videos of the same prompts from a seed no evaluation uses."""
        return self.sample(len(prompts), REFERENCE_SEED, prompts=list(prompts))["videos"]

    def metrics(self, samples: dict, context_frames: int = 0) -> dict[str, float]:
        return evaluate(samples["videos"], samples["prompts"], samples.get("actions") if self.agent else None,
                        self.config.variant, self.reference(samples["prompts"]))

    def intervals(self, samples: dict, context_frames: int = 0, n_boot: int = 1000, seed: int = 0) -> dict:
        return evaluate_intervals(samples["videos"], samples["prompts"],
                                  samples.get("actions") if self.agent else None, self.config.variant, n_boot, seed,
                                  self.reference(samples["prompts"]))
