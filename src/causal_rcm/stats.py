"""Bootstrap intervals: every reported number carries n and a 95 % interval (the project's rule).

``bootstrap_interval`` resamples units (videos) with replacement and recomputes the score on each resample;
with ``clusters`` (the videos of each prompt) it resamples whole clusters, the "cluster bootstrap" that keeps
videos of one prompt together, which is what varies between evaluations, and which keeps per-prompt
statistics (the entropies) free of the duplicates a within-prompt resample would add. Returns the 2.5 % and
97.5 % quantiles. Deterministic for a given ``seed``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def clusters_of(labels: Sequence) -> list[np.ndarray]:
    """Index arrays of the units sharing each label, in first-seen order."""
    groups: dict = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


def bootstrap_interval(score: Callable, n_units: int, clusters: list[np.ndarray] | None = None,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """{name: (value on all units, low, high)} for every score ``score(idx)`` returns; with ``clusters``
    the score is called ``score(idx, groups)``, ``groups`` numbering the cluster draw of each unit."""
    rng = np.random.default_rng([seed, 0xB007])
    full = score(np.arange(n_units)) if clusters is None else score(np.arange(n_units), None)
    draws: dict[str, list[float]] = {k: [] for k in full}
    for _ in range(n_boot):
        if clusters is None:
            res = score(rng.integers(0, n_units, n_units))
        else:
            pick = rng.integers(0, len(clusters), len(clusters))
            idx = np.concatenate([clusters[k] for k in pick])
            groups = np.concatenate([np.full(len(clusters[k]), j) for j, k in enumerate(pick)])
            res = score(idx, groups)
        for k, v in res.items():
            draws[k].append(v)
    q = (1 - level) / 2
    out = {}
    for k, v in full.items():
        a = np.asarray(draws[k], dtype=np.float64)
        a = a[np.isfinite(a)]
        lo, hi = (np.quantile(a, q), np.quantile(a, 1 - q)) if a.size else (np.nan, np.nan)
        out[k] = (float(v), float(lo), float(hi))
    return out


def jackknife_interval(stat: Callable[[np.ndarray], float], clusters: list[np.ndarray],
                       level: float = 0.95) -> tuple[float, float, float]:
    """(value on all units, low, high): a normal interval with the delete-one-cluster jackknife's standard
    error, se² = (g − 1)/g · Σ (θ₋ᵢ − mean θ₋)². For statistics that resampling with replacement biases (a
    Fréchet distance grows when duplicates shrink a set's spread, so its bootstrap lies above the estimate):
    leaving a cluster out duplicates nothing."""
    from scipy import stats as st

    full = float(stat(np.concatenate(clusters)))
    g = len(clusters)
    if g < 2:
        return full, float("nan"), float("nan")
    loo = np.array([stat(np.concatenate(clusters[:i] + clusters[i + 1:])) for i in range(g)], dtype=np.float64)
    se = float(np.sqrt((g - 1) / g * np.sum((loo - loo.mean()) ** 2)))
    h = float(st.norm.ppf(0.5 + level / 2)) * se
    return full, full - h, full + h


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of a mean over independent runs (seeds)."""
    from scipy import stats as st

    a = np.asarray(values, dtype=np.float64)
    m = float(a.mean())
    if a.size < 2:
        return m, float("nan"), float("nan")
    h = float(st.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return m, m - h, m + h
