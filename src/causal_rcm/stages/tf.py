"""Stages 1–2: the causal teacher (tf, df) and the few-step students (tf_dcm, tf_scm, tf_meanflow, ode_init),
all trained on the synthetic dataset (METHOD.md §3–4); each method is one recipe of ``objectives/tf_methods``.

    causal-rcm train tf_scm --preset blob-s data=RUN/synth init=RUN/tf/model.safetensors \\
        teacher=RUN/tf/model.safetensors --out RUN/tf_scm

``init`` is the bundle whose weights start the network (the bidirectional teacher for tf/df, the causal
teacher for the students); ``teacher`` is the frozen causal teacher the CM objectives distil (CFG w_cfg).
The text encoder comes with ``init`` and stays frozen. Writes RUN/config.json, RUN/metrics.jsonl (losses
and periodic world metrics of EMA samples, few-step causal sampling), RUN/summary.json and RUN/model.safetensors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import WanConfig, apply_overrides
from ..io import say
from ..masks import ChunkPattern
from ..models.conditioning import encode_actions, frame_action_ids
from ..objectives import tf as obj
from ..objectives.tf_methods import METHODS, Nets, Objective, StepInfo, method
from ..runtime import autocast_for, resolve_device, set_matmul_precision
from ..seeding import DATA, SampleRandom, local_ids
from ..stream.bundle import Bundle
from ..stream.codec import to_unit
from ..stream.sampling import EulerCFG, FewStep
from ..train import distributed as D
from ..train.loop import Stepper, TrainConfig, make_ema, run_loop
from ..train.parallelize import ParallelConfig
from ..train.placement import Placement, dual_time
from .common import EvalConfig, begin_run, evaluator
from .report import evaluate_bundle


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
    # a smaller student than its teacher (the paper's 14B -> 1.3B gap, method review L1): the init's blocks at
    # these indices, e.g. [0, 2, 4] of a 6-layer causal teacher; () keeps every block
    student_layers: tuple[int, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        method(self.method)
        ChunkPattern.parse(self.pattern)


def tf_preset(name: str, method_name: str) -> TFConfig:
    teacher_like = method(method_name).makes_causal_teacher
    if name == "blob-s":
        lr = 2e-4 if teacher_like else 5e-5
        return TFConfig(method=method_name, train=TrainConfig(steps=4000, batch=64, lr=lr, warmup=200,
                                                              ckpt_every=500, eval_every=1000, num_workers=0))
    if name == "blob-tiny":
        # the CM students distil the causal teacher unguided (w_cfg 1): it learnt from data already drawn at
        # CFG 3, and guiding it again made the tiny students' frames show extra balls (claims.md, must-show 4)
        return TFConfig(method=method_name, pattern="c1-4", objective=Objective(w_cfg=1.0),
                        train=TrainConfig(steps=400 if teacher_like else 300, batch=16,
                                          lr=5e-4 if teacher_like else 2e-4, warmup=20, ckpt_every=100,
                                          eval_every=0, num_workers=0),
                        sampling=Sampling(teacher_steps=16), eval=EvalConfig(prompts=4, per_prompt=4, batch=16))
    if name == "atari":
        return TFConfig(method=method_name, train=TrainConfig(steps=3000, batch=16, lr=2e-4 if teacher_like else 5e-5,
                                                              warmup=20, ckpt_every=500, eval_every=1000,
                                                              num_workers=0),
                        sampling=Sampling(teacher_steps=30, cfg=2.0), eval=EvalConfig(prompts=1, per_prompt=64, batch=64))
    if name == "atari-tiny":
        return TFConfig(method=method_name, pattern="c1-4",
                        train=TrainConfig(steps=2, batch=2, lr=1e-4, warmup=1, ckpt_every=2, eval_every=0, num_workers=0),
                        sampling=Sampling(teacher_steps=3, cfg=2.0), eval=EvalConfig(prompts=1, per_prompt=2, batch=2))
    if name in ("wan2.1-1.3b", "wan2.1-14b"):
        # the data were drawn at Wan's CFG 5 and the causal teacher learnt them: the CM students distil it
        # unguided (w_cfg 1), as blob-tiny does (guiding it again doubled the guidance, claims.md)
        from .wan import wan_parallel

        return TFConfig(method=method_name, objective=Objective(w_cfg=1.0),
                        train=TrainConfig(steps=2000 if teacher_like else 1000, batch=8,
                                          lr=2e-5 if teacher_like else 1e-5, warmup=50, ckpt_every=100,
                                          eval_every=0, log_every=10, num_workers=0),
                        sampling=Sampling(cfg=5.0, shift=5.0), parallel=wan_parallel(name))
    if name == "wan-tiny":  # 17 frames of 32x48: 5 latent frames, a first block of 1 and one of 4
        return TFConfig(method=method_name, pattern="c1-4", objective=Objective(w_cfg=1.0),
                        train=TrainConfig(steps=2, batch=2, lr=1e-4, warmup=1, ckpt_every=2, eval_every=0,
                                          num_workers=0),
                        sampling=Sampling(teacher_steps=3, cfg=5.0, shift=5.0))
    raise ValueError(f"unknown preset {name!r} for stage {method_name}; choose blob-s, blob-tiny, atari, atari-tiny, "
                     "wan2.1-1.3b, wan2.1-14b or wan-tiny")


def resolve(preset_name: str, method_name: str, overrides: list[str]) -> TFConfig:
    return apply_overrides(tf_preset(preset_name, method_name), overrides)


def bundle_sampling(cfg: TFConfig) -> FewStep | EulerCFG:
    s, ob = cfg.sampling, cfg.objective
    if method(cfg.method).makes_causal_teacher:
        return EulerCFG(cfg.pattern, s.teacher_steps, s.cfg, s.shift)
    return FewStep(cfg.pattern, s.steps_first, s.steps, context="noisy" if ob.noisy_context else "clean",
                   t_ctx=ob.t_ctx, ctx_start=ob.nc_start)


def student_network(layers: tuple[int, ...], dual: bool):
    """(config change, key map or None) from the init's network to the student's: the init's blocks
    ``layers`` (in that order; () keeps all), MeanFlow's r-embedding (``dual``); embeddings and head kept.
    ``Placement.load_bundle`` applies them whole or shard by shard."""
    def net_config(c: WanConfig) -> WanConfig:
        if layers:
            if len(set(layers)) != len(layers) or not all(0 <= i < c.num_layers for i in layers):
                raise ValueError(f"student_layers {list(layers)} must be distinct block indices of the "
                                 f"{c.num_layers}-layer init")
            c = dataclasses.replace(c, num_layers=len(layers))
        return dual_time(c) if dual else c

    def rename(sd: dict) -> dict:
        out = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
        for new, old in enumerate(layers):
            out.update({f"blocks.{new}.{k[len(f'blocks.{old}.'):]}": v for k, v in sd.items()
                        if k.startswith(f"blocks.{old}.")})
        return out

    return net_config, (rename if layers else None)


def with_layers(b: Bundle, layers: tuple[int, ...]) -> Bundle:
    """The bundle's network cut to the blocks ``layers`` (in that order), embeddings and head kept."""
    if not layers:
        return b
    net_config, rename = student_network(layers, False)
    net = type(b.net)(net_config(b.net.cfg)).to(b.device)
    net.load_state_dict(rename(b.net.state_dict()))
    b.net = net
    return b


