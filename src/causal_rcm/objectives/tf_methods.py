"""Each teacher-forcing method as one typed step recipe: its time sampler and its loss call (METHOD.md §3–4).

    m = METHODS["tf_scm"]
    loss, metrics = m.loss(nets, batch, rng, objective, pattern, StepInfo(step, steps))

The TF stage, SF-DMD's joint mode and the benchmarks all go through this table, so a method is defined once.
``rng`` is the step's per-sample random stream (``seeding.SampleRandom``): times are drawn sample by sample,
so a batch split over ranks draws the same times as the whole batch in one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..flow import shift
from ..masks import ChunkPattern
from ..seeding import SampleRandom
from . import tf as obj


@dataclass(frozen=True)
class Objective:
    """Hyper-parameters of every TF method (only the chosen method's are used)."""

    w_cfg: float = 3.0              # teacher CFG for the CM objectives
    tf_shift: float = 5.0           # tf / df: t = shift(U; 5)
    tf_weight: str = "bell"         # bell | uniform
    cfg_dropout: float = 0.1        # tf / df: the prompt (and actions) dropped for CFG's unconditional branch
    df_fopp: bool = True            # df: per-block times non-decreasing in the block index
    dcm_n: int = 48
    dcm_shift: float = 3.0
    scm_mean: float = -0.8          # log(t / (1 − t)) ~ N(mean, std²)
    scm_std: float = 1.6
    scm_warmup: float = 0.0         # tangent warm-up r = min(1, step / (scm_warmup · steps)): a fraction of the run
    scm_c: float = 0.1
    mf_mean: float = -0.4
    mf_std: float = 1.0
    mf_p_equal: float = 0.25        # share of r = t draws (so 75 % of draws train an interval r < t)
    mf_p: float = 1.0
    noisy_context: bool = False
    nc_start: int = 1
    t_ctx: float = 5 / 8

    def __post_init__(self):
        if not 0 <= self.scm_warmup <= 1:
            raise ValueError(f"objective.scm_warmup is a fraction of the run in [0, 1], got {self.scm_warmup}")
        if not 0 <= self.cfg_dropout < 1 or not 0 <= self.mf_p_equal <= 1:
            raise ValueError("objective.cfg_dropout and objective.mf_p_equal are probabilities")
        if self.tf_weight not in ("bell", "uniform"):
            raise ValueError(f"objective.tf_weight must be bell or uniform, got {self.tf_weight!r}")

    @property
    def nc(self) -> obj.NoisyContext | None:
        return obj.NoisyContext(self.nc_start, self.t_ctx) if self.noisy_context else None


@dataclass(frozen=True)
class StepInfo:
    step: int
    steps: int


@dataclass(frozen=True)
class Nets:
    v_fn: Callable                   # the trained network's ordinary forward
    jvp_fn: Callable | None = None   # its forward-mode pass
    teacher_fn: Callable | None = None  # the frozen causal teacher (CM methods)


LossFn = Callable[[Nets, obj.Batch, SampleRandom, Objective, ChunkPattern, StepInfo], tuple]


@dataclass(frozen=True)
class Method:
    name: str
    loss: LossFn
    makes_causal_teacher: bool = False  # tf / df train the causal teacher itself
    needs_teacher: bool = False
    needs_ode: bool = False
    dual_time: bool = False             # MeanFlow's second time input


def _caption_dropout(b: obj.Batch, rng: SampleRandom, p: float) -> obj.Batch:
    """Samples drawn with probability p see the empty prompt and no actions (CFG's unconditional branch)."""
    if p <= 0 or b.ctx_u is None:
        return b
    keep = rng.rand() >= p
    ctx = torch.where(keep[:, None, None], b.ctx, b.ctx_u)
    actions = None if b.actions is None else b.actions.drop(keep)
    return obj.Batch(b.x0, b.eps, ctx, b.ctx_u, b.eps_ctx, actions, b.ode_states, b.ode_times)


def _tf(n: Nets, b, rng, o: Objective, pattern, info):
    b = _caption_dropout(b, rng, o.cfg_dropout)
    return obj.tf_loss(n.v_fn, b, shift(rng.rand(), o.tf_shift), pattern, o.tf_weight)


def _df(n: Nets, b, rng, o: Objective, pattern, info):
    b = _caption_dropout(b, rng, o.cfg_dropout)
    u = rng.rand(pattern.num_blocks(b.x0.shape[2]))
    t_blocks = obj.fopp_block_times(u, o.tf_shift) if o.df_fopp else shift(u, o.tf_shift)
    return obj.df_loss(n.v_fn, b, t_blocks, pattern, o.tf_weight)


def _dcm(n: Nets, b, rng, o: Objective, pattern, info):
    u = rng.rand() * (1 - 1 / o.dcm_n)
    return obj.tf_dcm_loss(n.v_fn, n.teacher_fn, b, u, pattern, o.dcm_n, o.dcm_shift, o.w_cfg, o.nc)


def _scm(n: Nets, b, rng, o: Objective, pattern, info: StepInfo):
    t = torch.sigmoid(o.scm_mean + o.scm_std * rng.randn())
    r = obj.tangent_warmup(info.step, round(o.scm_warmup * info.steps))
    return obj.tf_scm_loss(n.v_fn, n.jvp_fn, n.teacher_fn, b, t, pattern, r, o.w_cfg, o.scm_c, o.nc)


def _meanflow(n: Nets, b, rng, o: Objective, pattern, info):
    a = torch.sigmoid(o.mf_mean + o.mf_std * rng.randn(2))
    t, r = a.max(dim=1).values, a.min(dim=1).values
    r = torch.where(rng.rand() < o.mf_p_equal, t, r)
    return obj.tf_meanflow_loss(n.v_fn, n.jvp_fn, n.teacher_fn, b, t, r, pattern, o.w_cfg, o.mf_p, nc=o.nc)


def _ode_init(n: Nets, b, rng, o: Objective, pattern, info):
    k = rng.randint(b.ode_states.shape[1], pattern.num_blocks(b.x0.shape[2]))
    return obj.ode_init_loss(n.v_fn, b, k, pattern)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("tf", _tf, makes_causal_teacher=True),
    Method("df", _df, makes_causal_teacher=True),
    Method("tf_dcm", _dcm, needs_teacher=True),
    Method("tf_scm", _scm, needs_teacher=True),
    Method("tf_meanflow", _meanflow, needs_teacher=True, dual_time=True),
    Method("ode_init", _ode_init, needs_ode=True),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
