"""World-model fidelity on Atari (shared/specs/atari.md §3), vectorised with numpy.

Inputs: ``generated`` and ``truth`` uint8 [N, T, 64, 64, 3], aligned frame by frame (the P given context
frames included in both), and P = ``context_frames``. Every score pools all videos of the set, so the
bootstrap (``evaluate_intervals``) resamples videos and recomputes the pooled ratios from per-video sums.

- ``psnr@h`` = 10·log10(255² / MSE_h), MSE_h pooled over videos, pixels and channels of frame P − 1 + h;
  h ∈ {1, 2, 4, 8, 16} with P − 1 + h ≤ T − 1. A perfect MSE of 0 gives +inf (bootstrap draws of +inf
  are dropped by ``stats.bootstrap_interval``).
- ``psnr_copy@h``: the same for the baseline that repeats the last given true frame, truth[:, P − 1].
- ``paddle_error``: mean |generated − true| paddle position (pixels) over the (video, frame) pairs of
  frames P … T − 1 where the true paddle is visible. A generated frame that shows no paddle there counts
  with the largest error any position in the band could have (the distance from the true position to the
  band's farther end), so erasing the paddle never scores better than drawing it anywhere; how often that
  happened is reported beside it as ``paddle_missing`` (share of those pairs). NaN when the true paddle is
  never visible.
- ``n_videos``: N (``evaluate`` only; intervals are for the scores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..stats import bootstrap_interval

HORIZONS = (1, 2, 4, 8, 16)
MAX_COLOUR_DISTANCE = 60.0  # RGB Euclidean distance to the paddle colour
MIN_PADDLE_PIXELS = 2


@dataclass(frozen=True)
class PaddleBand:
    """Where the controlled paddle lives in a 64×64 frame: inclusive pixel ranges and the axis measured."""

    colour: tuple[int, int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]
    axis: str  # "row" (Pong: the paddle moves vertically) or "col" (Breakout: horizontally)

    @property
    def span(self) -> tuple[int, int]:
        return self.rows if self.axis == "row" else self.cols


PADDLES = {
    "Pong": PaddleBand((92, 186, 92), rows=(11, 58), cols=(56, 57), axis="row"),
    "Breakout": PaddleBand((200, 72, 72), rows=(57, 58), cols=(0, 63), axis="col"),
}


def horizons(frames: int, context_frames: int) -> list[int]:
    return [h for h in HORIZONS if context_frames - 1 + h <= frames - 1]


def metric_names(frames: int, context_frames: int) -> tuple[str, ...]:
    hs = horizons(frames, context_frames)
    return tuple(f"psnr@{h}" for h in hs) + tuple(f"psnr_copy@{h}" for h in hs) + ("paddle_error", "paddle_missing")


HIGHER_IS_BETTER = {**{f"psnr@{h}": True for h in HORIZONS}, **{f"psnr_copy@{h}": True for h in HORIZONS},
                    "paddle_error": False, "paddle_missing": False}


def paddle_positions(videos: np.ndarray, game: str) -> tuple[np.ndarray, np.ndarray]:
    """(position float64 [N, T], visible bool [N, T]) of the paddle in every 64×64 frame: the mean row
    (Pong) or column (Breakout) of the band's pixels within distance 60 of the paddle colour; visible if
    there are at least 2 such pixels (position NaN otherwise)."""
    band = PADDLES[game]
    (r0, r1), (c0, c1) = band.rows, band.cols
    crop = videos[..., r0:r1 + 1, c0:c1 + 1, :].astype(np.int32)                     # [N, T, h, w, 3]
    d2 = ((crop - np.asarray(band.colour, np.int32)) ** 2).sum(-1)                   # [N, T, h, w]
    hit = d2 < MAX_COLOUR_DISTANCE ** 2                                               # integers: exact
    coord = np.arange(r0, r1 + 1)[:, None] if band.axis == "row" else np.arange(c0, c1 + 1)[None, :]
    count = hit.sum((-2, -1))
    total = (hit * coord).sum((-2, -1))
    visible = count >= MIN_PADDLE_PIXELS
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(visible, total / np.maximum(count, 1), np.nan)
    return pos, visible


def _checked(generated, truth, context_frames: int, game: str):
    g, t = np.asarray(generated), np.asarray(truth)
    if game not in PADDLES:
        raise ValueError(f"unknown Atari game {game!r}; choose one of {sorted(PADDLES)}")
    for name, a in (("generated", g), ("truth", t)):
        if a.dtype != np.uint8 or a.ndim != 5 or a.shape[-1] != 3 or a.shape[2:4] != (64, 64):
            raise ValueError(f"{name} videos must be uint8 [N, T, 64, 64, 3], got {a.dtype} {a.shape}")
    if g.shape != t.shape:
        raise ValueError(f"generated {g.shape} and truth {t.shape} must have the same shape (full-length videos, "
                         "the given context frames included)")
    if len(g) == 0:
        raise ValueError("no videos to score")
    frames = g.shape[1]
    if not 1 <= context_frames <= frames - 1:
        raise ValueError(f"context_frames (P, the given frames) must be 1..{frames - 1} for {frames}-frame videos: "
                         f"an Atari model starts from at least frame 0 (its emulator state), got {context_frames}")
    return g, t


def _per_video(g: np.ndarray, t: np.ndarray, p: int, game: str) -> dict[str, np.ndarray]:
    """Sums per video that every pooled score is a ratio of: squared errors per horizon (model and copy),
    paddle error sum, number of frames with a visible true paddle, number of those without a generated one."""
    out = {}
    last = t[:, p - 1].astype(np.int32)
    for h in horizons(g.shape[1], p):
        k = p - 1 + h
        ref = t[:, k].astype(np.int32)
        out[f"sse@{h}"] = ((g[:, k].astype(np.int32) - ref) ** 2).reshape(len(g), -1).sum(1, dtype=np.float64)
        out[f"sse_copy@{h}"] = ((last - ref) ** 2).reshape(len(g), -1).sum(1, dtype=np.float64)
    pos_g, vis_g = paddle_positions(g[:, p:], game)
    pos_t, vis_t = paddle_positions(t[:, p:], game)
    lo, hi = PADDLES[game].span
    worst = np.maximum(np.abs(pos_t - lo), np.abs(pos_t - hi))
    err = np.where(vis_g, np.abs(pos_g - pos_t), worst)
    out["paddle_sum"] = np.where(vis_t, err, 0.0).sum(1)
    out["paddle_frames"] = vis_t.sum(1).astype(np.float64)
    out["paddle_missing"] = (vis_t & ~vis_g).sum(1).astype(np.float64)
    return out


def _psnr(sse: float, count: int) -> float:
    mse = sse / count
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _scorer(g: np.ndarray, t: np.ndarray, p: int, game: str):
    stats = _per_video(g, t, p, game)
    pixels = int(np.prod(g.shape[2:]))
    hs = horizons(g.shape[1], p)

    def score(idx: np.ndarray) -> dict[str, float]:
        s = {k: float(v[idx].sum()) for k, v in stats.items()}
        out = {f"psnr@{h}": _psnr(s[f"sse@{h}"], len(idx) * pixels) for h in hs}
        out.update({f"psnr_copy@{h}": _psnr(s[f"sse_copy@{h}"], len(idx) * pixels) for h in hs})
        n = s["paddle_frames"]
        out["paddle_error"] = s["paddle_sum"] / n if n else float("nan")
        out["paddle_missing"] = s["paddle_missing"] / n if n else float("nan")
        return out

    return score


def evaluate(generated: np.ndarray, truth: np.ndarray, context_frames: int, game: str) -> dict[str, float]:
    """Every §3 score of ``generated`` against ``truth`` (uint8 [N, T, 64, 64, 3]), plus ``n_videos``."""
    g, t = _checked(generated, truth, context_frames, game)
    out = _scorer(g, t, context_frames, game)(np.arange(len(g)))
    out["n_videos"] = len(g)
    return out


def evaluate_intervals(generated: np.ndarray, truth: np.ndarray, context_frames: int, game: str,
                       n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{metric: (value, low, high)}: 95 % bootstrap intervals, videos resampled with replacement."""
    g, t = _checked(generated, truth, context_frames, game)
    return bootstrap_interval(_scorer(g, t, context_frames, game), len(g), None, n_boot, seed)
