"""Blobworld, the built-in video world (shared/specs/blobworld.md §1–3 and §5).

Coloured balls bounce inside a W×W frame (T2V variant); the agent variant adds a white ball moved by
actions. Generation is split into three pure stages, each vectorised over samples and balls:

1. per-sample random draws from ``np.random.default_rng([seed, i])``, so sample i depends only on
   ``(seed, i)`` and any sample can be regenerated alone (``start=i``);
2. ``simulate_balls`` / ``simulate_agent``: trajectories, [N, T, K, 2] centres (x, y) in pixels;
3. ``render``: anti-aliased discs painted in palette order with the agent last, in float64, then rounded
   (half to even) to uint8.

Balls occupy K = 3 slots per sample: T2V holds 1–3 balls in palette order; the agent variant holds 0–2
passive balls in slots 0–1 and the agent in slot 2. Empty slots have colour −1 and radius 0.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
# Palette (§1) followed by the agent's white; the row index is the colour id and the painting order.
COLOURS = np.array([(230, 40, 40), (40, 200, 60), (50, 80, 240), (230, 210, 30), (210, 50, 210),
                    (30, 210, 220), (255, 255, 255)], dtype=np.uint8)
PALETTE = COLOURS[:6]
AGENT = 6
ACTION_NAMES = ("none", "up", "down", "left", "right")
# Unit step of each action in (x, y); y grows downwards (row index).
ACTION_DIRECTIONS = np.array([(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)], dtype=np.float64)
STICKY = 0.75
SLOTS = 3
VARIANTS = ("t2v", "agent")


def make_prompt(colours: Sequence[int]) -> str:
    """The prompt naming the given palette colours (§2): palette order, commas, ``and`` before the last."""
    names = [f"a {COLOUR_NAMES[c]} ball" for c in sorted(colours)]
    if not names:
        return "no ball"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _prompts_with(counts: Sequence[int]) -> tuple[str, ...]:
    return tuple(make_prompt(c) for n in counts for c in itertools.combinations(range(len(PALETTE)), n))


T2V_PROMPTS = _prompts_with((1, 2, 3))
AGENT_PROMPTS = _prompts_with((0, 1, 2))
_COLOURS_OF = {make_prompt(c): c for n in range(4) for c in itertools.combinations(range(len(PALETTE)), n)}


def prompt_colours(prompt: str) -> tuple[int, ...]:
    """Palette indices named by a prompt, in palette order (``"no ball"`` gives ``()``)."""
    try:
        return _COLOURS_OF[prompt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown Blobworld prompt {prompt!r}; valid prompts are 'no ball' and the 41 T2V "
                         f"prompts: {', '.join(repr(p) for p in T2V_PROMPTS)}") from None


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown Blobworld variant {variant!r}; expected one of {VARIANTS}")


def simulate_balls(c0: np.ndarray, v0: np.ndarray, r: np.ndarray, size: int, frames: int) -> np.ndarray:
    """Bouncing trajectories (§2): c += v, then per axis c < r → 2r − c and c > W − r → 2(W − r) − c,
    flipping that velocity component. c0, v0 [N, K, 2] (x, y), r [N, K] → centres [N, T, K, 2]."""
    c, v = c0.astype(np.float64), v0.astype(np.float64)
    lo = np.asarray(r, dtype=np.float64)[..., None]
    hi = size - lo
    out = np.empty((frames, *c.shape))
    out[0] = c
    for t in range(1, frames):
        c = c + v
        below = c < lo
        c, v = np.where(below, 2 * lo - c, c), np.where(below, -v, v)
        above = c > hi
        c, v = np.where(above, 2 * hi - c, c), np.where(above, -v, v)
        out[t] = c
    return np.moveaxis(out, 0, 1)


def simulate_agent(c0: np.ndarray, actions: np.ndarray, r: float, step: float, size: int) -> np.ndarray:
    """Agent trajectory (§3): c_{t+1} = clip(c_t + step · dir(a_t), r, W − r). c0 [N, 2], actions
    [N, T − 1] → [N, T, 2]."""
    n, steps = actions.shape
    out = np.empty((n, steps + 1, 2))
    out[:, 0] = c0
    for t in range(steps):
        out[:, t + 1] = np.clip(out[:, t] + step * ACTION_DIRECTIONS[actions[:, t]], r, size - r)
    return out


def sticky_actions(first: np.ndarray, keep: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Sticky random actions (§3): a_0 = first; a_t = a_{t−1} where keep[:, t−1] else fresh[:, t−1].
    first [N], keep [N, T − 2] bool, fresh [N, T − 2] uniform on the five actions → [N, T − 1] int64.
    A fresh draw may equal the previous action, so P(a_t = a_{t−1}) = 0.75 + 0.25 / 5 = 0.8."""
    n, steps = keep.shape[0], keep.shape[1] + 1
    a = np.empty((n, steps), dtype=np.int64)
    a[:, 0] = first
    for t in range(1, steps):
        a[:, t] = np.where(keep[:, t - 1], a[:, t - 1], fresh[:, t - 1])
    return a


