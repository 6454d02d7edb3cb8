"""Stage 3: self-forcing DMD (METHOD.md §5): on-policy refinement of a few-step causal student.

    causal-rcm train sf_dmd --preset blob-s init=RUN/tf_scm/model.safetensors \\
        teacher=RUN/teacher/teacher.safetensors data=RUN/synth --out RUN/sf_dmd

Each training step is ``critic_ratio`` critic updates (flow matching on no-grad rollouts) followed by one
generator update (DMD on a rollout with gradient through each block's last step; replayed block by block
when ``replay``), and an EMA update of the generator. The real score is the bidirectional teacher with the
CFG scale the synthetic data were drawn with (read from ``data``'s manifest, else the teacher bundle's own
sampling: one constant, never a second one); the critic starts from the same teacher. A causal teacher may be
the real score instead (a world model's teacher that learnt the world's own videos frame by frame and follows
its actions where a bidirectional teacher did not: docs/results/world_models.md): the real and the fake score
then see each block of the rollout noised at t_D with the rollout's earlier frames as clean context (the TF
layout of the teacher's pattern), so DMD matches the generator's next-block distributions given its own past.
``joint`` adds the TF-sCM loss (``objectives/tf_methods``, with this run's ``objective`` and the generator's own
chunk pattern) on a synthetic batch to the generator step (the rCM regulariser; needs ``data`` and
``tf_teacher``). World models roll out under the world's behaviour-policy actions, which both scores see.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import apply_overrides
from ..flow import shift
from ..masks import ChunkPattern, teacher_forcing
from ..models.conditioning import encode_actions, frame_action_ids
from ..objectives import tf as obj
from ..objectives.dmd import critic_loss, dmd_loss, dmd_target
from ..objectives.self_forcing import replay_blocks, rollout
from ..objectives.tf_methods import METHODS, Nets, Objective, StepInfo
from ..runtime import autocast_for, resolve_device, set_matmul_precision
from ..seeding import CRITIC, GENERATOR, JOINT, SampleRandom, derive, local_ids
from ..stream.bundle import Bundle
from ..stream.codec import to_unit
from ..stream.engine import Noise
from ..stream.sampling import Euler, EulerCFG, FewStep
from ..train import distributed as D
from ..train.loop import NonFiniteLoss, Stepper, TrainConfig, make_ema, run_loop
from ..train.parallelize import ParallelConfig
from ..train.placement import Placement
from ..worlds.registry import make_world
from .common import EvalConfig, begin_run, evaluator
from .report import evaluate_bundle
from .tf import TFData


@dataclass(frozen=True)
class DMDConfig:
    init: str = ""            # the generator's starting bundle (a TF-CM student, a causal teacher, ...)
    teacher: str = ""         # the real score (bidirectional, or causal: TF layout) and the critic's init
    data: str = ""            # the synthetic dataset (its CFG scale is the real score's; joint mode's batches)
                              # or a world sample file (a world model's first frames and actions)
    pattern: str = ""         # "" = the init bundle's pattern
    steps_first: int = 4
    steps: int = 2
    context: str = ""         # "" = the init bundle's (clean | noisy)
    w_real: float = 0.0       # > 0 overrides the CFG scale read from data / the teacher (an ablation)
    t_shift: float = 5.0      # t_D = shift(U; 5)
    critic_ratio: int = 5
    lr_critic: float = 1e-4
    replay: bool = True
    joint: bool = False       # + TF-sCM on synthetic data in the generator step
    joint_weight: float = 1.0
    tf_teacher: str = ""
    objective: Objective = field(default_factory=Objective)  # joint mode's TF-sCM settings
    train: TrainConfig = field(default_factory=lambda: TrainConfig(betas=(0.0, 0.999), weight_decay=0.0,
                                                                   ema_sigma_rel=0.1))
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        if self.critic_ratio < 1:
            raise ValueError(f"critic_ratio must be >= 1, got {self.critic_ratio}")


def dmd_preset(name: str) -> DMDConfig:
    base = TrainConfig(betas=(0.0, 0.999), weight_decay=0.0, ema_sigma_rel=0.1)
    if name == "blob-s":
        return DMDConfig(train=dataclasses.replace(base, steps=600, batch=32, lr=2e-5, warmup=20, ckpt_every=100,
                                                   eval_every=200, num_workers=0))
    if name == "blob-tiny":
        return DMDConfig(train=dataclasses.replace(base, steps=100, batch=8, lr=5e-5, warmup=5, ckpt_every=50,
                                                   eval_every=0, num_workers=0),
                         critic_ratio=2, eval=EvalConfig(prompts=4, per_prompt=4, batch=16))
    if name == "atari":
        return DMDConfig(train=dataclasses.replace(base, steps=400, batch=16, lr=2e-5, warmup=20, ckpt_every=100,
                                                   eval_every=200, num_workers=0),
                         eval=EvalConfig(prompts=1, per_prompt=64, batch=64))
    if name == "atari-tiny":
        return DMDConfig(train=dataclasses.replace(base, steps=2, batch=2, lr=5e-5, warmup=1, ckpt_every=2,
                                                   eval_every=0, num_workers=0),
                         critic_ratio=1, eval=EvalConfig(prompts=1, per_prompt=2, batch=2))
    if name in ("wan2.1-1.3b", "wan2.1-14b"):  # Self-Forcing's rates (generator 2e-6, critic 4e-7, ratio 5)
        from .wan import wan_parallel

        return DMDConfig(train=dataclasses.replace(base, steps=600, batch=8, lr=2e-6, warmup=20, ckpt_every=50,
                                                   eval_every=0, log_every=10, num_workers=0),
                         lr_critic=4e-7, parallel=wan_parallel(name, ac="full"))
    if name == "wan-tiny":
        return DMDConfig(train=dataclasses.replace(base, steps=2, batch=2, lr=5e-5, warmup=1, ckpt_every=2,
                                                   eval_every=0, num_workers=0), critic_ratio=1)
    raise ValueError(f"unknown sf_dmd preset {name!r}; choose blob-s, blob-tiny, atari, atari-tiny, wan2.1-1.3b, "
                     "wan2.1-14b or wan-tiny")


def resolve(preset_name: str, overrides: list[str]) -> DMDConfig:
    return apply_overrides(dmd_preset(preset_name), overrides)


def real_cfg(cfg: DMDConfig, teacher: Bundle) -> float:
    """The real score's CFG scale: the synthetic data's (the distribution DMD matches), else (no data, real
    clips, or a world sample file) the teacher's."""
    if cfg.w_real > 0:
        return cfg.w_real
    if cfg.data and Path(cfg.data).suffix.lower() != ".npz":
        from ..data.synthetic import load_manifest

        sampling = load_manifest(cfg.data)["config"].get("sampling")
        if sampling:  # real clips (``causal-rcm encode``) were drawn by no teacher: the teacher's own scale
            return float(sampling["cfg"])
    return float(teacher.sampling.cfg)


