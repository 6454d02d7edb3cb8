"""Exponential moving averages of a network's weights.

``EMA(decay=β)``: θ̄ ← β·θ̄ + (1 − β)·θ.  ``EMA(sigma_rel=σ)``: the EDM2 power EMA, whose decay at step k
is (1 − 1/k)^(γ + 1), with γ solved from σ_rel (Karras et al. 2024, eq. 3); a short run then averages
over a fixed fraction of its length rather than a fixed number of steps.

The copy is made by ``copy`` (default: a deep copy); a sharded network passes ``Placement.replica``, so the
average is sharded exactly like the network and each rank updates its own shards, locally.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Callable

import numpy as np
import torch

from .distributed import local as _local


def power_ema_gamma(sigma_rel: float) -> float:
    """γ with σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)) (EDM2), by solving the cubic."""
    t = sigma_rel**-2
    roots = np.roots([1, 7, 16 - t, 12 - t])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float | None = 0.999, sigma_rel: float | None = None,
                 copy: Callable[[torch.nn.Module], torch.nn.Module] = deepcopy):
        if (decay is None) == (sigma_rel is None):
            raise ValueError("give exactly one of decay or sigma_rel")
        self.decay, self.sigma_rel = decay, sigma_rel
        self.gamma = power_ema_gamma(sigma_rel) if sigma_rel is not None else None
        self.model = copy(model).eval().requires_grad_(False)
        if any(p.dtype != torch.float32 for p in self.model.parameters() if p.is_floating_point()):
            self.model.float()
        self.updates = 0

    def beta(self) -> float:
        if self.gamma is None:
            return float(self.decay)
        return (1 - 1 / max(self.updates, 1)) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        beta = self.beta()
        pairs = list(zip(self.model.parameters(), model.parameters()))
        if any(type(e) is not type(p) for e, p in pairs):
            raise TypeError("the EMA and the network are placed differently (one sharded, one not); make the EMA "
                            "with copy=Placement.replica")
        # this rank's shards, pairwise (equal placements: the EMA is sharded like the network)
        torch._foreach_lerp_([_local(e) for e, _ in pairs], [_local(p).detach().float() for _, p in pairs], 1 - beta)
        for e, b in zip(self.model.buffers(), model.buffers()):
            _local(e).copy_(_local(b))

    def state_dict(self):
        return {**self.model.state_dict(), "__updates": torch.tensor(self.updates)}

    def load_state_dict(self, sd):
        sd = dict(sd)
        self.updates = int(sd.pop("__updates"))
        self.model.load_state_dict(sd)
