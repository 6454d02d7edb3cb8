"""Stage 0: train the bidirectional teacher and its text encoder on a built-in world (METHOD.md §1, §7).

    causal-rcm train teacher --preset blob-s [key=value ...] --out RUN

Writes RUN/config.json, RUN/checkpoints/, RUN/metrics.jsonl (train losses and periodic world metrics of
EMA samples), RUN/summary.json and, at the end, RUN/teacher.safetensors (the EMA weights as a bundle). A
world with actions gets an action-conditioned teacher (its prompt and actions dropped together for CFG).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import WanConfig, apply_overrides
from ..config import preset as model_preset
from ..flow import sample_t
from ..models.conditioning import TextEncoderConfig, WorldTextEncoder, encode_actions, frame_action_ids
from ..models.wan import WanDiT
from ..objectives.teacher import flow_matching_loss
from ..runtime import autocast_for, resolve_device, set_matmul_precision
from ..seeding import DATA, SampleRandom, local_ids
from ..stream.bundle import Bundle
from ..stream.codec import to_unit
from ..stream.sampling import Euler
from ..train import distributed as D
from ..train.loop import Stepper, TrainConfig, make_ema, run_loop
from ..train.parallelize import ParallelConfig
from ..train.placement import Placement
from ..worlds.base import WorldConfig
from ..worlds.registry import check_world, make_world
from ..worlds.loader import world_loader
from .common import EvalConfig, begin_run, load_bundle_for, seed_everything
from .report import evaluate_bundle


@dataclass(frozen=True)
class TeacherConfig:
    model: WanConfig = field(default_factory=lambda: model_preset("blob-s"))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: Euler = field(default_factory=Euler)
    eval: EvalConfig = field(default_factory=EvalConfig)
    t_sampler: str = "logit_normal"  # shifted | logit_normal | uniform
    t_mean: float = 0.0
    t_std: float = 1.0
    t_shift: float = 3.0
    cfg_dropout: float = 0.1
    # world models started from real frames (Atari) and I2V: each sample gives its first P frames clean, P
    # drawn from these (0 = none), so the teacher samples from any of them (stream/sample.euler_batch)
    prefix_frames: tuple[int, ...] = ()
    compile: bool = True  # torch.compile the whole network on GPU (one process; parallel.compile: per block)
    data: str = ""  # a world sample file to train on instead of rendering batches (worlds that emulate: Atari)
    init: str = ""  # start from a teacher bundle's weights (e.g. continue the shipped teacher)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        check_world(self.world)
        if any(p < 0 or p >= self.world.frames for p in self.prefix_frames):
            raise ValueError(f"prefix_frames {self.prefix_frames} must lie in 0..{self.world.frames - 1}")


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
            sample=Euler(steps=16), eval=EvalConfig(prompts=4, per_prompt=4, batch=16), compile=False)
    if name == "atari":  # trains on a world-data file (data=...); starts from 1 or 3 real frames
        return TeacherConfig(
            model=model_preset("atari"), world=WorldConfig("atari", "Pong", 64, 21), prefix_frames=(1, 3),
            train=TrainConfig(steps=8000, batch=32, lr=3e-4, warmup=200, ckpt_every=500, eval_every=2000,
                              num_workers=0),
            sample=Euler(steps=30, cfg=2.0, shift=3.0), eval=EvalConfig(prompts=1, per_prompt=64, batch=64))
    if name == "atari-tiny":  # the CPU smoke test of the Atari recipe
        return TeacherConfig(
            model=WanConfig(in_dim=3, out_dim=3, dim=32, ffn_dim=64, freq_dim=32, text_dim=32, num_heads=2,
                            num_layers=2, patch_size=(1, 8, 8)),
            text=TextEncoderConfig(dim=32, num_layers=1, num_heads=2), world=WorldConfig("atari", "Pong", 64, 5),
            prefix_frames=(1,), train=TrainConfig(steps=4, batch=4, lr=1e-3, warmup=1, ckpt_every=4, eval_every=0,
                                                  num_workers=0),
            sample=Euler(steps=4, cfg=2.0), eval=EvalConfig(prompts=1, per_prompt=4, batch=4), compile=False)
    raise ValueError(f"unknown teacher preset {name!r}; choose blob-s, blob-tiny, atari or atari-tiny")


def build_teacher(cfg: TeacherConfig) -> tuple[WanDiT, WorldTextEncoder]:
    if cfg.model.text_dim != cfg.text.dim:
        raise ValueError(f"model.text_dim={cfg.model.text_dim} must equal text.dim={cfg.text.dim}")
    if cfg.model.in_dim != 3 or cfg.model.out_dim != 3:
        raise ValueError("pixel worlds' models see RGB pixels: model.in_dim and model.out_dim must be 3")
    world = make_world(cfg.world)
    n_actions = len(world.action_names)
    if cfg.model.action_dim not in (0, n_actions):
        raise ValueError(f"model.action_dim={cfg.model.action_dim}, but the {cfg.world.name} {cfg.world.variant} "
                         f"world has {n_actions} actions; leave it at 0 to take the world's")
    net = WanDiT(dataclasses.replace(cfg.model, action_dim=n_actions))
    text = WorldTextEncoder.for_prompts(list(world.prompts()) + ["no ball"], **{
        k: v for k, v in cfg.text.to_dict().items() if k != "vocab"})
    return net, text


def _init_text_encoder(have: TextEncoderConfig, want: TextEncoderConfig, init: str) -> WorldTextEncoder:
    """The text encoder a run started from ``init`` trains: the init's own, whose vocabulary may be a superset
    of this world's (the Blobworld-agent prompts use all but one word of the text-to-video world's)."""
    missing = sorted(set(want.vocab) - set(have.vocab))
    if missing or dataclasses.replace(have, vocab=want.vocab) != want:
        why = f"lacks the words {missing}" if missing else "has another size"
        raise ValueError(f"init={init}: its text encoder {why}; start this world from scratch or from a "
                         "teacher of a world with the same prompts")
    return WorldTextEncoder(have)


def train_teacher(cfg: TeacherConfig, run_dir: str | Path, device: str | None = None) -> Path:
    tc = cfg.train
    dev = D.init_from_env(resolve_device(device))
    set_matmul_precision(dev)
    seed_everything(tc.seed)  # the initial weights come from the run's seed
    net, text = build_teacher(cfg)
    if cfg.init:
        start = load_bundle_for(cfg.init, "init", "cpu")
        if dataclasses.replace(start.net.cfg, action_dim=net.cfg.action_dim) != net.cfg:
            raise ValueError(f"init={cfg.init} holds a different model than this config")
        text = _init_text_encoder(start.text_encoder.cfg, text.cfg, cfg.init)
        # an action-free teacher starts a world model: its new action embedding stays at zero (METHOD.md §7)
        missing = net.load_state_dict(start.net.state_dict(), strict=False).missing_keys
        if any(not k.startswith("action_embedding.") for k in missing):
            raise ValueError(f"init={cfg.init} lacks weights {missing[:4]}")
        text.load_state_dict(start.text_encoder.state_dict())
    place = Placement(cfg.parallel, dev)
    ids = local_ids(tc.batch, D.rank(), D.world_size())
    parts = [slice(m.start - ids.start, m.stop - ids.start) for m in place.micro_batches(ids)]
    resolved = begin_run("teacher", cfg, run_dir, tc.seed, D.world_size(), D.is_main())
    run_dir = Path(run_dir)
    teacher = place.prepare(torch.nn.ModuleDict({"net": net, "text_encoder": text}), trainable=True)
    ema = make_ema(teacher, tc, copy=place.replica)
    stepper = Stepper(teacher.parameters(), tc)
    whole = cfg.compile and dev.type == "cuda" and not place.sharded and not cfg.parallel.compile
    fwd = torch.compile(net) if whole else net
    n_actions = net.cfg.action_dim
    loader = {}
    files = _training_file(cfg) if cfg.data else None

    def step_fn(step: int) -> dict:
        rng = SampleRandom(tc.seed, DATA, step, ids, dev)
        t_wait = time.perf_counter()
        if files is not None:  # sample j of step s: a random video of the file, drawn from its own seed
            idx = rng.randint(len(files["videos"])).cpu().numpy()
            batch = {"videos": torch.from_numpy(files["videos"][idx]), "prompts": [files["prompts"][i] for i in idx],
                     **({"actions": torch.from_numpy(files["actions"][idx])} if "actions" in files else {})}
        else:
            if "it" not in loader:  # built at the first step the loop runs: a resumed run starts where it stopped
                loader["it"] = world_loader(cfg.world, tc.batch, tc.seed, step,
                                            tc.num_workers if dev.type == "cuda" else 0, ids)
            batch = next(loader["it"])
        t_wait = time.perf_counter() - t_wait
        x0 = to_unit(batch["videos"]).to(dev, non_blocking=True)
        keep = rng.rand() >= cfg.cfg_dropout  # CFG dropout: the prompt and the actions go together
        prompts = [p if k else "" for p, k in zip(batch["prompts"], keep.tolist())]
        t = sample_t(cfg.t_sampler, rng, cfg.t_shift, cfg.t_mean, cfg.t_std)
        eps = rng.randn(*x0.shape[1:])
        prefix = None
        if cfg.prefix_frames:
            choice = torch.tensor(cfg.prefix_frames, device=dev)
            prefix = choice[rng.randint(len(cfg.prefix_frames))]
        metrics: dict[str, float] = {}
        for part in parts:  # the rank's batch in micro-batches (gradient accumulation)
            actions = None
            if n_actions:
                actions = encode_actions(frame_action_ids(batch["actions"][part].numpy(), x0.shape[2]), n_actions, dev)
                actions = actions.drop(keep[part])
            with autocast_for(dev, tc.precision):
                ctx = text.encode(prompts[part])
                loss, mm = flow_matching_loss(fwd, x0[part], eps[part], t[part], ctx, actions=actions,
                                              prefix=None if prefix is None else prefix[part])
            stepper.backward(loss, 1 / len(parts))
            for k, v in mm.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(parts)
        metrics.update(stepper.step(None, step))
        ema.update(teacher)
        metrics["data_wait_s"] = t_wait
        return metrics

    extra = {"context_frames": max(cfg.prefix_frames)} if cfg.prefix_frames else {}

    def ema_bundle() -> Bundle:
        return Bundle(ema.model["net"], ema.model["text_encoder"], cfg.sample, cfg.world, "teacher", extra=extra)

    def evaluate(step: int) -> dict:
        return evaluate_bundle(ema_bundle(), cfg.eval)

    run_loop(tc, run_dir, step_fn, {"teacher": teacher, "ema": ema}, {"opt": stepper.opt}, evaluate, "teacher",
             stepper.on_resume, resolved, D.is_main(), D.mean_over_ranks)
    return place.save_bundle(ema_bundle(), run_dir / "teacher.safetensors")


def _training_file(cfg: TeacherConfig) -> dict:
    from ..worlds.samples import load_world_samples

    return load_world_samples(cfg.data, cfg.world)


def resolve(preset_name: str, overrides: list[str]) -> TeacherConfig:
    return apply_overrides(teacher_preset(preset_name), overrides)
