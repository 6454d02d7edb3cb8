"""Does a world model use its actions? Its flow-matching error on held-out data with the true actions against
the same batches with the actions permuted across the batch (each video keeps a valid sequence, not its own).

A model that ignores its actions scores a ratio of exactly 1; one that follows them does worse with another
video's actions (ratio > 1). The error a perfect action model can save is bounded by the pixels the agent
moves, a few percent of a Blobworld frame, so a ratio of 1.05 is a strong dependence there. Bidirectional
teachers are scored on the whole video at one noise level t (their training loss), causal models in the TF
layout of their chunk pattern (clean context, noisy half at t; METHOD.md §3), both unweighted.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch

from ..flow import noisy
from ..masks import ChunkPattern, teacher_forcing
from ..objectives import tf as obj


def flow_error(net, b: obj.Batch, t: float, pattern: ChunkPattern | None) -> torch.Tensor:
    """Per-sample mean ‖v_θ − (ε − x0)‖² at time t (pattern None: the whole video noisy, bidirectional)."""
    v_fn = obj.net_fns(net)[0]
    B, T = b.x0.shape[0], b.x0.shape[2]
    tt = torch.full((B,), float(t), device=b.x0.device)
    x_t = noisy(b.x0, b.eps, tt)
    if pattern is None:
        v = v_fn(x_t, obj.per_frame(tt, T), b.ctx, actions=b.actions)
    else:
        v = obj.tf_velocity(v_fn, b.x0, torch.zeros(B, T, device=b.x0.device), x_t, tt, b.ctx,
                            teacher_forcing(pattern), actions=b.actions)
    return (v.float() - (b.eps - b.x0).float()).square().flatten(1).mean(1)


def permuted_actions(b: obj.Batch, generator: torch.Generator) -> obj.Batch:
    """The batch with its action sequences permuted across samples (a derangement where B > 1)."""
    n = b.x0.shape[0]
    perm = torch.randperm(n, generator=generator)
    while n > 1 and (perm == torch.arange(n)).any():
        perm = torch.randperm(n, generator=generator)
    a = b.actions
    return dataclasses.replace(b, actions=type(a)(a.features[perm.to(a.features.device)],
                                                  a.valid[perm.to(a.valid.device)]))


@torch.no_grad()
def action_sensitivity(net, batches: Iterable[obj.Batch], times: Sequence[float],
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
