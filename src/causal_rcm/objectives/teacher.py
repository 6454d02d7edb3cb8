"""Stage 0: the bidirectional teacher, trained by rectified flow (METHOD.md §1, §7)."""
from __future__ import annotations

import torch

from ..flow import noisy


def flow_matching_loss(v_fn, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       weight: torch.Tensor | None = None, actions=None, prefix: torch.Tensor | None = None):
    """L = mean‖v_θ(x_t, t, c[, a]) − (ε − x0)‖², x_t = (1 − t)·x0 + t·ε; optional per-sample weight w(t).

    ``prefix`` int [B]: sample b's first prefix[b] frames are given clean (t = 0, I2V and world models
    started from real frames) and left out of the loss. Returns (loss, metrics)."""
    T = x0.shape[2]
    if prefix is not None:
        given = torch.arange(T, device=x0.device)[None, :] < prefix[:, None]        # [B, T]
        t = torch.where(given, torch.zeros_like(t[:, None]), t[:, None].expand(-1, T))
    x_t = noisy(x0, eps, t)
    v = v_fn(x_t, t, context) if actions is None else v_fn(x_t, t, context, actions=actions)
    err = (v.float() - (eps - x0).float()).square().mean(dim=(1, 3, 4))           # [B, T]
    if prefix is None:
        per_sample = err.mean(1)
    else:
        keep = (~given).float()
        per_sample = (err * keep).sum(1) / keep.sum(1).clamp(min=1)
    if weight is not None:
        per_sample = per_sample * weight
    loss = per_sample.mean()
    return loss, {"loss": loss.detach()}
