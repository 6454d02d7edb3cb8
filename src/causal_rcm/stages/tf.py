"""Stages 1–2: the causal teacher (tf, df) and the few-step students (tf_dcm, tf_scm, tf_meanflow, ode_init),
all trained on the synthetic dataset (METHOD.md §3–4).

    causal-rcm train tf_scm --preset blob-s data=RUN/synth init=RUN/tf/model.safetensors \\
        teacher=RUN/tf/model.safetensors --out RUN/tf_scm

``init`` is the bundle whose weights start the network (the bidirectional teacher for tf/df, the causal
teacher for the students); ``teacher`` is the frozen causal teacher the CM objectives distil (CFG w_cfg).
The text encoder comes with ``init`` and stays frozen. Writes RUN/config.json, RUN/metrics.jsonl (losses
and periodic world metrics of EMA samples, few-step causal sampling) and RUN/model.safetensors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import apply_overrides
from ..data.blobworld import to_model
from ..flow import sample_t_logit_normal, sample_t_shifted
from ..generate import Generator
from ..models.masks import ChunkPattern
from ..objectives import tf as obj
from ..train.loop import Stepper, TrainConfig, device_and_autocast, make_ema, run_loop
from .common import EvalConfig, begin_run
from .report import evaluate_generator

METHODS = ("tf", "df", "tf_dcm", "tf_scm", "tf_meanflow", "ode_init")
CAUSAL_TEACHERS = ("tf", "df")


@dataclass(frozen=True)
class Objective:
    """Hyper-parameters of every objective (only the chosen method's are used)."""

    w_cfg: float = 3.0              # teacher CFG for the CM objectives
    tf_shift: float = 5.0           # tf / df: t = shift(U; 5)
    tf_weight: str = "bell"         # bell | uniform
    df_fopp: bool = True            # df: per-block times non-decreasing in the block index
    dcm_n: int = 48
    dcm_shift: float = 3.0
    scm_mean: float = -0.8          # log(t / (1 − t)) ~ N(mean, std²)
    scm_std: float = 1.6
    scm_warmup: int = 1000          # tangent warm-up r = min(1, step / scm_warmup)
    scm_c: float = 0.1
    mf_mean: float = -0.4
    mf_std: float = 1.0
    mf_p_equal: float = 0.25
    mf_p: float = 1.0
    noisy_context: bool = False
    nc_start: int = 1
    t_ctx: float = 5 / 8


@dataclass(frozen=True)
class Sampling:
    """How the trained model is sampled (written into its bundle): students few-step, causal teachers Euler."""

    steps_first: int = 4
    steps: int = 2
    teacher_steps: int = 50
    cfg: float = 3.0
    shift: float = 3.0


@dataclass(frozen=True)
class TFConfig:
    method: str = "tf"
    pattern: str = "c3-3"
    data: str = ""
    init: str = ""
    teacher: str = ""
    objective: Objective = field(default_factory=Objective)
    sampling: Sampling = field(default_factory=Sampling)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        ChunkPattern.parse(self.pattern)


def tf_preset(name: str, method: str) -> TFConfig:
    if name == "blob-s":
        lr = 2e-4 if method in CAUSAL_TEACHERS else 5e-5
        return TFConfig(method=method, train=TrainConfig(steps=4000, batch=64, lr=lr, warmup=200, ckpt_every=500,
                                                         eval_every=1000, num_workers=0))
    if name == "blob-tiny":
        return TFConfig(method=method, pattern="c1-4",
                        train=TrainConfig(steps=150, batch=16, lr=5e-4 if method in CAUSAL_TEACHERS else 2e-4,
                                          warmup=20, ckpt_every=150, eval_every=0, num_workers=0),
                        sampling=Sampling(teacher_steps=16), eval=EvalConfig(prompts=4, per_prompt=4, batch=16))
    raise ValueError(f"unknown preset {name!r} for stage {method}; choose blob-s or blob-tiny")


def resolve(preset_name: str, method: str, overrides: list[str]) -> TFConfig:
    return apply_overrides(tf_preset(preset_name, method), overrides)


def bundle_sampling(cfg: TFConfig) -> dict:
    s = cfg.sampling
    if cfg.method in CAUSAL_TEACHERS:
        return dict(method="causal_euler", pattern=cfg.pattern, steps=s.teacher_steps, cfg=s.cfg, shift=s.shift)
    return dict(method="few_step", pattern=cfg.pattern, steps_first=s.steps_first, steps=s.steps,
                context="noisy" if cfg.objective.noisy_context else "clean")


def _load(path: str, what: str, dual_time: bool = False) -> Generator:
    if not path:
        raise ValueError(f"this stage needs {what}= (a bundle path)")
    gen = Generator.load(path, device="cpu")
    if dual_time and not gen.net.cfg.dual_time:
        # MeanFlow: add the r-embedding (zero last layer: the student starts as the network it came from)
        net = type(gen.net)(dataclasses.replace(gen.net.cfg, dual_time=True))
        missing = net.load_state_dict(gen.net.state_dict(), strict=False).missing_keys
        assert all(k.startswith("r_embedding") for k in missing), missing
        gen.net = net
    return gen


def train_tf(cfg: TFConfig, run_dir: str | Path, device: str | None = None) -> Path:
    from ..data.synthetic import read_synthetic

    tc, ob = cfg.train, cfg.objective
    run_dir = begin_run(cfg.method, cfg, run_dir, tc.seed)
    dev, autocast = device_and_autocast(tc.precision, device)
    pattern = ChunkPattern.parse(cfg.pattern)

    data = read_synthetic(cfg.data, with_ode=cfg.method == "ode_init")
    videos, prompts = data["videos"], data["prompts"]
    src = _load(cfg.init, "init", dual_time=cfg.method == "tf_meanflow")
    net, text = src.net.to(dev).train().requires_grad_(True), src.text_encoder.to(dev)
    world = src.world
    pattern.check(world.frames)
    teacher = None
    if cfg.method in ("tf_dcm", "tf_scm", "tf_meanflow"):
        teacher = _load(cfg.teacher, "teacher").net.to(dev)
    ema = make_ema(net, tc)
    stepper = Stepper(net.parameters(), tc)
    g = torch.Generator(device=dev)

    v_fn, jvp_fn = obj.net_fns(net)
    teacher_fn = obj.net_fns(teacher)[0] if teacher is not None else None

    def step_fn(step: int) -> dict:
        g.manual_seed(tc.seed * 1_000_003 + step)
        idx = torch.randint(0, len(videos), (tc.batch,), generator=g, device=dev).cpu()
        x0 = to_model(videos[idx.numpy()]).to(dev)
        B = x0.shape[0]
        eps = torch.randn(x0.shape, generator=g, device=dev)
        eps_ctx = torch.randn(x0.shape, generator=g, device=dev)
        nc = obj.NoisyContext(ob.nc_start, ob.t_ctx) if ob.noisy_context else None
        with torch.no_grad():
            ctx = text.encode([prompts[i] for i in idx.tolist()])
            ctx_u = text.encode([""] * B)
        with autocast():
            if cfg.method == "tf":
                t = sample_t_shifted(B, ob.tf_shift, g, dev)
                loss, m = obj.tf_loss(v_fn, x0, eps, t, ctx, pattern, ob.tf_weight)
            elif cfg.method == "df":
                nb = pattern.num_blocks(x0.shape[2])
                tb = (obj.fopp_block_times(B, nb, g, dev, ob.tf_shift) if ob.df_fopp
                      else sample_t_shifted(B * nb, ob.tf_shift, g, dev).view(B, nb))
                loss, m = obj.df_loss(v_fn, x0, eps, tb, ctx, pattern, ob.tf_weight)
            elif cfg.method == "tf_dcm":
                u = torch.rand(B, generator=g, device=dev) * (1 - 1 / ob.dcm_n)
                loss, m = obj.tf_dcm_loss(v_fn, teacher_fn, x0, eps, u, ctx, ctx_u, pattern, ob.dcm_n,
                                          ob.dcm_shift, ob.w_cfg, nc, eps_ctx)
            elif cfg.method == "tf_scm":
                t = sample_t_logit_normal(B, ob.scm_mean, ob.scm_std, g, dev)
                loss, m = obj.tf_scm_loss(v_fn, jvp_fn, teacher_fn, x0, eps, t, ctx, ctx_u, pattern,
                                          obj.tangent_warmup(step, ob.scm_warmup), ob.w_cfg, ob.scm_c, nc, eps_ctx)
            elif cfg.method == "tf_meanflow":
                t, r = obj.sample_t_r(B, ob.mf_mean, ob.mf_std, ob.mf_p_equal, g, dev)
                loss, m = obj.tf_meanflow_loss(v_fn, jvp_fn, teacher_fn, x0, eps, t, r, ctx, ctx_u, pattern,
                                               ob.w_cfg, ob.mf_p, nc=nc, eps_ctx=eps_ctx)
            else:
                states = torch.from_numpy(data["ode_states"][idx.numpy()]).to(dev)
                times = torch.from_numpy(data["ode_times"]).to(dev)
                loss, m = obj.ode_init_loss(v_fn, states, times, x0, ctx, pattern, generator=g)
        m = {k: float(v) for k, v in m.items()}
        m.update(stepper.step(loss, step))
        ema.update(net)
        return m

    sampling = bundle_sampling(cfg)
    kind = "causal_teacher" if cfg.method in CAUSAL_TEACHERS else "student"

    def ema_generator() -> Generator:
        return Generator.from_modules(ema.model, text, world, sampling, kind)

    def evaluate(step: int) -> dict:
        return evaluate_generator(ema_generator(), cfg.eval)

    run_loop(tc, run_dir, step_fn, {"net": net, "ema": ema}, {"opt": stepper.opt}, evaluate, cfg.method,
             stepper.on_resume)
    return ema_generator().save(run_dir / "model.safetensors", method=cfg.method)


__all__ = ["TFConfig", "Objective", "Sampling", "METHODS", "tf_preset", "resolve", "train_tf"]
