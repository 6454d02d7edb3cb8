"""Claim 1's reading (docs/results/claims.md): how many iterations each arm of a comparison needs to reach a
target value of a lower-is-better metric, and the speed-up between two arms with a bootstrap interval over
seeds.

The rule, fixed before the runs: D* = the slow arm's mean final value; per seed, N = the first evaluated
iteration at which the metric is ≤ D*; speed-up = mean N of the slow arm / mean N of the fast arm, with a 95 %
percentile-bootstrap interval that resamples the seeds of each arm independently. A slow-arm seed that ends
above D* counts its last evaluated iteration (a lower bound: conservative for the claim); a fast-arm seed that
never reaches D* counts as never (resamples that hold it give a speed-up of 0). Verdict: supported if the
interval's lower end is ≥ ``supported_at`` (5), refuted if its upper end is < ``refuted_below`` (2),
inconclusive otherwise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

Curve = list[tuple[int, float]]


def read_curve(path: str | Path, key: str) -> Curve:
    """(step, value) of ``key`` over a run's metrics.jsonl records that hold it, sorted by step; a step
    logged twice (a resumed run) keeps its last value."""
    points: dict[int, float] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if key in rec and "step" in rec:
            points[int(rec["step"])] = float(rec[key])
    if not points:
        raise ValueError(f"{path} holds no records of {key!r}")
    return sorted(points.items())


def first_reach(curve: Curve, target: float) -> float:
    """The first evaluated step whose value is ≤ target; ``inf`` if none is."""
    return next((float(step) for step, value in curve if value <= target), math.inf)


def speedup(slow: list[Curve], fast: list[Curve], n_boot: int = 10_000, seed: int = 0,
            supported_at: float = 5.0, refuted_below: float = 2.0) -> dict:
    """The rule of the module docstring on two arms of seeds (each a curve over the same evaluations)."""
    if len(slow) < 2 or len(fast) < 2:
        raise ValueError(f"a bootstrap over seeds needs at least 2 seeds per arm, got {len(slow)} and {len(fast)}")
    target = float(np.mean([c[-1][1] for c in slow]))
    n_slow = np.array([min(first_reach(c, target), float(c[-1][0])) for c in slow])
    n_fast = np.array([first_reach(c, target) for c in fast])

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return float(a.mean() / b.mean()) if np.isfinite(b).all() else 0.0

    rng = np.random.default_rng(seed)
    boots = np.array([ratio(rng.choice(n_slow, len(n_slow)), rng.choice(n_fast, len(n_fast)))
                      for _ in range(n_boot)])
    point = ratio(n_slow, n_fast)
    lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    verdict = "supported" if lo >= supported_at else "refuted" if hi < refuted_below else "inconclusive"
    return dict(target=target, n_slow=n_slow.tolist(), n_fast=n_fast.tolist(), speedup=point, low=lo, high=hi,
                verdict=verdict, seeds=(len(slow), len(fast)), n_boot=n_boot)