def render(centres: np.ndarray, radii: np.ndarray, colours: np.ndarray, size: int,
           batch: int = 16) -> np.ndarray:
    """Videos of anti-aliased discs (§2): per ball α = clip(r + 0.5 − d, 0, 1), d = distance from the pixel
    centre (j + 0.5, i + 0.5) to the ball centre; img = img·(1 − α) + colour·α in float64, balls in colour-id
    order (palette order, agent last) whatever their slot order, then rounded to uint8.
    centres [N, T, K, 2] (x, y), radii [N, K], colours [N, K] (−1 = empty slot) → [N, T, H, W, 3] uint8."""
    n, frames, slots, _ = centres.shape
    order = np.argsort(colours, axis=1, kind="stable")
    centres = np.take_along_axis(centres, order[:, None, :, None], axis=2)
    radii = np.take_along_axis(radii, order, axis=1).astype(np.float64)
    colours = np.take_along_axis(colours, order, axis=1)
    rgb = np.where(colours[..., None] >= 0, COLOURS[colours].astype(np.float64), 0.0)  # [N, K, 3]
    # α is 0 beyond r + 0.5 and blending with α = 0 is exact, so each ball only touches a w×w window of
    # pixels; indices clipped at the border repeat a pixel with identical values.
    w = min(size, int(np.ceil(2 * radii.max(initial=0.0) + 1)) + 1)
    offsets = np.arange(w)
    out = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    for s in range(0, n, batch):
        e = min(s + batch, n)
        img = np.zeros(((e - s) * frames * size * size, 3))  # pixels of [B, T, H, W] flattened
        frame0 = (np.arange((e - s) * frames) * size * size).reshape(e - s, frames, 1, 1)
        for k in range(slots):
            live = colours[s:e, k] >= 0
            if not live.any():
                continue
            r = radii[s:e, k, None, None]  # [B, 1, 1]
            cx, cy = centres[s:e, :, k, 0, None], centres[s:e, :, k, 1, None]  # [B, T, 1]
            j = np.clip(np.floor(cx - r - 1).astype(np.int64) + offsets, 0, size - 1)  # [B, T, w]
            i = np.clip(np.floor(cy - r - 1).astype(np.int64) + offsets, 0, size - 1)
            d = np.sqrt((i + 0.5 - cy)[..., :, None] ** 2 + (j + 0.5 - cx)[..., None, :] ** 2)  # [B, T, w, w]
            alpha = np.clip(r[..., None] + 0.5 - d, 0.0, 1.0) * live[:, None, None, None]
            alpha = alpha[..., None]
            idx = frame0 + i[..., :, None] * size + j[..., None, :]
            img[idx] = img[idx] * (1.0 - alpha) + rgb[s:e, k, None, None, None, :] * alpha
        out[s:e] = np.rint(img).reshape(e - s, frames, size, size, 3)
    return out


def check_actions(actions, n: int, frames: int) -> np.ndarray:
    """Agent actions as int64 [n, frames − 1] in 0..4, or ValueError."""
    actions = np.asarray(actions)
    if (actions.shape != (n, frames - 1) or not np.issubdtype(actions.dtype, np.integer)
            or actions.min(initial=0) < 0 or actions.max(initial=0) > 4):
        raise ValueError(f"actions must be integers in 0..4 of shape {(n, frames - 1)}, got {actions.dtype} "
                         f"{actions.shape}")
    return actions.astype(np.int64)


