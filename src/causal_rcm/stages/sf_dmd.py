"""Stage 3: self-forcing DMD (METHOD.md §5): on-policy refinement of a few-step causal student.

    causal-rcm train sf_dmd --preset blob-s init=RUN/tf_scm/model.safetensors \\
        teacher=RUN/teacher/teacher.safetensors --out RUN/sf_dmd

Each training step is ``critic_ratio`` critic updates (flow matching on no-grad rollouts) followed by one
generator update (DMD on a rollout with gradient through each block's last step; replayed block by block
when ``replay``), and an EMA update of the generator. ``joint`` adds the TF-sCM loss on a synthetic batch
to the generator step (the rCM regulariser; needs ``data`` and ``tf_teacher``). The real score is the
bidirectional teacher with CFG ``w_real``; the critic starts from the same teacher. Prompts are the
world's; no data is needed otherwise.
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
from ..objectives.dmd import critic_loss, dmd_loss, dmd_target
from ..stream.engine import FewStep, Noise
from ..stream.rollout import replay_blocks, rollout
from ..train.loop import NonFiniteLoss, Stepper, TrainConfig, device_and_autocast, make_ema, run_loop
from .common import EvalConfig, begin_run
from .report import evaluate_generator


@dataclass(frozen=True)
class DMDConfig:
    init: str = ""            # the generator's starting bundle (a TF-CM student, a causal teacher, ...)
    teacher: str = ""         # the bidirectional teacher: real score, and the critic's initialisation
    pattern: str = ""         # "" = the init bundle's pattern
    steps_first: int = 4
    steps: int = 2
    context: str = "clean"
    w_real: float = 5.0
    t_shift: float = 5.0      # t_D = shift(U; 5)
    critic_ratio: int = 5
    lr_critic: float = 1e-4
    replay: bool = True
    joint: bool = False       # + TF-sCM on synthetic data in the generator step
    joint_weight: float = 1.0
    data: str = ""
    tf_teacher: str = ""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(betas=(0.0, 0.999), weight_decay=0.0,
                                                                   ema_sigma_rel=0.1))
    eval: EvalConfig = field(default_factory=EvalConfig)


def dmd_preset(name: str) -> DMDConfig:
    base = TrainConfig(betas=(0.0, 0.999), weight_decay=0.0, ema_sigma_rel=0.1, grad_clip=10.0)
    if name == "blob-s":
        return DMDConfig(train=dataclasses.replace(base, steps=600, batch=32, lr=2e-5, warmup=20, ckpt_every=100,
                                                   eval_every=200, num_workers=0))
    if name == "blob-tiny":
        return DMDConfig(train=dataclasses.replace(base, steps=20, batch=8, lr=5e-5, warmup=5, ckpt_every=20,
                                                   eval_every=0, num_workers=0),
                         critic_ratio=2, eval=EvalConfig(prompts=4, per_prompt=4, batch=16))
    raise ValueError(f"unknown sf_dmd preset {name!r}; choose blob-s or blob-tiny")


def resolve(preset_name: str, overrides: list[str]) -> DMDConfig:
    return apply_overrides(dmd_preset(preset_name), overrides)


def train_sf_dmd(cfg: DMDConfig, run_dir: str | Path, device: str | None = None) -> Path:
    if not cfg.init or not cfg.teacher:
        raise ValueError("sf_dmd needs init= (the generator's bundle) and teacher= (the bidirectional teacher)")
    tc = cfg.train
    run_dir = begin_run("sf_dmd", cfg, run_dir, tc.seed)
    dev, autocast = device_and_autocast(tc.precision, device)
    src, real = Generator.load(cfg.init, device="cpu"), Generator.load(cfg.teacher, device="cpu")
    if real.sampling.get("method", "euler") != "euler":
        raise ValueError(f"teacher= must be a bidirectional teacher bundle, got {real.sampling.get('method')}")
    pattern = ChunkPattern.parse(cfg.pattern or src.sampling.get("pattern", "c3-3"))
    world, text = src.world, src.text_encoder.to(dev)
    gen_net = src.net.to(dev).train().requires_grad_(True)
    real_net = real.net.to(dev)
    critic = Generator.load(cfg.teacher, device="cpu").net.to(dev).train().requires_grad_(True)
    ema = make_ema(gen_net, tc)
    gen_opt = Stepper(gen_net.parameters(), tc)
    critic_opt = Stepper(critic.parameters(), tc, lr=cfg.lr_critic)
    how = FewStep(cfg.steps_first, cfg.steps, context=cfg.context)
    shape = (gen_net.cfg.in_dim, world.frames, world.size, world.size)
    prompts_all = world.prompts()
    g = torch.Generator(device=dev)
    joint = _joint_setup(cfg, dev) if cfg.joint else None

    def real_fn(x, t, c):
        return real_net(x, t, c)

    def fake_fn(x, t, c):
        return critic(x, t, c)

    def draw_batch(step: int, sub: int):
        g.manual_seed((tc.seed * 1_000_003 + step) * 16 + sub)
        idx = torch.randint(0, len(prompts_all), (tc.batch,), generator=g, device=dev).tolist()
        prompts = [prompts_all[i] for i in idx]
        with torch.no_grad():
            ctx, ctx_u = text.encode(prompts), text.encode([""] * len(prompts))
        ids = [(step * 16 + sub) * tc.batch + j for j in range(tc.batch)]
        return ctx, ctx_u, Noise(tc.seed, ids, dev)

    def t_and_eps(like):
        return (sample_t_shifted(like.shape[0], cfg.t_shift, g, dev),
                torch.randn(like.shape, generator=g, device=dev))

    def step_fn(step: int) -> dict:
        m: dict[str, float] = {}
        for k in range(cfg.critic_ratio):
            ctx, _, noise = draw_batch(step, 1 + k)
            with torch.no_grad(), autocast():
                G = rollout(gen_net, ctx, noise, shape, pattern, how, step * cfg.critic_ratio + k, replay=True).video
            t_D, eps = t_and_eps(G)
            with autocast():
                loss_c, mc = critic_loss(fake_fn, G.float(), t_D, eps, ctx)
            mc.update({f"critic_{n}": v for n, v in critic_opt.step(loss_c, step).items()})
            for n, v in mc.items():
                m[n] = m.get(n, 0.0) + float(v) / cfg.critic_ratio
        # generator: rollout, DMD target on the whole video, gradients (replayed block by block or plain)
        ctx, ctx_u, noise = draw_batch(step, 0)
        with autocast():
            with torch.set_grad_enabled(not cfg.replay):
                ro = rollout(gen_net, ctx, noise, shape, pattern, how, step, replay=cfg.replay)
            t_D, eps = t_and_eps(ro.video)
            target, md = dmd_target(ro.video.float(), real_fn, fake_fn, t_D, eps, ctx, ctx_u, cfg.w_real)
            if cfg.replay:
                dmd_value = replay_blocks(gen_net, ctx, ro, pattern, target, lambda x0, tb: dmd_loss(x0.float(), tb))
            else:
                loss = dmd_loss(ro.video.float(), target)
                loss.backward()
                dmd_value = loss.detach()
            if joint is not None:
                loss_j, mj = joint(gen_net, text, step)
                (cfg.joint_weight * loss_j).backward()
                md["joint_scm_loss"] = mj["loss"]
        if not torch.isfinite(dmd_value):
            gen_opt.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"DMD loss is {float(dmd_value)}")
        m.update({k: float(v) for k, v in md.items()})
        m.update(gen_opt.step(None, step))  # gradients are already accumulated
        ema.update(gen_net)
        m["loss"] = float(dmd_value)
        return m

    sampling = dict(method="few_step", pattern=pattern.name, steps_first=cfg.steps_first, steps=cfg.steps,
                    context=cfg.context)

    def ema_generator() -> Generator:
        return Generator.from_modules(ema.model, text, world, sampling, "student")

    def evaluate(step: int) -> dict:
        return evaluate_generator(ema_generator(), cfg.eval)

    def on_resume(step: int, extra: dict) -> None:
        gen_opt.on_resume(step, extra, "gen")
        critic_opt.on_resume(step, extra, "critic")

    run_loop(tc, run_dir, step_fn, {"generator": gen_net, "critic": critic, "ema": ema},
             {"gen": gen_opt.opt, "critic": critic_opt.opt}, evaluate, "sf_dmd", on_resume)
    return ema_generator().save(run_dir / "model.safetensors", method="sf_dmd")


def _joint_setup(cfg: DMDConfig, dev):
    """The TF-sCM regulariser of joint mode: a closure computing its loss on a synthetic batch."""
    from ..data.synthetic import read_synthetic

    if not cfg.data or not cfg.tf_teacher:
        raise ValueError("joint mode needs data= (a synthetic dataset) and tf_teacher= (the causal teacher)")
    data = read_synthetic(cfg.data)
    tf_teacher = Generator.load(cfg.tf_teacher, device="cpu").net.to(dev)
    pattern = ChunkPattern.parse(cfg.pattern or "c3-3")
    g = torch.Generator(device=dev)

    def loss_at(net, text, step):
        g.manual_seed(cfg.train.seed * 7_000_003 + step)
        idx = torch.randint(0, len(data["videos"]), (cfg.train.batch,), generator=g, device=dev).cpu()
        x0 = to_model(data["videos"][idx.numpy()]).to(dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        with torch.no_grad():
            ctx = text.encode([data["prompts"][i] for i in idx.tolist()])
            ctx_u = text.encode([""] * len(idx))
        t = sample_t_logit_normal(x0.shape[0], -0.8, 1.6, g, dev)
        v_fn, jvp_fn = obj.net_fns(net)
        return obj.tf_scm_loss(v_fn, jvp_fn, obj.net_fns(tf_teacher)[0], x0, eps, t, ctx, ctx_u, pattern, 1.0)

    return loss_at