def train_sf_dmd(cfg: DMDConfig, run_dir: str | Path, device: str | None = None) -> Path:
    if not cfg.init or not cfg.teacher:
        raise ValueError("sf_dmd needs init= (the generator's bundle) and teacher= (the real score: a "
                         "bidirectional or a causal teacher)")
    tc = cfg.train
    dev = D.init_from_env(resolve_device(device))
    set_matmul_precision(dev)
    place = Placement(cfg.parallel, dev)
    src = place.load_bundle(cfg.init, "init", trainable=True)
    real = place.load_bundle(cfg.teacher, "teacher")
    if not isinstance(real.sampling, (Euler, EulerCFG)):
        raise ValueError(f"teacher= must be a teacher bundle (bidirectional or causal), got a student (sampling "
                         f"{real.sampling.method!r})")
    # a causal teacher scores block k given the rollout's frames before it, clean; the critic it starts as too
    tf_mask = teacher_forcing(ChunkPattern.parse(real.sampling.pattern)) if real.causal else None
    if not src.causal:
        raise ValueError("init= must be a causal model (a causal teacher or a few-step student)")
    w_real = real_cfg(cfg, real)
    init_sp = src.sampling
    how = FewStep(cfg.pattern or init_sp.pattern, cfg.steps_first, cfg.steps,
                  context=cfg.context or getattr(init_sp, "context", "clean"),
                  t_ctx=getattr(init_sp, "t_ctx", 5 / 8), ctx_start=getattr(init_sp, "ctx_start", 1))
    pattern = ChunkPattern.parse(how.pattern)
    world, text = src.world, src.text_encoder
    w = None if world is None else make_world(world)
    gen_net = src.net
    real_net = real.net
    critic = place.load_bundle(cfg.teacher, "teacher", trainable=True).net
    ema = make_ema(gen_net, tc, copy=place.replica)
    gen_opt = Stepper(gen_net.parameters(), tc)
    critic_opt = Stepper(critic.parameters(), tc, lr=cfg.lr_critic)
    shape = src.latent_shape
    prompts_all = _rollout_prompts(cfg, w)
    ids = local_ids(tc.batch, D.rank(), D.world_size())
    micro = place.micro_batches(ids)
    n_acc = len(micro)  # each micro-batch's loss is its mean: 1/n of it makes the rank's mean gradient
    n_actions = gen_net.cfg.action_dim
    joint = _joint_setup(cfg, src, pattern, dev, ids, place) if cfg.joint else None
    resolved = begin_run("sf_dmd", cfg, run_dir, tc.seed, D.world_size(), D.is_main())
    run_dir = Path(run_dir)

    def scores(G: torch.Tensor):
        """(real_fn, fake_fn) on noisy versions of the rollout G: whole videos for a bidirectional teacher; for
        a causal one, the TF layout [G clean | x noisy] (G tiled over the CFG halves)."""
        if tf_mask is None:
            return (lambda x, t, c, actions=None: real_net(x, t, c, actions=actions),
                    lambda x, t, c, actions=None: critic(x, t, c, actions=actions))
        clean = G.detach()

        def tf_layout(net):
            def fn(x, t, c, actions=None):
                x_ctx = clean.repeat(x.shape[0] // clean.shape[0], 1, 1, 1, 1).to(x.dtype)
                t_ctx = torch.zeros(x.shape[0], x.shape[2], device=x.device)
                return obj.tf_velocity(net, x_ctx, t_ctx, x, t, c, tf_mask, actions=actions)
            return fn

        return tf_layout(real_net), tf_layout(critic)

    starts = w is not None and w.starts_from_frames
    if starts and not cfg.data:
        raise ValueError(f"a {world.name} world model starts from real frames: give data= (its synthetic dataset), "
                         "whose first frames and actions start the rollouts")
    starts_from = TFData(cfg.data, src, False, tc.seed, dev).data if starts else None
    given = src.first_block_frames if starts else 0

    def draw(step: int, tag: int, sub: int, ids: range):
        """One rollout batch of samples ``ids``: prompts, contexts, per-sample noise, actions, given first
        frames, and the DMD/critic draws (per frame: the given frames at t_D = 0)."""
        rng = SampleRandom(tc.seed, tag, step * 64 + sub, ids, dev)
        prefill, a = None, None
        if starts_from is not None:  # real first frames and the actions recorded after them
            rows = rng.randint(len(starts_from["videos"])).cpu().numpy()
            prompts = [starts_from["prompts"][i] for i in rows]
            prefill = src.codec.encode(to_unit(starts_from["videos"][rows][:, :given]).to(dev))
            a = starts_from["actions"][rows]
        else:
            prompts = [prompts_all[i] for i in rng.randint(len(prompts_all)).tolist()]
            if n_actions:  # the world's behaviour policy: the same distribution the data follow
                a = w.behaviour_actions([derive(tc.seed, tag, step, sub, j) for j in ids])
        ctx, ctx_u = src.contexts(prompts)
        noise = Noise(tc.seed, [derive(tag, step, sub, j) for j in ids], dev)
        actions = None if a is None else encode_actions(frame_action_ids(a, shape[1]), n_actions, dev)
        t_D = shift(rng.rand(), cfg.t_shift)
        if given:
            t_D = t_D[:, None].repeat(1, shape[1])
            t_D[:, :given] = 0
        eps = rng.randn(*shape)
        return ctx, ctx_u, noise, actions, prefill, t_D, eps

    def add(m: dict, metrics: dict, weight: float) -> None:
        for n, v in metrics.items():
            m[n] = m.get(n, 0.0) + float(v) * weight

    def step_fn(step: int) -> dict:
        m: dict[str, float] = {}
        for k in range(cfg.critic_ratio):
            for ids in micro:
                ctx, _, noise, actions, prefill, t_D, eps = draw(step, CRITIC, k, ids)
                with torch.no_grad(), autocast_for(dev, tc.precision), place.gathered(gen_net):
                    G = rollout(gen_net, ctx, noise, shape, how, step * cfg.critic_ratio + k, replay=True,
                                actions=actions, prefill=prefill).video
                with autocast_for(dev, tc.precision):
                    loss_c, mc = critic_loss(scores(G)[1], G.float(), t_D, eps, ctx, actions, given)
                critic_opt.backward(loss_c, 1 / n_acc)
                add(m, mc, 1 / (n_acc * cfg.critic_ratio))
            add(m, {f"critic_{n}": v for n, v in critic_opt.step(None, step).items()}, 1 / cfg.critic_ratio)
        # generator: rollout, DMD target on the whole video, gradients (replayed block by block or plain)
        dmd_value = torch.zeros((), dtype=torch.float64, device=dev)
        for ids in micro:
            ctx, ctx_u, noise, actions, prefill, t_D, eps = draw(step, GENERATOR, 0, ids)
            with autocast_for(dev, tc.precision):
                with torch.set_grad_enabled(not cfg.replay), place.gathered(gen_net, enabled=cfg.replay):
                    ro = rollout(gen_net, ctx, noise, shape, how, step, replay=cfg.replay, actions=actions,
                                 prefill=prefill)
                target, md = dmd_target(ro.video.float(), *scores(ro.video.float()), t_D, eps, ctx, ctx_u, w_real,
                                        actions)
                if cfg.replay:
                    dmd_value += replay_blocks(gen_net, ctx, ro, pattern, target,
                                               lambda x0, tb: dmd_loss(x0.float(), tb) / n_acc, actions)
                else:
                    loss = dmd_loss(ro.video.float(), target) / n_acc
                    loss.backward()
                    dmd_value += loss.detach()
                if joint is not None:
                    loss_j, mj = joint(gen_net, step, ids)
                    (cfg.joint_weight * loss_j / n_acc).backward()
                    md["joint_scm_loss"] = mj["loss"]
            add(m, md, 1 / n_acc)
        if not D.all_finite(dmd_value):
            gen_opt.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"DMD loss is {float(dmd_value)} (on this or another process)")
        m.update(gen_opt.step(None, step))  # gradients are already accumulated
        ema.update(gen_net)
        m["loss"] = float(dmd_value)
        return m

    def ema_bundle() -> Bundle:
        return Bundle(ema.model, text, how, world, "student", src.codec_config, video=src.video)

    def evaluate(step: int) -> dict:
        return evaluate_bundle(ema_bundle(), cfg.eval)

    def on_resume(step: int, extra: dict) -> None:
        gen_opt.on_resume(step, extra, "gen")
        critic_opt.on_resume(step, extra, "critic")

    run_loop(tc, run_dir, step_fn, {"generator": gen_net, "critic": critic, "ema": ema},
             {"gen": gen_opt.opt, "critic": critic_opt.opt}, evaluator(src, tc, evaluate), "sf_dmd", on_resume,
             resolved, D.is_main(),
             D.mean_over_ranks)
    return place.save_bundle(ema_bundle(), run_dir / "model.safetensors", method="sf_dmd", w_real=w_real)


