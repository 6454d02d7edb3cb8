"""Blobworld metrics on uint8 videos (shared/specs/blobworld.md §4), vectorised with numpy.

``frame_stats`` classifies every pixel and reduces each frame to per-colour areas, centroids and radii;
each metric is then a small function of those statistics, the prompts and (agent variant) the actions.

Readings of the spec where it leaves a detail open (each the most literal one we found):

- Colours: the palette in the T2V variant, palette plus white (id 6) in the agent variant. Pixel centres
  are (j + 0.5, i + 0.5); a pixel belongs to the colour of largest cosine when that cosine is ≥ 0.97.
- Pooling: every ratio, mean and median pools all videos of the set (``artifact_rate`` is total artifact
  pixels over total non-background pixels; ``prompt_accuracy`` and ``persistence`` count frames and
  (ball, frame) pairs of all videos; ``size_stability`` averages over all (video, ball) pairs).
- Balls: the balls a metric measures are the prompted palette colours of each video; the agent is not a
  prompted ball (it is measured by ``action_accuracy`` and ``agent_still``). "Another present ball" in the
  overlap rule is any other colour present in that frame (agent and unprompted colours included).
  Overlap: centroid distance ≤ r̂₁ + r̂₂; near a wall: centroid distance to the nearest wall ≤ r̂ + 1.5.
  ``prompt_accuracy`` compares palette colours only: the agent's white is never named by a prompt.
- ``size_stability``: population std (ddof = 0); a ball with no qualifying frame is left out.
- ``motion_error``: the three frames t − 1, t, t + 1 must each show the ball present, not near a wall and
  not overlapping another ball.
- ``position_entropy``: prompts with ≥ 16 videos; the frame-0 centroids of all prompted balls present in
  frame 0 are pooled into one 4×4 histogram (cells of W/4 px); averaged over prompts, unweighted.
- ``direction_entropy``: same prompts and pooling; a ball counts when present in frames 0–3 and not
  within r̂ + 1.5 of a wall in any of them — every bounce in a step t → t + 1 leaves the centre within
  r + 1 of the wall at t or t + 1, so this skips all balls that bounce before frame 3. Angle of
  c₃ − c₀ (atan2, image axes) in 8 bins of π/4 starting at 0.
- ``action_accuracy``: "more than 2.5 px from the wall it moves toward" is the gap between the agent's
  edge and that wall at frame t: (centroid distance to the wall) − r̂ > 2.5; the dominant axis is the one
  of strictly larger |displacement| (an exact tie matches neither).
- ``agent_still``: every transition with a_t = 0 counts; one where the agent is absent at t or t + 1 has
  no displacement and counts as not still.
- ``action_drift`` is not in the spec: a diagnostic of the agent variant (``action_drift`` below), reported
  after the spec's metrics.
- Pixel distances (1.5, 2.5, [1, 3], 0.75) are not marked * in the spec and are not scaled with W; the
  area threshold 6·(W/32)² is.
- Empty sets: a metric over an empty set (no foreground pixel, no prompted ball, no qualifying frame,
  no prompt with ≥ 16 videos, no transition of that kind) is NaN on purpose — undefined, not perfect.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..stats import bootstrap_interval, clusters_of, jackknife_interval
from .blobworld import AGENT, ACTION_DIRECTIONS, COLOURS, check_actions, prompt_colours, sample_worlds
from .blobworld_fd import frechet, video_features

BACKGROUND_MAX = 40
MIN_COSINE = 0.97
MIN_AREA = 6.0  # at W = 32; scales with (W / 32)²
WALL_MARGIN = 1.5
MIN_PROMPT_SAMPLES = 16
AGENT_WALL_GAP = 2.5
STEP_RANGE = (1.0, 3.0)
STILL_MAX = 0.75
T2V_METRICS = ("artifact_rate", "prompt_accuracy", "persistence", "size_stability", "motion_error",
               "position_entropy", "direction_entropy")
AGENT_METRICS = T2V_METRICS + ("action_accuracy", "agent_still", "action_drift")  # the last: a diagnostic
HIGHER_IS_BETTER = {
    "prompt_accuracy": True, "persistence": True, "motion_error": False, "artifact_rate": False,
    "size_stability": False, "position_entropy": True, "direction_entropy": True,
    "action_accuracy": True, "agent_still": True, "action_drift": True, "blob_fd": False,
}


@dataclass(frozen=True)
class FrameStats:
    """Per-colour statistics of every frame (§4); C colours (6, or 7 with the agent's white)."""

    area: np.ndarray  # [N, T, C]  A = Σ α̂ over the colour's pixels
    centroid: np.ndarray  # [N, T, C, 2]  α̂-weighted mean pixel centre (x, y); NaN where A = 0
    present: np.ndarray  # [N, T, C]  A ≥ 6·(W/32)²
    radius: np.ndarray  # [N, T, C]  r̂ = sqrt(A / π)
    artifacts: np.ndarray  # [N] artifact pixels of each video, all frames
    foreground: np.ndarray  # [N] non-background pixels of each video, all frames
    size: tuple[int, int]  # (H, W)
    isolated: np.ndarray | None = None  # [N, T, C] ``isolated`` and ``near_wall``, computed once per video
    near_wall: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "FrameStats":
        """The statistics of videos ``idx`` (a bootstrap resample)."""
        return FrameStats(self.area[idx], self.centroid[idx], self.present[idx], self.radius[idx],
                          self.artifacts[idx], self.foreground[idx], self.size, isolated(self)[idx],
                          near_wall(self)[idx])


def classify(pixels: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel classes of §4: label −1 background (max < 40), −2 artifact (best cosine < 0.97), else the
    colour of largest cosine; α̂ = clip(p·c / c·c, 0, 1) for that colour (0 elsewhere).
    pixels [..., 3] uint8, colours [C, 3] → (label [...] int64, alpha [...] float64)."""
    p = pixels.astype(np.float64)
    c = colours.astype(np.float64)
    dot = p @ c.T  # [..., C]
    norm = np.sqrt(np.sum(p * p, axis=-1, keepdims=True)) * np.linalg.norm(c, axis=1)
    cosine = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
    best = np.argmax(cosine, axis=-1)
    best_cos = np.take_along_axis(cosine, best[..., None], axis=-1)[..., 0]
    background = p.max(axis=-1) < BACKGROUND_MAX
    label = np.where(background, -1, np.where(best_cos >= MIN_COSINE, best, -2))
    best_dot = np.take_along_axis(dot, best[..., None], axis=-1)[..., 0]
    alpha = np.where(label >= 0, np.clip(best_dot / np.sum(c * c, axis=1)[best], 0.0, 1.0), 0.0)
    return label, alpha


def frame_stats(videos: np.ndarray, n_colours: int, batch: int = 32) -> FrameStats:
    """Areas, centroids, presence and radii of the first ``n_colours`` colours in every frame (§4);
    videos uint8 [N, T, H, W, 3]."""
    n, frames, h, w, _ = videos.shape
    colours = COLOURS[:n_colours]
    xy = np.stack(np.broadcast_arrays(np.arange(w)[None, :] + 0.5, np.arange(h)[:, None] + 0.5), axis=-1)
    sums = np.zeros((n, frames, n_colours, 3))  # Σ α̂, Σ α̂·x, Σ α̂·y
    artifacts, foreground = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for s in range(0, n, batch):
        e = min(s + batch, n)
        label, alpha = classify(videos[s:e], colours)
        artifacts[s:e] = np.sum(label == -2, axis=(1, 2, 3))
        foreground[s:e] = np.sum(label != -1, axis=(1, 2, 3))
        owned = label >= 0
        # One bin per (video, frame, colour): bincount sums each class's pixels in a single pass.
        frame_id = np.arange((e - s) * frames).reshape(e - s, frames, 1, 1)
        bins = (frame_id * n_colours + label)[owned]
        weights = alpha[owned]
        xy_owned = np.broadcast_to(xy, (*label.shape, 2))[owned]
        for q, wq in enumerate((weights, weights * xy_owned[:, 0], weights * xy_owned[:, 1])):
            sums[s:e, ..., q] = np.bincount(bins, wq, minlength=(e - s) * frames * n_colours).reshape(
                e - s, frames, n_colours)
    area = sums[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(area[..., None] > 0, sums[..., 1:] / area[..., None], np.nan)
    present = area >= MIN_AREA * (w / 32) ** 2
    st = FrameStats(area, centroid, present, np.sqrt(area / np.pi), artifacts, foreground, (h, w))
    return FrameStats(*[getattr(st, f) for f in ("area", "centroid", "present", "radius", "artifacts",
                                                 "foreground", "size")], isolated(st), near_wall(st))


def isolated(st: FrameStats) -> np.ndarray:
    """[N, T, C]: the colour is present and its centroid is farther than r̂₁ + r̂₂ from every other present
    colour's centroid (the overlap rule of ``size_stability`` and ``motion_error``)."""
    if st.isolated is not None:
        return st.isolated
    gap = np.linalg.norm(st.centroid[:, :, :, None] - st.centroid[:, :, None, :], axis=-1)
    clear = gap > st.radius[..., :, None] + st.radius[..., None, :]
    others = st.present[..., None, :] & ~np.eye(st.present.shape[-1], dtype=bool)
    return st.present & np.all(clear | ~others, axis=-1)


def near_wall(st: FrameStats) -> np.ndarray:
    """[N, T, C]: the centroid lies within r̂ + 1.5 of a wall (False where the colour has no centroid)."""
    if st.near_wall is not None:
        return st.near_wall
    h, w = st.size
    x, y = st.centroid[..., 0], st.centroid[..., 1]
    wall = np.minimum(np.minimum(x, w - x), np.minimum(y, h - y))
    return wall <= st.radius + WALL_MARGIN


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def artifact_rate(st: FrameStats) -> float:
    """Artifact pixels / non-background pixels over all frames."""
    fg = int(st.foreground.sum())
    return int(st.artifacts.sum()) / fg if fg else float("nan")


def prompt_accuracy(st: FrameStats, prompted: np.ndarray) -> float:
    """Fraction of frames whose set of present palette colours equals the prompted set; prompted [N, C]."""
    palette = slice(0, AGENT)
    return _mean(np.all(st.present[..., palette] == prompted[:, None, palette], axis=-1))


def persistence(st: FrameStats, prompted: np.ndarray) -> float:
    """Fraction of (prompted ball, frame) pairs where that colour is present."""
    return _mean(st.present[np.broadcast_to(prompted[:, None], st.present.shape)])


def size_stability(st: FrameStats, prompted: np.ndarray) -> float:
    """Mean over balls of std(r̂)/mean(r̂) over the frames where the ball is present and not overlapping."""
    valid = isolated(st) & prompted[:, None]
    count = valid.sum(axis=1)  # [N, C]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, st.radius, 0.0).sum(axis=1) / count
        var = np.where(valid, (st.radius - mean[:, None]) ** 2, 0.0).sum(axis=1) / count
    return _mean((np.sqrt(var) / mean)[count > 0])


def motion_error(st: FrameStats, prompted: np.ndarray) -> float:
    """Median over balls and t = 1..T−2 of ‖c_{t+1} − 2c_t + c_{t−1}‖ over triples where the ball is
    present, clear of the walls and of other balls in all three frames."""
    good = isolated(st) & ~near_wall(st) & prompted[:, None]
    ok = good[:, :-2] & good[:, 1:-1] & good[:, 2:]
    c = st.centroid
    accel = np.linalg.norm(c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2], axis=-1)
    return float(np.median(accel[ok])) if ok.any() else float("nan")


def _normalised_entropy(bins: np.ndarray, n_bins: int) -> float:
    p = np.bincount(bins, minlength=n_bins) / bins.size
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)) / np.log(n_bins))