def _resolve_prompts(prompts: str | Sequence[str] | None, n: int, variant: str) -> list[str] | None:
    if prompts is None:
        return None
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} samples")
    valid = T2V_PROMPTS if variant == "t2v" else AGENT_PROMPTS
    for p in prompts:
        if p not in valid:
            raise ValueError(f"prompt {p!r} is not a Blobworld {variant} prompt; valid prompts: "
                             f"{', '.join(map(repr, valid))}")
    return prompts


def sample_worlds(n: int, seed: int, *, size: int = 32, frames: int = 21, variant: str = "t2v",
                  prompts: str | Sequence[str] | None = None, actions: np.ndarray | None = None,
                  start: int = 0) -> dict:
    """Samples start … start + n − 1 of the Blobworld stream ``seed`` (§2–3), rendered.

    Per ball r ~ U[3, 5]·s, centre ~ U[r, W − r]², speed ~ U[0.5, 2]·s, direction ~ U[0, 2π), s = W / 32;
    T2V draws 1–3 balls, the agent variant 0–2 plus the agent (r = 3.5·s, step 2·s, sticky actions).
    ``prompts`` (N strings or one string) fixes the colours; ``actions`` [N, T − 1] (agent variant) replaces
    the sticky random actions. Returns ``videos`` uint8 [N, T, H, W, 3], ``prompts`` list[str], ``actions``
    int64 [N, T − 1] (agent only) and the ground truth: ``centres`` [N, T, K, 2] (x, y), ``radii`` [N, K],
    ``velocities`` [N, K, 2] (at frame 0; zero for the agent), ``colours`` [N, K] (−1 empty, 6 agent) and
    ``present`` [N, K], K = 3.
    """
    _check_variant(variant)
    if frames < 2 or size < 1:
        raise ValueError(f"Blobworld needs frames >= 2 and size >= 1, got frames={frames}, size={size}")
    fixed = _resolve_prompts(prompts, n, variant)
    s = size / 32
    agent = variant == "agent"
    colours = np.full((n, SLOTS), -1, dtype=np.int64)
    radii, c0, v0 = np.zeros((n, SLOTS)), np.zeros((n, SLOTS, 2)), np.zeros((n, SLOTS, 2))
    first = np.zeros(n, dtype=np.int64)
    keep, fresh = np.zeros((n, frames - 2), dtype=bool), np.zeros((n, frames - 2), dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        if fixed is None:
            m = int(rng.integers(0, 3) if agent else rng.integers(1, 4))
            cols = np.sort(rng.choice(len(PALETTE), m, replace=False))
        else:
            cols = np.array(prompt_colours(fixed[i]), dtype=np.int64)
            m = len(cols)
        r = rng.uniform(3.0, 5.0, m) * s
        centre = rng.uniform(r, size - r, (2, m)).T
        speed = rng.uniform(0.5, 2.0, m) * s
        theta = rng.uniform(0.0, 2 * np.pi, m)
        colours[i, :m], radii[i, :m], c0[i, :m] = cols, r, centre
        v0[i, :m] = speed[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        if agent:
            colours[i, -1], radii[i, -1] = AGENT, 3.5 * s
            c0[i, -1] = rng.uniform(3.5 * s, size - 3.5 * s, 2)
            first[i] = rng.integers(0, 5)
            keep[i], fresh[i] = rng.random(frames - 2) < STICKY, rng.integers(0, 5, frames - 2)
    centres = simulate_balls(c0, v0, radii, size, frames)
    out = {}
    if agent:
        if actions is None:
            actions = sticky_actions(first, keep, fresh)
        actions = check_actions(actions, n, frames)
        centres[:, :, -1] = simulate_agent(c0[:, -1], actions, 3.5 * s, 2.0 * s, size)
        out["actions"] = actions
    elif actions is not None:
        raise ValueError("actions are only used by the agent variant")
    out["videos"] = render(centres, radii, colours, size)
    out["prompts"] = fixed if fixed is not None else [make_prompt(c[(c >= 0) & (c < AGENT)]) for c in colours]
    out.update(centres=centres, radii=radii, velocities=v0, colours=colours, present=colours >= 0)
    return out
