"""Blobworld metrics (shared/specs/blobworld.md §4): the data row is near its ceiling, each corruption
hurts the metric meant to catch it, and ``evaluate`` agrees with a loop-by-loop transcription of the spec
(``reference_metrics``, written without the module's code: our stand-in for an independent judge)."""
import math
import statistics
from collections import Counter

import numpy as np
import pytest

from causal_rcm.worlds.blobworld import render, sample_worlds
from causal_rcm.worlds.blobworld_metrics import AGENT_METRICS, T2V_METRICS, evaluate

# ---------------------------------------------------------------------------------------------------------
# Reference: §4 read literally, one pixel, ball and frame at a time (interpretations as in metrics.py).
NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]
PALETTE = [(230, 40, 40), (40, 200, 60), (50, 80, 240), (230, 210, 30), (210, 50, 210), (30, 210, 220)]
WHITE = (255, 255, 255)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _frame(frame, colours, w):
    """Per colour [A, Σα̂x, Σα̂y], artifact and non-background pixel counts of one frame."""
    sums = [[0.0, 0.0, 0.0] for _ in colours]
    artifacts = foreground = 0
    for i in range(frame.shape[0]):
        for j in range(frame.shape[1]):
            p = [float(v) for v in frame[i, j]]
            if max(p) < 40:
                continue
            foreground += 1
            cosines = [_dot(p, c) / math.sqrt(_dot(p, p) * _dot(c, c)) for c in colours]
            k = max(range(len(colours)), key=lambda q: cosines[q])
            if cosines[k] < 0.97:
                artifacts += 1
                continue
            a = min(max(_dot(p, colours[k]) / _dot(colours[k], colours[k]), 0.0), 1.0)
            sums[k][0] += a
            sums[k][1] += a * (j + 0.5)
            sums[k][2] += a * (i + 0.5)
    return sums, artifacts, foreground


def _entropy(items, n_bins):
    counts = Counter(items)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) / math.log(n_bins)


def _mean_or_nan(values):
    return statistics.mean(values) if values else float("nan")


