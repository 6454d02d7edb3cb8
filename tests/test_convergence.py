"""Claim 1's reading: iterations to reach the slow arm's final value, the speed-up and its verdict."""
import json
import math

import pytest

from causal_rcm.eval.convergence import first_reach, read_curve, speedup

STEPS = [25, 50, 75, 100, 150, 200, 300, 400, 600, 800]


def curve(scale: float, floor: float = 1.0):
    """A decreasing metric: floor + 10 / (1 + step / scale)."""
    return [(s, floor + 10 / (1 + s / scale)) for s in STEPS]


def test_read_curve_keeps_the_last_value_of_a_step_and_sorts(tmp_path):
    p = tmp_path / "metrics.jsonl"
    recs = [{"step": 50, "eval/m": 2.0}, {"step": 25, "loss": 1.0}, {"step": 25, "eval/m": 3.0},
            {"step": 50, "eval/m": 1.5}]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert read_curve(p, "eval/m") == [(25, 3.0), (50, 1.5)]
    with pytest.raises(ValueError, match="no records"):
        read_curve(p, "eval/other")


def test_first_reach():
    c = [(25, 3.0), (50, 2.0), (75, 2.5), (100, 1.0)]
    assert first_reach(c, 2.0) == 50
    assert first_reach(c, 0.5) == math.inf


def test_a_tenfold_faster_arm_is_supported_and_the_point_is_the_ratio_of_mean_iterations():
    slow = [curve(400 * f) for f in (0.9, 1.0, 1.1)]
    fast = [curve(40 * f) for f in (0.9, 1.0, 1.1)]
    r = speedup(slow, fast, n_boot=2000)
    target = sum(c[-1][1] for c in slow) / 3
    n_slow = [min(first_reach(c, target), 800) for c in slow]
    n_fast = [first_reach(c, target) for c in fast]
    assert r["target"] == pytest.approx(target)
    assert r["speedup"] == pytest.approx(sum(n_slow) / sum(n_fast))
    assert r["low"] <= r["speedup"] <= r["high"]
    assert r["speedup"] >= 5 and r["verdict"] == "supported"


def test_equal_arms_are_refuted_and_a_fast_seed_that_never_arrives_counts_against():
    same = [curve(400 * f) for f in (0.9, 1.0, 1.1, 1.2)]
    r = speedup(same, [curve(400 * f) for f in (0.95, 1.05, 1.15)], n_boot=2000)
    assert r["high"] < 2 and r["verdict"] == "refuted"
    stuck = [curve(40), curve(40), [(s, 99.0) for s in STEPS]]
    r = speedup(same, stuck, n_boot=2000)
    assert r["speedup"] == 0.0 and r["n_fast"][2] == math.inf


def test_seed_to_seed_spread_makes_it_inconclusive():
    slow = [curve(400), curve(400)]
    fast = [curve(40), curve(400), curve(40), curve(400)]
    r = speedup(slow, fast, n_boot=4000)
    assert r["verdict"] == "inconclusive" and r["low"] < 5 <= r["high"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        speedup([curve(400)], fast)
