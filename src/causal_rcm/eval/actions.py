"""Does a world model use its actions? Its flow-matching error on held-out data with the true actions against
the same batches with the actions permuted across the batch (each video keeps a valid sequence, not its own).

A model that ignores its actions scores a ratio of exactly 1; one that follows them does worse with another
video's actions (ratio > 1; a Blobworld-agent causal teacher that follows its keys: 1.3 at t ≥ 0.7,
docs/results/world_models.md). Bidirectional teachers are scored on the whole video at one noise level t (their
training loss), causal models in the TF layout of their chunk pattern (clean context, noisy half at t;
METHOD.md §3), both unweighted.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch

from ..flow import noisy
from ..masks import ChunkPattern, teacher_forcing
from ..models.conditioning import Actions


def flow_error(net, b, t: float, pattern: ChunkPattern | None) -> torch.Tensor:
    """Per-sample mean ‖v_θ − (ε − x0)‖² at time t of batch ``b`` (x0, eps, ctx, actions): pattern None the
    whole video noisy (bidirectional); else the TF layout [x0 clean | x_t] under the teacher-forcing mask,
    scored on the noisy half (the tf loss of objectives/tf.py, unweighted, which the tests hold it to)."""
    B, T = b.x0.shape[0], b.x0.shape[2]
    tt = torch.full((B, T), float(t), device=b.x0.device)
    x_t = noisy(b.x0, b.eps, tt[:, 0])
    if pattern is None:
        v = net(x_t, tt, b.ctx, actions=b.actions)
    else:
        a = None if b.actions is None else Actions.cat([b.actions, b.actions], dim=1)
        v = net(torch.cat([b.x0, x_t], dim=2), torch.cat([torch.zeros_like(tt), tt], dim=1), b.ctx,
                mask=teacher_forcing(pattern), actions=a)[:, :, T:]
    return (v.float() - (b.eps - b.x0).float()).square().flatten(1).mean(1)


def permuted_actions(b, generator: torch.Generator):
    """The batch with its action sequences permuted across samples (a derangement where B > 1)."""
    n = b.x0.shape[0]
    perm = torch.randperm(n, generator=generator)
    while n > 1 and (perm == torch.arange(n)).any():
        perm = torch.randperm(n, generator=generator)
    a = b.actions
    return dataclasses.replace(b, actions=type(a)(a.features[perm.to(a.features.device)],
                                                  a.valid[perm.to(a.valid.device)]))


@torch.no_grad()
def action_sensitivity(net, batches: Iterable, times: Sequence[float],
                       pattern: ChunkPattern | None = None, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per t: the mean error with the true and with permuted actions over all samples, and their ratio with a
    95 % bootstrap interval over samples (paired: each sample's two errors resampled together)."""
    g = torch.Generator().manual_seed(seed)
    true = {t: [] for t in times}
    other = {t: [] for t in times}
    for b in batches:
        if b.actions is None:
            raise ValueError("action sensitivity needs a world model's batches with actions")
        shuffled = permuted_actions(b, g)
        for t in times:
            true[t].append(flow_error(net, b, t, pattern).cpu().numpy())
            other[t].append(flow_error(net, shuffled, t, pattern).cpu().numpy())
    rng = np.random.default_rng(seed)
    rows = []
    for t in times:
        a, s = np.concatenate(true[t]).astype(np.float64), np.concatenate(other[t]).astype(np.float64)
        idx = rng.integers(0, len(a), (n_boot, len(a)))
        boot = s[idx].mean(1) / a[idx].mean(1)
        rows.append({"t": float(t), "n": int(len(a)), "error_true": float(a.mean()), "error_permuted": float(s.mean()),
                     "ratio": float(s.mean() / a.mean()),
                     "ratio_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]})
    return rows
