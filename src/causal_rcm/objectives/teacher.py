"""Stage 0: the bidirectional teacher, trained by rectified flow (METHOD.md §1)."""
from __future__ import annotations

import torch

from ..flow import noisy


def flow_matching_loss(v_fn, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       weight: torch.Tensor | None = None, actions=None):
    """L = mean‖v_θ(x_t, t, c[, a]) − (ε − x0)‖², x_t = (1 − t)·x0 + t·ε; optional per-sample weight w(t).

    Returns (loss, metrics) with the per-sample losses' mean in ``metrics['loss']``.
    """
    x_t = noisy(x0, eps, t)
    v = v_fn(x_t, t, context) if actions is None else v_fn(x_t, t, context, actions=actions)
    per_sample = (v.float() - (eps - x0).float()).square().flatten(1).mean(1)
    if weight is not None:
        per_sample = per_sample * weight
    loss = per_sample.mean()
    return loss, {"loss": loss.detach()}