def _rollout_prompts(cfg: DMDConfig, world) -> tuple[str, ...]:
    """The prompts rollouts draw from: the world's, or a free-text model's synthetic dataset's (its distinct
    prompts, the distribution the real score was sampled on)."""
    if world is not None:
        return world.prompts() or ("",)
    if not cfg.data:
        raise ValueError("a free-text model draws its rollout prompts from its synthetic data: give data=")
    from ..data.shards import read_shards
    from ..data.synthetic import FORMAT

    return tuple(dict.fromkeys(str(p) for p in read_shards(cfg.data, ["prompts"], fmt=FORMAT)["prompts"]))


def _joint_setup(cfg: DMDConfig, src: Bundle, pattern: ChunkPattern, dev, ids, place: Placement | None = None):
    """Joint mode's regulariser: the TF-sCM recipe (this run's objective, the generator's pattern) on a
    synthetic batch of samples ``ids`` (or a micro-batch of them); a closure ``loss_at(net, step[, ids])``."""
    if not cfg.data or not cfg.tf_teacher:
        raise ValueError("joint mode needs data= (a synthetic dataset) and tf_teacher= (the causal teacher)")
    data = TFData(cfg.data, src, False, cfg.train.seed, dev)
    tf_teacher = (place or Placement(cfg.parallel, dev)).load_bundle(cfg.tf_teacher, "tf_teacher").net
    recipe = METHODS["tf_scm"]

    def loss_at(net, step, ids=ids):
        b, rng = data.batch(step, ids, tag=JOINT)
        v_fn, jvp_fn = obj.net_fns(net)
        return recipe.loss(Nets(v_fn, jvp_fn, obj.net_fns(tf_teacher)[0]), b, rng, cfg.objective, pattern,
                           StepInfo(step, cfg.train.steps))

    return loss_at