def _entropy_by_prompt(prompts: Sequence[str], counted: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """Mean over prompts with ≥ 16 videos of the normalised entropy of ``bins`` [N, C] where ``counted``."""
    prompts = np.asarray(prompts)
    values = []
    for prompt in np.unique(prompts):
        rows = prompts == prompt
        if rows.sum() >= MIN_PROMPT_SAMPLES and counted[rows].any():
            values.append(_normalised_entropy(bins[rows][counted[rows]], n_bins))
    return _mean(np.array(values))


def position_entropy(st: FrameStats, prompted: np.ndarray, prompts: Sequence[str]) -> float:
    """Entropy of the frame-0 centroids on a 4×4 grid / ln 16, per prompt with ≥ 16 videos, averaged."""
    h, w = st.size
    c0 = np.nan_to_num(st.centroid[:, 0])
    col = np.clip(np.floor(c0[..., 0] / (w / 4)), 0, 3).astype(np.int64)
    row = np.clip(np.floor(c0[..., 1] / (h / 4)), 0, 3).astype(np.int64)
    return _entropy_by_prompt(prompts, st.present[:, 0] & prompted, row * 4 + col, 16)


def direction_entropy(st: FrameStats, prompted: np.ndarray, prompts: Sequence[str]) -> float:
    """Entropy of the angle of c₃ − c₀ in 8 bins / ln 8, per prompt with ≥ 16 videos, averaged; balls
    that may bounce before frame 3 (near a wall in frames 0–3) are skipped."""
    if st.centroid.shape[1] < 4:
        return float("nan")
    counted = np.all(st.present[:, :4] & ~near_wall(st)[:, :4], axis=1) & prompted
    d = np.nan_to_num(st.centroid[:, 3] - st.centroid[:, 0])
    angle = np.mod(np.arctan2(d[..., 1], d[..., 0]), 2 * np.pi)
    bins = np.minimum(np.floor(angle / (np.pi / 4)), 7).astype(np.int64)
    return _entropy_by_prompt(prompts, counted, bins, 8)


def _agent_moves(st: FrameStats) -> tuple[np.ndarray, np.ndarray]:
    """Agent displacement c_{t+1} − c_t [N, T−1, 2] and presence at both ends [N, T−1]."""
    c, present = st.centroid[:, :, AGENT], st.present[:, :, AGENT]
    return c[:, 1:] - c[:, :-1], present[:, 1:] & present[:, :-1]


def _counted_moves(st: FrameStats, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(agent displacement [N, T−1, 2], the moves a_t ≠ 0 with the agent present at t, t + 1 and its edge
    > 2.5 px from the wall it moves toward [N, T−1])."""
    h, w = st.size
    move, both = _agent_moves(st)
    c, r = st.centroid[:, :-1, AGENT], st.radius[:, :-1, AGENT]
    # Gap to the wall ahead for each action (none, up, down, left, right), minus the agent's radius.
    ahead = np.stack([np.full_like(r, np.inf), c[..., 1], h - c[..., 1], c[..., 0], w - c[..., 0]], axis=-1)
    gap = np.take_along_axis(ahead, actions[..., None], axis=-1)[..., 0] - r
    return move, (actions != 0) & both & (gap > AGENT_WALL_GAP)


def action_accuracy(st: FrameStats, actions: np.ndarray) -> float:
    """Over moves a_t ≠ 0 with the agent present at t, t + 1 and its edge > 2.5 px from the wall it moves
    toward: fraction whose dominant axis and sign match a_t and whose length is in [1, 3] px."""
    move, counted = _counted_moves(st, actions)
    direction = ACTION_DIRECTIONS[actions]  # [N, T−1, 2]
    along = np.sum(move * direction, axis=-1)
    across = np.sum(np.abs(move * direction[..., ::-1]), axis=-1)
    length = np.linalg.norm(move, axis=-1)
    right = (along > across) & (length >= STEP_RANGE[0]) & (length <= STEP_RANGE[1])
    return _mean(right[counted])


def action_drift(st: FrameStats, actions: np.ndarray) -> float:
    """A diagnostic beside the spec's metrics: over the moves ``action_accuracy`` counts, the mean displacement
    along the action's direction (px). The data score the agent's step (2·W/32 px); a model that ignores its
    actions scores about 0 whatever it draws, so a partial dependence shows where the [1, 3] px window of
    ``action_accuracy`` (unscaled at W < 32) or an agent drawn at the wrong size hides it."""
    move, counted = _counted_moves(st, actions)
    along = np.sum(np.nan_to_num(move) * ACTION_DIRECTIONS[actions], axis=-1)
    return _mean(along[counted])


def agent_still(st: FrameStats, actions: np.ndarray) -> float:
    """Over transitions with a_t = 0: fraction where the agent is present at t and t + 1 and moves < 0.75 px."""
    move, both = _agent_moves(st)
    still = both & (np.nan_to_num(np.linalg.norm(move, axis=-1), nan=np.inf) < STILL_MAX)
    return _mean(still[actions == 0])


def _checked(videos, prompts, actions, variant):
    variant = variant or ("t2v" if actions is None else "agent")
    if variant not in ("t2v", "agent"):
        raise ValueError(f"unknown variant {variant!r}; expected 't2v' or 'agent'")
    if (variant == "agent") != (actions is not None):
        raise ValueError(f"the {variant} variant {'needs' if variant == 'agent' else 'takes no'} actions")
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    n, frames = videos.shape[:2]
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} videos")
    if actions is not None:
        actions = check_actions(actions, n, frames)
    return videos, prompts, actions, variant


def _scorer(videos, prompts, actions, variant, reference=None):
    """(score(idx) -> §4 metrics of videos idx, fd(idx) -> their Blob-FD or None): frame statistics computed
    once for every resample; ``fd`` needs ``reference`` videos (rendered, video i with video i's prompt), and
    indexes both sets alike so that a subset compares like with like."""
    n_colours = AGENT + (variant == "agent")
    prompted = np.zeros((len(prompts), n_colours), dtype=bool)
    for i, p in enumerate(prompts):
        prompted[i, list(prompt_colours(p))] = True
    st_all = frame_stats(videos, n_colours)
    prompts_arr = np.asarray(prompts, dtype=object)
    feats = ref_feats = None
    if reference is not None:
        if len(reference) != len(videos):
            raise ValueError(f"Blob-FD's reference holds {len(reference)} videos for {len(videos)}: give one "
                             "rendered video per generated one, with the same prompt")
        feats, ref_feats = video_features(st_all), video_features(frame_stats(np.asarray(reference), n_colours))

    def score(idx: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of videos ``idx``; ``groups`` (a cluster resample) tells the entropies which draw of a
        prompt each video belongs to, so a prompt drawn twice counts as two prompts."""
        st, pr = st_all.take(idx), prompted[idx]
        ps = list(prompts_arr[idx]) if groups is None else [f"{p}#{g}" for p, g in zip(prompts_arr[idx], groups)]
        out = {
            "artifact_rate": artifact_rate(st),
            "prompt_accuracy": prompt_accuracy(st, pr),
            "persistence": persistence(st, pr),
            "size_stability": size_stability(st, pr),
            "motion_error": motion_error(st, pr),
            "position_entropy": position_entropy(st, pr, ps),
            "direction_entropy": direction_entropy(st, pr, ps),
        }
        if actions is not None:
            out["action_accuracy"] = action_accuracy(st, actions[idx])
            out["agent_still"] = agent_still(st, actions[idx])
            out["action_drift"] = action_drift(st, actions[idx])
        return out

    def fd(idx: np.ndarray) -> float:
        return frechet(feats[idx], ref_feats[idx])

    return score, (None if feats is None else fd)


def evaluate(videos: np.ndarray, prompts: Sequence[str], actions: np.ndarray | None = None,
             variant: str | None = None, reference: np.ndarray | None = None) -> dict[str, float]:
    """Every §4 metric of a set of videos (uint8 [N, T, H, W, 3]) with their prompts and, for the agent
    variant, actions int64 [N, T − 1]; the variant is "agent" exactly when actions are given unless
    named. With ``reference`` videos also ``blob_fd`` (worlds/blobworld_fd.py). Returns the metric names of
    the spec in its order (the agent variant then the diagnostic ``action_drift``), then ``n_samples``."""
    videos, prompts, actions, variant = _checked(videos, prompts, actions, variant)
    score, fd = _scorer(videos, prompts, actions, variant, reference)
    every = np.arange(len(videos))
    out = score(every)
    if fd is not None:
        out["blob_fd"] = fd(every)
    out["n_samples"] = len(videos)
    return out


def evaluate_intervals(videos: np.ndarray, prompts: Sequence[str], actions: np.ndarray | None = None,
                       variant: str | None = None, n_boot: int = 1000, seed: int = 0,
                       reference: np.ndarray | None = None) -> dict:
    """{metric: (value, low, high)}: 95 % cluster-bootstrap intervals, prompts resampled with all their videos
    (resampling videos within a prompt would duplicate videos and bias the entropies down); Blob-FD's from the
    delete-one-prompt jackknife (``stats.jackknife_interval``)."""
    videos, prompts, actions, variant = _checked(videos, prompts, actions, variant)
    score, fd = _scorer(videos, prompts, actions, variant, reference)
    clusters = clusters_of(prompts)
    out = bootstrap_interval(score, len(videos), clusters, n_boot, seed)
    if fd is not None:  # duplicates bias a Fréchet distance upward: the jackknife over prompts instead
        out["blob_fd"] = jackknife_interval(fd, clusters)
    return out


def data_row(n: int, seed: int, variant: str = "t2v", **kw) -> dict[str, float]:
    """The §4 "data" row: ``evaluate`` on n freshly rendered videos (``sample_worlds`` keywords pass on)."""
    d = sample_worlds(n, seed, variant=variant, **kw)
    return evaluate(d["videos"], d["prompts"], d.get("actions"), variant)
