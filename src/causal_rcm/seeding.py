"""Seeds: one derivation for every random draw of a run, rank-aware by construction.

Every draw of a training step belongs to one sample of the *global* batch: sample j of step s of stream
``tag`` comes from its own generator seeded by (seed, tag, s, j). A rank that holds samples [lo, hi) draws
exactly those, so one process and N processes see the same batch, split, and log the same losses; a resumed
run redraws the batches it would have drawn. Streams keep the draws of different purposes apart (the
data index, the times, the noise of the teacher's rollouts, the critic's batches, ...).
"""
from __future__ import annotations

import numpy as np
import torch

# stream tags (any distinct integers)
DATA, CRITIC, GENERATOR, JOINT, DROPOUT = 1, 2, 3, 4, 5


def derive(*entropy: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SampleRandom:
    """Random draws for samples ``ids`` of one step: each method returns [len(ids), *shape], sample by sample
    from its own generator (so row j does not depend on which other rows are drawn)."""

    def __init__(self, seed: int, tag: int, step: int, ids, device):
        self.device = torch.device(device)
        self.gens = [torch.Generator(device=self.device).manual_seed(derive(seed, tag, step, i)) for i in ids]

    def __len__(self) -> int:
        return len(self.gens)

    def rand(self, *shape) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.gens])

    def randn(self, *shape) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.gens])

    def randint(self, high: int, *shape) -> torch.Tensor:
        return torch.stack([torch.randint(0, high, shape, generator=g, device=self.device) for g in self.gens])


def local_ids(step_batch: int, rank: int = 0, world_size: int = 1) -> range:
    """The global-batch sample indices a rank holds (contiguous, equal shares)."""
    if step_batch % world_size:
        raise ValueError(f"the global batch {step_batch} does not split over {world_size} processes; "
                         "make train.batch a multiple of the world size")
    per = step_batch // world_size
    return range(rank * per, (rank + 1) * per)