class TFData:
    """A synthetic dataset as training batches: sample j of step s is drawn from (seed, DATA, s, j), so
    each process draws its share of the global batch and one or N processes see the same batch.

    A world model's causal teacher may also learn from the world itself: ``path`` a world sample file (.npz of
    `causal-rcm world sample` or a recipe's world stage) instead of a synthetic dataset folder."""

    def __init__(self, path: str, bundle: Bundle, with_ode: bool, seed: int, device):
        from ..data.synthetic import array_file, load_manifest, mapped_keys, read_synthetic

        if not path:
            raise ValueError("this stage needs data= (a synthetic dataset folder written by `causal-rcm synth`)")
        if Path(path).suffix.lower() == ".npz":
            self.data = _world_file(path, bundle, with_ode)
        else:
            # one mapped copy for all processes, made by the first
            for key in mapped_keys(load_manifest(path)["config"], with_ode):
                D.on_main(lambda key=key: array_file(path, key))
            self.data = read_synthetic(path, with_ode=with_ode, mmap=True)
        self.bundle, self.seed, self.device, self.with_ode = bundle, seed, device, with_ode
        self.n_actions = bundle.net.cfg.action_dim
        if self.n_actions and "actions" not in self.data:
            raise ValueError(f"{path} holds no actions, but the model is a world model")
        shape = tuple(self.data["latents"].shape[1:]) if "latents" in self.data else None
        if shape is not None and shape != tuple(bundle.latent_shape):
            raise ValueError(f"{path} holds latents {shape}; the model takes {tuple(bundle.latent_shape)}")

    def batch(self, step: int, ids, tag: int = DATA) -> tuple[obj.Batch, SampleRandom]:
        rng = SampleRandom(self.seed, tag, step, ids, self.device)
        if "latents" in self.data:  # a latent teacher's data are already in the network's space
            idx = rng.randint(len(self.data["latents"])).cpu().numpy()
            x0 = torch.from_numpy(self.data["latents"][idx]).to(self.device, torch.float32)
        else:
            idx = rng.randint(len(self.data["videos"])).cpu().numpy()
            x0 = self.bundle.codec.encode(to_unit(self.data["videos"][idx]).to(self.device))
        eps, eps_ctx = rng.randn(*x0.shape[1:]), rng.randn(*x0.shape[1:])
        ctx, ctx_u = self.bundle.contexts([self.data["prompts"][i] for i in idx])
        actions = None
        if self.n_actions:
            actions = encode_actions(frame_action_ids(self.data["actions"][idx], x0.shape[2],
                                                      self.bundle.codec.temporal_stride),
                                     self.n_actions // self.bundle.codec.temporal_stride, self.device)
        b = obj.Batch(x0, eps, ctx, ctx_u, eps_ctx, actions)
        if self.with_ode:
            b.ode_states = torch.from_numpy(self.data["ode_states"][idx]).to(self.device)
            b.ode_times = torch.from_numpy(self.data["ode_times"]).to(self.device)
        return b, rng


def _world_file(path: str, bundle: Bundle, with_ode: bool) -> dict:
    """A world sample file's videos, prompts and actions, checked against the model's world."""
    from ..worlds.samples import load_world_samples

    if with_ode:
        raise ValueError(f"data={path} is a world sample file; this method needs the teacher's ODE states "
                         "(a synthetic dataset folder written by `causal-rcm synth ode_times=...`)")
    s = load_world_samples(path, bundle.world_or_raise())
    return {k: s[k] for k in ("videos", "prompts", "actions") if k in s}


def train_tf(cfg: TFConfig, run_dir: str | Path, device: str | None = None) -> Path:
    tc, m = cfg.train, METHODS[cfg.method]
    dev = D.init_from_env(resolve_device(device))
    set_matmul_precision(dev)
    pattern = ChunkPattern.parse(cfg.pattern)
    place = Placement(cfg.parallel, dev)
    # every input is loaded and checked before the run folder is touched; a smaller student takes some of
    # the init's blocks, MeanFlow adds the r-embedding (zero last layer: it starts as the network it came from)
    net_config, rename = student_network(cfg.student_layers, m.dual_time)
    src = place.load_bundle(cfg.init, "init", trainable=True, net_config=net_config, rename=rename)
    net = src.net
    pattern.check(src.latent_shape[1])
    data = TFData(cfg.data, src, m.needs_ode, tc.seed, dev)
    teacher = place.load_bundle(cfg.teacher, "teacher").net if m.needs_teacher else None
    micro = place.micro_batches(local_ids(tc.batch, D.rank(), D.world_size()))
    resolved = begin_run(cfg.method, cfg, run_dir, tc.seed, D.world_size(), D.is_main())
    run_dir = Path(run_dir)
    ema = make_ema(net, tc, copy=place.replica)
    stepper = Stepper(net.parameters(), tc)
    v_fn, jvp_fn = obj.net_fns(net)
    nets = Nets(v_fn, jvp_fn, obj.net_fns(teacher)[0] if teacher is not None else None)

    def step_fn(step: int) -> dict:
        metrics: dict[str, float] = {}
        for ids in micro:  # each micro-batch's loss is its mean: 1/n of it makes the rank's mean gradient
            b, rng = data.batch(step, ids)
            with autocast_for(dev, tc.precision):
                loss, mm = m.loss(nets, b, rng, cfg.objective, pattern, StepInfo(step, tc.steps))
            stepper.backward(loss, 1 / len(micro))
            for k, v in mm.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(micro)
        metrics.update(stepper.step(None, step))
        ema.update(net)
        return metrics

    kind = "causal_teacher" if m.makes_causal_teacher else "student"

    def ema_bundle() -> Bundle:
        return Bundle(ema.model, src.text_encoder, bundle_sampling(cfg), src.world, kind, src.codec_config,
                      video=src.video)

    def evaluate(step: int) -> dict:
        return evaluate_bundle(ema_bundle(), cfg.eval)

    done = run_loop(tc, run_dir, step_fn, {"net": net, "ema": ema}, {"opt": stepper.opt},
                    evaluator(src, tc, evaluate), cfg.method,
                    stepper.on_resume, resolved, D.is_main(), D.mean_over_ranks)
    if cfg.method == "tf_scm" and cfg.objective.scm_warmup > 0:
        r_end = obj.tangent_warmup(done, round(cfg.objective.scm_warmup * tc.steps))
        if r_end < 1:
            say(f"warning: the run stopped with tangent warm-up r = {r_end:.2f} < 1: it has not trained the sCM "
                "objective (METHOD.md §4); shorten objective.scm_warmup or train longer")
    return place.save_bundle(ema_bundle(), run_dir / "model.safetensors", method=cfg.method)


__all__ = ["TFConfig", "Objective", "Sampling", "TFData", "tf_preset", "resolve", "train_tf"]
