"""How a model is sampled, as typed values (METHOD.md §6): what a bundle stores and every sampler takes.

- ``Euler``: a bidirectional teacher, Euler on the PF-ODE over a shifted grid with CFG.
- ``EulerCFG``: a causal teacher, the same per block with a KV cache (``steps_first`` for block 0).
- ``FewStep``: a distilled causal student, no CFG: per block times [t0, mid_1, …, mid_{n−1}, 0] with mids
  from (15/16, 5/6, 5/8); each step x̂0 = x − t·v, x ← (1 − t_next)·x̂0 + t_next·ε. Context write after a
  block: "clean" (a t = 0 pass of x̂0) or "noisy" (from block ``ctx_start`` on the K/V of x̂0 at t_ctx: the
  last step's input when it sits at t_ctx, so a noisy-context student's 2-step mids are (t_ctx,); otherwise
  x̂0 re-noised to t_ctx), exactly as TF-CM training writes its context (``objectives/tf.py``).

``sampling_from_dict`` reads the bundle JSON (``{"method": "few_step", ...}``); ``to_dict`` writes it back;
``with_overrides`` applies the CLI's ``--steps/--cfg/--shift/--steps-first`` and validates them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..masks import ChunkPattern

T0 = 1600 / 1601
# step count -> intermediate times (METHOD.md §6: mids from (15/16, 5/6, 5/8))
MIDS = {1: (), 2: (5 / 6,), 3: (15 / 16, 5 / 8), 4: (15 / 16, 5 / 6, 5 / 8)}
CONTEXTS = ("clean", "noisy")


def few_step_times(n: int, t0: float = T0, last_mid: float | None = None) -> list[float]:
    """[t0, *mids, 0] for n steps; ``last_mid`` replaces the last intermediate time (noisy context)."""
    if n not in MIDS:
        raise ValueError(f"few-step sampling takes 1 to 4 steps per chunk, got {n}")
    mids = list(MIDS[n])
    if mids and last_mid is not None:
        mids[-1] = last_mid
    return [t0, *mids, 0.0]


def _check_guidance(cfg: float, shift: float) -> None:
    if not 0 <= cfg < math.inf:  # NaN fails too
        raise ValueError(f"cfg must be a finite number >= 0, got {cfg}")
    if not 0 < shift < math.inf:
        raise ValueError(f"shift must be a finite number > 0, got {shift}")


def _check_steps(name: str, n, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(n, bool) or int(n) != n or n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {n!r}")
    return int(n)


@dataclass(frozen=True)
class Euler:
    steps: int = 50
    cfg: float = 3.0
    shift: float = 3.0
    method = "euler"

    def __post_init__(self):
        _check_steps("steps", self.steps)
        _check_guidance(self.cfg, self.shift)


@dataclass(frozen=True)
class EulerCFG:
    pattern: str = "c3-3"
    steps: int = 50
    cfg: float = 3.0
    shift: float = 3.0
    steps_first: int | None = None  # Euler steps of the first block (None: ``steps``, as every other block)
    method = "causal_euler"

    def __post_init__(self):
        ChunkPattern.parse(self.pattern)
        _check_steps("steps", self.steps)
        if self.steps_first is not None:
            _check_steps("steps_first", self.steps_first)
        _check_guidance(self.cfg, self.shift)

    def steps_for(self, block: int) -> int:
        return self.steps_first if (block == 0 and self.steps_first is not None) else self.steps


@dataclass(frozen=True)
class FewStep:
    pattern: str = "c3-3"
    steps_first: int = 4
    steps: int = 2
    t0: float = T0
    context: str = "clean"
    t_ctx: float = 5 / 8
    ctx_start: int = 1
    method = "few_step"

    def __post_init__(self):
        ChunkPattern.parse(self.pattern)
        _check_steps("steps", self.steps, 1, 4)
        _check_steps("steps_first", self.steps_first, 1, 4)
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        if not 0 < self.t_ctx < 1:
            raise ValueError(f"t_ctx must lie in (0, 1), got {self.t_ctx}")

    def steps_for(self, block: int) -> int:
        return self.steps_first if block == 0 else self.steps

    def noisy_write(self, block: int) -> bool:
        """Does block ``block`` write its context at t_ctx (else a clean t = 0 write)?"""
        return self.context == "noisy" and block >= self.ctx_start

    def times_for(self, block: int) -> list[float]:
        return few_step_times(self.steps_for(block), self.t0, self.t_ctx if self.noisy_write(block) else None)


Sampling = Euler | EulerCFG | FewStep
_BY_METHOD = {c.method: c for c in (Euler, EulerCFG, FewStep)}


def sampling_from_dict(d: dict) -> Sampling:
    """The typed sampling of a bundle config's ``sampling`` entry (method "euler" when absent)."""
    d = dict(d)
    method = d.pop("method", "euler")
    if method not in _BY_METHOD:
        raise ValueError(f"unknown sampling method {method!r}; known: {sorted(_BY_METHOD)}")
    cls = _BY_METHOD[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {method} sampling keys {unknown}; valid: {sorted(names)}")
    return cls(**d)


def to_dict(s: Sampling) -> dict:
    return {"method": s.method, **dataclasses.asdict(s)}


def with_overrides(s: Sampling, steps: int | None = None, cfg: float | None = None, shift: float | None = None,
                   steps_first: int | None = None) -> Sampling:
    """The sampling with the given (non-None) settings replaced; settings the sampler does not have are refused."""
    given = {k: v for k, v in dict(steps=steps, cfg=cfg, shift=shift, steps_first=steps_first).items() if v is not None}
    names = {f.name for f in dataclasses.fields(s)}
    bad = sorted(set(given) - names)
    if bad:
        what = {"euler": "a bidirectional teacher", "causal_euler": "a causal teacher",
                "few_step": "a few-step student"}[s.method]
        raise ValueError(f"--{bad[0].replace('_', '-')} does not apply to {what} (sampling {s.method}); it takes "
                         + ", ".join("--" + n.replace("_", "-") for n in ("steps", "cfg", "shift", "steps_first")
                                     if n in names))
    return dataclasses.replace(s, **given)