def reference_metrics(videos, prompts, actions=None):
    n, frames, h, w, _ = videos.shape
    colours = PALETTE + ([WHITE] if actions is not None else [])
    balls = [[k for k, name in enumerate(NAMES) if f"{name} ball" in p] for p in prompts]
    area, cen, art, fg = {}, {}, 0, 0
    for v in range(n):
        for t in range(frames):
            sums, a, f = _frame(videos[v, t], colours, w)
            art, fg = art + a, fg + f
            for k, (s, sx, sy) in enumerate(sums):
                area[v, t, k] = s
                if s > 0:
                    cen[v, t, k] = (sx / s, sy / s)
    present = lambda v, t, k: area[v, t, k] >= 6 * (w / 32) ** 2  # noqa: E731
    rad = lambda v, t, k: math.sqrt(area[v, t, k] / math.pi)  # noqa: E731

    def overlaps(v, t, k):
        return any(present(v, t, o) and math.dist(cen[v, t, k], cen[v, t, o]) <= rad(v, t, k) + rad(v, t, o)
                   for o in range(len(colours)) if o != k)

    def near_wall(v, t, k):
        x, y = cen[v, t, k]
        return min(x, w - x, y, h - y) <= rad(v, t, k) + 1.5

    out = {"artifact_rate": art / fg if fg else float("nan")}
    out["prompt_accuracy"] = statistics.mean(
        {k for k in range(6) if present(v, t, k)} == set(balls[v]) for v in range(n) for t in range(frames))
    out["persistence"] = _mean_or_nan([present(v, t, k) for v in range(n) for k in balls[v] for t in range(frames)])
    ratios = []
    for v in range(n):
        for k in balls[v]:
            rs = [rad(v, t, k) for t in range(frames) if present(v, t, k) and not overlaps(v, t, k)]
            if rs:
                ratios.append(statistics.pstdev(rs) / statistics.mean(rs))
    out["size_stability"] = _mean_or_nan(ratios)
    errors = []
    for v in range(n):
        for k in balls[v]:
            for t in range(1, frames - 1):
                if all(present(v, s, k) and not near_wall(v, s, k) and not overlaps(v, s, k) for s in (t - 1, t, t + 1)):
                    (x0, y0), (x1, y1), (x2, y2) = cen[v, t - 1, k], cen[v, t, k], cen[v, t + 1, k]
                    errors.append(math.hypot(x2 - 2 * x1 + x0, y2 - 2 * y1 + y0))
    out["motion_error"] = statistics.median(errors) if errors else float("nan")
    cells, angles = {}, {}
    for v in range(n):
        cells.setdefault(prompts[v], [])
        angles.setdefault(prompts[v], [])
        for k in balls[v]:
            if present(v, 0, k):
                x, y = cen[v, 0, k]
                cells[prompts[v]].append((min(int(y // (h / 4)), 3), min(int(x // (w / 4)), 3)))
            if frames >= 4 and all(present(v, t, k) and not near_wall(v, t, k) for t in range(4)):
                dx, dy = cen[v, 3, k][0] - cen[v, 0, k][0], cen[v, 3, k][1] - cen[v, 0, k][1]
                angles[prompts[v]].append(min(int((math.atan2(dy, dx) % (2 * math.pi)) // (math.pi / 4)), 7))
    counts = Counter(prompts)
    out["position_entropy"] = _mean_or_nan([_entropy(c, 16) for p, c in cells.items() if counts[p] >= 16 and c])
    out["direction_entropy"] = _mean_or_nan([_entropy(a, 8) for p, a in angles.items() if counts[p] >= 16 and a])
    if actions is not None:
        hits, still, along = [], [], []
        for v in range(n):
            for t in range(frames - 1):
                a = int(actions[v, t])
                both = present(v, t, 6) and present(v, t + 1, 6)
                if a == 0:
                    moved = math.dist(cen[v, t, 6], cen[v, t + 1, 6]) if both else math.inf
                    still.append(moved < 0.75)
                    continue
                if not both:
                    continue
                (x, y), r = cen[v, t, 6], rad(v, t, 6)
                if {1: y, 2: h - y, 3: x, 4: w - x}[a] - r <= 2.5:
                    continue
                dx, dy = cen[v, t + 1, 6][0] - x, cen[v, t + 1, 6][1] - y
                axis_ok = {1: -dy > abs(dx), 2: dy > abs(dx), 3: -dx > abs(dy), 4: dx > abs(dy)}[a]
                hits.append(axis_ok and 1.0 <= math.hypot(dx, dy) <= 3.0)
                along.append({1: -dy, 2: dy, 3: -dx, 4: dx}[a])
        out["action_accuracy"] = _mean_or_nan(hits)
        out["agent_still"] = _mean_or_nan(still)
        out["action_drift"] = _mean_or_nan(along)
    return out


# ---------------------------------------------------------------------------------------------------------
TWO = "a red ball and a blue ball"
FEW_PROMPTS = [TWO, "a green ball", "a yellow ball, a magenta ball and a cyan ball", "a cyan ball"]


def assert_metrics_close(got, expected, tol=1e-6):
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(got[key])) or abs(got[key] - value) <= tol, (key, got[key], value)


def corrupt(d, seed=0):
    """Noise on some videos, a ball erased on others, frames shuffled on others (same prompts)."""
    rng = np.random.default_rng(seed)
    v = d["videos"].copy()
    n = len(v)
    noisy = np.clip(v[: n // 3] + rng.normal(0, 25, v[: n // 3].shape), 0, 255)
    v[: n // 3] = noisy.astype(np.uint8)
    colours = d["colours"].copy()
    colours[:, 0] = -1  # slot 0 holds a ball whenever the prompt names one
    v[n // 3: 2 * n // 3] = render(d["centres"], d["radii"], colours, v.shape[2])[n // 3: 2 * n // 3]
    v[2 * n // 3:] = v[2 * n // 3:, rng.permutation(v.shape[1])]
    return v


@pytest.fixture(scope="module")
def small_t2v():
    return sample_worlds(36, 5, frames=8, prompts=[TWO] * 16 + ["a green ball"] * 16 + FEW_PROMPTS)


@pytest.fixture(scope="module")
def small_agent():
    return sample_worlds(20, 6, frames=8, variant="agent", prompts=["a red ball"] * 16 + ["no ball"] * 4)


def test_evaluate_agrees_with_reference_on_rendered_data(small_t2v, small_agent):
    got = evaluate(small_t2v["videos"], small_t2v["prompts"])
    assert list(got) == list(T2V_METRICS) + ["n_samples"] and got["n_samples"] == 36
    assert_metrics_close(got, reference_metrics(small_t2v["videos"], small_t2v["prompts"]))
    a = small_agent
    got = evaluate(a["videos"], a["prompts"], a["actions"])
    assert list(got) == list(AGENT_METRICS) + ["n_samples"]
    assert_metrics_close(got, reference_metrics(a["videos"], a["prompts"], a["actions"]))


def test_evaluate_agrees_with_reference_on_corrupted_data(small_t2v, small_agent):
    v = corrupt(small_t2v)
    prompts = small_t2v["prompts"][:-2] + ["a blue ball", "no ball"]
    assert_metrics_close(evaluate(v, prompts), reference_metrics(v, prompts))
    a = small_agent
    v = corrupt(a)
    actions = np.random.default_rng(1).permutation(a["actions"])
    expected = reference_metrics(v, a["prompts"], actions)
    assert_metrics_close(evaluate(v, a["prompts"], actions), expected)
    assert 0 < expected["artifact_rate"] and expected["agent_still"] < 1 and expected["action_accuracy"] < 1


@pytest.fixture(scope="module")
def fresh_t2v():
    return sample_worlds(192, 0, prompts=[p for p in FEW_PROMPTS for _ in range(48)])


@pytest.fixture(scope="module")
def fresh_agent():
    return sample_worlds(128, 0, variant="agent", prompts=["a red ball"] * 64 + ["a green ball and a blue ball"] * 64)


def test_fresh_data_is_near_the_ceiling(fresh_t2v, fresh_agent):
    m = evaluate(fresh_t2v["videos"], fresh_t2v["prompts"])
    assert m["artifact_rate"] < 0.02 and m["prompt_accuracy"] > 0.95 and m["persistence"] > 0.97
    assert m["motion_error"] < 0.1 and m["size_stability"] < 0.02
    assert m["position_entropy"] > 0.8 and m["direction_entropy"] > 0.8
    a = evaluate(fresh_agent["videos"], fresh_agent["prompts"], fresh_agent["actions"])
    assert a["action_accuracy"] > 0.98 and a["agent_still"] > 0.98 and a["persistence"] > 0.97


def test_each_corruption_hurts_its_metric(fresh_t2v):
    d, rng = fresh_t2v, np.random.default_rng(0)
    clean = evaluate(d["videos"], d["prompts"])
    noisy = np.clip(d["videos"] + rng.normal(0, 30, d["videos"].shape), 0, 255).astype(np.uint8)
    assert evaluate(noisy, d["prompts"])["artifact_rate"] > clean["artifact_rate"] + 0.1
    colours = d["colours"].copy()
    colours[:, 0] = -1
    erased = evaluate(render(d["centres"], d["radii"], colours, 32), d["prompts"])
    assert erased["persistence"] < clean["persistence"] - 0.3 and erased["prompt_accuracy"] < 0.05
    shuffled = evaluate(d["videos"][:, rng.permutation(21)], d["prompts"])
    assert shuffled["motion_error"] > clean["motion_error"] + 1.0
    wrong = evaluate(d["videos"], d["prompts"][48:] + d["prompts"][:48])
    assert wrong["prompt_accuracy"] < 0.05 and wrong["persistence"] < clean["persistence"] - 0.3


def test_entropies_see_position_and_direction_collapse():
    # 32 red balls (r = 4) kept > r̂ + 1.5 from the walls in frames 0–3. First all start at one point and
    # move in eight directions (position entropy 0, direction 1); then they start in all 16 grid cells
    # and move one way (position 1, direction 0).
    theta = np.arange(32) * np.pi / 4 + 0.3
    fan = np.stack([np.cos(theta), np.sin(theta)], -1)
    cells = np.stack(np.meshgrid([6.5, 11.0, 20.0, 24.5], [6.5, 11.0, 20.0, 24.5]), -1).reshape(16, 2)
    for origin, velocity, expected in [(np.full((32, 2), 16.0), fan, (0.0, 1.0)),
                                       (np.tile(cells, (2, 1)), np.tile([[0.5, 0.1]], (32, 1)), (1.0, 0.0))]:
        centres = (origin[:, None] + np.arange(4)[None, :, None] * velocity[:, None])[:, :, None]
        videos = render(centres, np.full((32, 1), 4.0), np.zeros((32, 1), np.int64), 32)
        m = evaluate(videos, ["a red ball"] * 32)
        assert m["position_entropy"] == pytest.approx(expected[0], abs=1e-9)
        assert m["direction_entropy"] == pytest.approx(expected[1], abs=1e-9)


def test_agent_metrics_catch_wrong_actions_and_a_frozen_agent(fresh_agent):
    d = fresh_agent
    shifted = evaluate(d["videos"], d["prompts"], (d["actions"] + 1) % 5)
    assert shifted["action_accuracy"] < 0.3 and shifted["agent_still"] < 0.3
    frozen = d["videos"][:, :1].repeat(21, axis=1)
    m = evaluate(frozen, d["prompts"], d["actions"])
    assert m["action_accuracy"] == 0.0 and m["agent_still"] == 1.0


def test_undefined_metrics_are_nan_not_perfect():
    d = sample_worlds(10, 0, frames=5)
    m = evaluate(d["videos"], d["prompts"])  # no prompt reaches 16 samples
    assert math.isnan(m["position_entropy"]) and math.isnan(m["direction_entropy"])
    black = evaluate(np.zeros_like(d["videos"]), d["prompts"])
    assert math.isnan(black["artifact_rate"]) and black["persistence"] == 0 and black["prompt_accuracy"] == 0
    assert math.isnan(black["size_stability"]) and math.isnan(black["motion_error"])
    a = sample_worlds(4, 0, frames=5, variant="agent", actions=np.zeros((4, 4), np.int64))
    m = evaluate(a["videos"], a["prompts"], a["actions"])
    assert math.isnan(m["action_accuracy"]) and m["agent_still"] == 1.0


def test_evaluate_checks_its_inputs():
    d = sample_worlds(2, 0, frames=4, variant="agent")
    with pytest.raises(ValueError, match="needs actions"):
        evaluate(d["videos"], d["prompts"], variant="agent")
    with pytest.raises(ValueError, match="takes no actions"):
        evaluate(d["videos"], d["prompts"], d["actions"], variant="t2v")
    with pytest.raises(ValueError, match="valid prompts"):
        evaluate(d["videos"], ["a purple ball", "no ball"], d["actions"])
    with pytest.raises(ValueError, match="shape"):
        evaluate(d["videos"], d["prompts"], d["actions"][:, :-1])


def test_blob_fd_separates_frozen_and_fast_videos_from_rendered_ones():
    from causal_rcm.worlds.blobworld_fd import frechet, video_features
    from causal_rcm.worlds.blobworld_metrics import frame_stats

    prompts = ["a red ball", "a green ball and a blue ball"] * 32
    a = sample_worlds(64, 1, prompts=prompts)["videos"]
    b = sample_worlds(64, 2, prompts=prompts)["videos"]
    fa, fb = video_features(frame_stats(a, 6)), video_features(frame_stats(b, 6))
    assert frechet(fa, fa) == pytest.approx(0.0, abs=1e-6)
    same = frechet(fa, fb)
    frozen = a.copy()
    frozen[:, 1:] = frozen[:, :1]
    fast = np.concatenate([a[:, ::2], a[:, ::2]], axis=1)[:, :a.shape[1]]  # twice the speed, then a jump
    assert frechet(video_features(frame_stats(frozen, 6)), fb) > 5 * same
    assert frechet(video_features(frame_stats(fast, 6)), fb) > 3 * same


def test_blob_fd_interval_holds_its_own_estimate():
    """Rendered videos against the rendered reference: the interval brackets the point estimate (a bootstrap
    put it below the whole interval: duplicates inflate a Fréchet distance)."""
    from causal_rcm.worlds.blobworld_metrics import evaluate_intervals

    d = sample_worlds(96, 3)
    ref = sample_worlds(96, 4, prompts=list(d["prompts"]))["videos"]
    value, lo, hi = evaluate_intervals(d["videos"], d["prompts"], n_boot=200, reference=ref)["blob_fd"]
    assert lo <= value <= hi, (value, lo, hi)
    with pytest.raises(ValueError, match="one rendered video per generated one"):
        evaluate(d["videos"], d["prompts"], reference=ref[:10])


def test_jackknife_interval_of_a_mean_is_the_textbook_one():
    """For the mean of single-unit clusters the delete-one jackknife's standard error is s / sqrt(n) exactly."""
    from scipy import stats as st

    from causal_rcm.stats import jackknife_interval

    x = np.random.default_rng(0).normal(3.0, 2.0, 50)
    value, lo, hi = jackknife_interval(lambda idx: float(x[idx].mean()), [np.array([i]) for i in range(50)])
    h = st.norm.ppf(0.975) * x.std(ddof=1) / np.sqrt(50)
    assert value == pytest.approx(x.mean()) and (lo, hi) == pytest.approx((x.mean() - h, x.mean() + h))


def test_frechet_matches_closed_form_for_independent_features():
    """Diagonal covariances: FD = |μa − μb|² + Σ (σa − σb)², computed from the samples' own moments."""
    from causal_rcm.worlds.blobworld_fd import frechet

    rng = np.random.default_rng(1)
    a = rng.normal(size=(4000, 5)) * [1, 2, 3, 0.5, 1] + [0, 1, 0, 0, 2]
    b = rng.normal(size=(3000, 5)) * [2, 2, 1, 0.5, 1]
    # decorrelate the samples exactly: rotate each onto its own principal axes
    a = (a - a.mean(0)) @ np.linalg.eigh(np.cov(a, rowvar=False))[1] + a.mean(0)
    b = (b - b.mean(0)) @ np.linalg.eigh(np.cov(b, rowvar=False))[1] + b.mean(0)
    va, vb = np.sort(np.var(a, 0, ddof=1)), np.sort(np.var(b, 0, ddof=1))
    a = a[:, np.argsort(np.var(a, 0, ddof=1))]
    b = b[:, np.argsort(np.var(b, 0, ddof=1))]
    want = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum((np.sqrt(va + 1e-6) - np.sqrt(vb + 1e-6)) ** 2)
    assert frechet(a, b) == pytest.approx(want, rel=1e-6)


def test_action_drift_is_the_step_for_the_data_and_zero_for_other_videos_actions(fresh_agent):
    """The diagnostic beside the spec: rendered agent videos drift along their own actions by about the step
    (2 px at 32×32, less where a wall stops the agent), and by about 0 along another video's actions."""
    a = fresh_agent
    own = evaluate(a["videos"], a["prompts"], a["actions"])["action_drift"]
    other = evaluate(a["videos"], a["prompts"], np.roll(a["actions"], 1, axis=0))["action_drift"]
    assert 1.6 < own <= 2.05 and abs(other) < 0.3
