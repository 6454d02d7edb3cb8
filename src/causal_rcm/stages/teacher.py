"""Stage 0: train the bidirectional teacher and its text encoder on a built-in world (METHOD.md §1).

    causal-rcm train teacher --preset blob-s [key=value ...] --out RUN

Writes RUN/config.json, RUN/checkpoints/, RUN/metrics.jsonl (train losses and periodic world metrics of
EMA samples) and, at the end, RUN/teacher.safetensors (the EMA weights as a bundle).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import WanConfig, apply_overrides
from ..config import preset as model_preset
from ..data.blobworld import to_model
from ..data.stream import world_loader
from ..flow import sample_t
from ..generate import Generator
from ..models.conditioning import TextEncoderConfig, WorldTextEncoder
from ..models.wan import WanDiT
from ..objectives.teacher import flow_matching_loss
from ..train.loop import Stepper, TrainConfig, device_and_autocast, make_ema, run_loop
from .common import EvalConfig, SampleConfig, WorldConfig, begin_run
from .report import evaluate_generator


@dataclass(frozen=True)
class TeacherConfig:
    model: WanConfig = field(default_factory=lambda: model_preset("blob-s"))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    t_sampler: str = "logit_normal"  # shifted | logit_normal | uniform
    t_mean: float = 0.0
    t_std: float = 1.0
    t_shift: float = 3.0
    cfg_dropout: float = 0.1
    compile: bool = True  # torch.compile the network on GPU
    init: str = ""  # start from a teacher bundle's weights (e.g. continue the shipped teacher)


def teacher_preset(name: str) -> TeacherConfig:
    if name == "blob-s":
        return TeacherConfig(train=TrainConfig(steps=12000, batch=128, lr=5e-4, warmup=300, ckpt_every=500,
                                               eval_every=2000, num_workers=12))
    if name == "blob-tiny":
        return TeacherConfig(
            model=model_preset("blob-tiny"), text=TextEncoderConfig(dim=32, num_layers=1, num_heads=2),
            world=WorldConfig(size=16, frames=9),
            train=TrainConfig(steps=1000, batch=32, lr=1e-3, warmup=50, ckpt_every=250,
                              eval_every=0, num_workers=1),
            sample=SampleConfig(steps=16), eval=EvalConfig(prompts=4, per_prompt=4, batch=16), compile=False)
    raise ValueError(f"unknown teacher preset {name!r}; choose blob-s or blob-tiny")


def build_teacher(cfg: TeacherConfig) -> tuple[WanDiT, WorldTextEncoder]:
    if cfg.model.text_dim != cfg.text.dim:
        raise ValueError(f"model.text_dim={cfg.model.text_dim} must equal text.dim={cfg.text.dim}")
    if cfg.model.in_dim != 3 or cfg.model.out_dim != 3:
        raise ValueError("Blobworld models see RGB pixels: model.in_dim and model.out_dim must be 3")
    net = WanDiT(cfg.model)
    text = WorldTextEncoder.for_prompts(list(cfg.world.prompts()) + ["no ball"], **{
        k: v for k, v in cfg.text.to_dict().items() if k != "vocab"})
    return net, text


def train_teacher(cfg: TeacherConfig, run_dir: str | Path, device: str | None = None) -> Path:
    tc = cfg.train
    run_dir = begin_run("teacher", cfg, run_dir, tc.seed)
    dev, autocast = device_and_autocast(tc.precision, device)
    net, text = build_teacher(cfg)
    if cfg.init:
        start = Generator.load(cfg.init, device="cpu")
        if start.net.cfg != cfg.model or start.text_encoder.cfg != text.cfg:
            raise ValueError(f"init={cfg.init} holds a different model or text encoder than this config")
        net.load_state_dict(start.net.state_dict())
        text.load_state_dict(start.text_encoder.state_dict())
    teacher = torch.nn.ModuleDict({"net": net, "text_encoder": text}).to(dev)
    ema = make_ema(teacher, tc)
    stepper = Stepper(teacher.parameters(), tc)
    fwd = torch.compile(net) if (cfg.compile and dev.type == "cuda") else net
    gen_t = torch.Generator(device=dev)
    sampling = dataclasses.asdict(cfg.sample) | {"method": "euler"}
    data = {}

    def step_fn(step: int) -> dict:
        if "it" not in data:
            data["it"] = world_loader(cfg.world, tc.batch, tc.seed, step, tc.num_workers if dev.type == "cuda" else 0)
        t_wait = time.perf_counter()
        batch = next(data["it"])
        t_wait = time.perf_counter() - t_wait
        gen_t.manual_seed(tc.seed * 1_000_003 + step)
        x0 = to_model(batch["videos"]).to(dev, non_blocking=True)
        drop = torch.rand(x0.shape[0], generator=gen_t, device=dev).tolist()
        prompts = [p if d >= cfg.cfg_dropout else "" for p, d in zip(batch["prompts"], drop)]
        t = sample_t(cfg.t_sampler, x0.shape[0], gen_t, dev, cfg.t_shift, cfg.t_mean, cfg.t_std)
        eps = torch.randn(x0.shape, generator=gen_t, device=dev)
        with autocast():
            ctx = text.encode(prompts)
            loss, metrics = flow_matching_loss(fwd, x0, eps, t, ctx)
        metrics.update(stepper.step(loss, step))
        ema.update(teacher)
        metrics["data_wait_s"] = t_wait
        return {k: float(v) for k, v in metrics.items()}

    def ema_generator() -> Generator:
        return Generator.from_modules(ema.model["net"], ema.model["text_encoder"], cfg.world, sampling)

    def evaluate(step: int) -> dict:
        return evaluate_generator(ema_generator(), cfg.eval)

    run_loop(tc, run_dir, step_fn, {"teacher": teacher, "ema": ema}, {"opt": stepper.opt}, evaluate, "teacher",
             stepper.on_resume)
    return ema_generator().save(run_dir / "teacher.safetensors")


def resolve(preset_name: str, overrides: list[str]) -> TeacherConfig:
    return apply_overrides(teacher_preset(preset_name), overrides)
