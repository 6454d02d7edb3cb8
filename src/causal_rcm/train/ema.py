"""Exponential moving averages of a network's weights.

``EMA(decay=β)``: θ̄ ← β·θ̄ + (1 − β)·θ.  ``EMA(sigma_rel=σ)``: the EDM2 power EMA, whose decay at step k
is (1 − 1/k)^(γ + 1), with γ solved from σ_rel (Karras et al. 2024, eq. 3); a short run then averages
over a fixed fraction of its length rather than a fixed number of steps.
"""
from __future__ import annotations

import copy

import numpy as np
import torch


def power_ema_gamma(sigma_rel: float) -> float:
    """γ with σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)) (EDM2), by solving the cubic."""
    t = sigma_rel**-2
    roots = np.roots([1, 7, 16 - t, 12 - t])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float | None = 0.999, sigma_rel: float | None = None):
        if (decay is None) == (sigma_rel is None):
            raise ValueError("give exactly one of decay or sigma_rel")
        self.decay, self.sigma_rel = decay, sigma_rel
        self.gamma = power_ema_gamma(sigma_rel) if sigma_rel is not None else None
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
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
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().float(), 1 - beta)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self):
        return {**self.model.state_dict(), "__updates": torch.tensor(self.updates)}

    def load_state_dict(self, sd):
        sd = dict(sd)
        self.updates = int(sd.pop("__updates"))
        self.model.load_state_dict(sd)
