"""What each sub-command does: a thin wrapper over a library call (one-line errors come from ``main``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

MEDIA = (".gif", ".mp4", ".png")


def _positive(name: str, v, allow_zero: bool = False):
    if v is None:
        return v
    if v < (0 if allow_zero else 1):
        raise ValueError(f"--{name} must be {'>= 0' if allow_zero else '>= 1'}, got {v}")
    return v


def _resolve_stage(stage: str, preset: str, overrides: list[str]):
    if stage == "wan_teacher":
        from ..stages.wan import resolve
        return resolve(preset, overrides)
    if stage == "teacher":
        from ..stages.teacher import resolve
        return resolve(preset, overrides)
    if stage == "sf_dmd":
        from ..stages.sf_dmd import resolve
        return resolve(preset, overrides)
    from ..stages.tf import resolve
    return resolve(preset, stage, overrides)


# ----- commands ------------------------------------------------------------------------------------------
def _world_sample(a):
    from ..io import check_writable
    from ..worlds.base import WorldConfig
    from ..worlds.registry import make_world
    from ..worlds.writer import write_world_samples

    _positive("n", a.n)
    _positive("workers", a.workers)
    _positive("seed", a.seed, allow_zero=True)
    if Path(a.out).suffix.lower() != ".npz":
        raise ValueError(f"--out {a.out}: give the .npz sample file to write")
    check_writable(a.out, "--out")
    world = make_world(WorldConfig(a.world, a.variant, a.size, a.frames))
    if a.prompt is not None and a.prompt not in world.prompts():
        raise ValueError(f"--prompt {a.prompt!r} is not a {a.world} {a.variant} prompt; valid: "
                         + ", ".join(repr(x) for x in world.prompts()))
    t0 = time.time()
    write_world_samples(world, a.out, a.n, a.seed, workers=a.workers, prompt=a.prompt)
    print(f"wrote {a.n} {a.world} {a.variant} videos of {a.frames}x{a.size}x{a.size} to {a.out} "
          f"({time.time() - t0:.1f} s)")


def _eval(a):
    from ..eval.report import fmt
    from ..io import finite_or_none
    from ..worlds.samples import load_samples, world_of

    _positive("n-boot", a.n_boot)
    s = load_samples(a.file)
    world = world_of(s)
    context = int(s.get("context_frames", 0))
    scores = (world.intervals(s, context, n_boot=a.n_boot) if a.intervals else world.metrics(s, context))
    if a.json:
        print(json.dumps({k: (list(map(finite_or_none, v)) if isinstance(v, tuple) else finite_or_none(v))
                          for k, v in scores.items()}, indent=2))
    else:
        print(f"{len(s['videos'])} videos, {world.config.name} {world.config.variant}"
              + (f", scored after {context} given frames" if context else ""))
        for k, v in scores.items():
            print(f"{k:20s} {fmt(v)}")


def _config(a):
    from ..stages.common import config_dict

    print(json.dumps(config_dict(_resolve_stage(a.stage, a.preset, a.overrides)), indent=2))


def _train(a):
    from ..io import check_dir_writable

    cfg = _resolve_stage(a.stage, a.preset, a.overrides)
    check_dir_writable(a.out, "--out")
    if a.stage == "wan_teacher":  # imported from the user's Wan2.1 weights, not trained
        from ..stages.wan import run_wan_teacher

        print(f"  bundle       {run_wan_teacher(cfg, a.out)}")
        return
    if a.stage == "teacher":
        from ..stages.teacher import train_teacher as run
    elif a.stage == "sf_dmd":
        from ..stages.sf_dmd import train_sf_dmd as run
    else:
        from ..stages.tf import train_tf as run
    path = run(cfg, a.out, device=a.device)
    _print_summary(Path(a.out), path)


def _print_summary(run_dir: Path, bundle: Path) -> None:
    from ..train import distributed as D

    if not D.is_main():
        return
    s = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    loss, sec = s.get("final_loss"), s.get("seconds", 0)
    print(f"{s.get('stage', 'run')}: {s.get('steps_done', '?')}/{s.get('steps', '?')} steps in "
          + (f"{sec:.1f} s" if sec < 120 else f"{sec / 60:.1f} min")
          + (f", final loss {loss:.4g}" if isinstance(loss, float) else ""))
    print(f"  bundle       {bundle}")
    if s.get("checkpoint"):
        print(f"  checkpoint   {s['checkpoint']}")
    print(f"  log          {run_dir / 'metrics.jsonl'}")
    print(f"  config       {run_dir / 'config.json'}")


def _generate(a):
    import numpy as np

    from ..eval.media import write_media
    from ..io import check_writable
    from ..stream.bundle import Bundle
    from ..stream.sample import sample_videos
    from ..stream.sampling import with_overrides
    from ..worlds.registry import choose_prompts, make_world
    from ..worlds.samples import load_samples, save_samples

    out = Path(a.out)
    if out.suffix.lower() in MEDIA or out.suffix.lower() != ".npz":
        raise ValueError(f"--out {out} names the .npz sample file (e.g. {out.with_suffix('.npz')}); the GIF, MP4 "
                         "and PNG are written beside it")
    for name in ("n", "per_prompt", "steps", "steps_first"):
        _positive(name.replace("_", "-"), getattr(a, name))
    _positive("seed", a.seed, allow_zero=True)
    if a.unconditional and a.prompt is not None:
        raise ValueError("--prompt and --unconditional exclude each other; give one of them")
    if a.prompt is not None and not a.prompt.strip():
        raise ValueError("--prompt is empty; give a prompt, or --unconditional for the unconditional model")
    check_writable(out, "--out")
    actions = None
    if a.actions is not None:
        try:
            actions = np.load(a.actions, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--actions {a.actions}: not a .npy array of integers ({e})") from None
        if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"--actions must hold integers [N, T − 1], got {actions.dtype} {actions.shape}")
    start = load_samples(a.start_from) if a.start_from is not None else None
    bundle = Bundle.load(a.ckpt, device=a.device)
    sampling = with_overrides(bundle.sampling, steps=a.steps, cfg=a.cfg, shift=a.shift, steps_first=a.steps_first)
    world = None if bundle.world is None else make_world(bundle.world)
    n = len(actions) if actions is not None else (len(start["videos"]) if start is not None else a.n)
    if world is not None:
        prompts = choose_prompts(world, n, a.prompt, a.per_prompt, a.unconditional)
    elif a.prompt is None and not a.unconditional:
        raise ValueError("a free-text model (no built-in world) needs --prompt TEXT (or --unconditional)")
    else:
        prompts = [a.prompt or ""] * n
    if start is not None:
        if len(start["videos"]) < n:
            raise ValueError(f"--start-from {a.start_from} holds {len(start['videos'])} videos; {n} are asked for")
        if actions is None:
            actions = start.get("actions")
        start_frames = start["videos"][:n, :bundle.first_block_frames]
        if world is not None and a.prompt is None and a.per_prompt is None and not a.unconditional:
            prompts = [str(p) for p in start["prompts"][:n]]  # the given frames show the scene their prompts name
    else:
        start_frames = None
    t0 = time.time()
    videos = sample_videos(bundle, prompts, seed=a.seed, sampling=sampling, actions=actions, start_frames=start_frames)
    dt = time.time() - t0
    extra = {k: start[k] for k in ("game", "states") if start is not None and k in start}
    save_samples(out, videos, prompts, actions, world=None if world is None else json.dumps(vars(world.config)),
                 context_frames=bundle.first_block_frames if start is not None else 0, **extra)
    media = write_media(videos[:64], out.with_suffix(""))
    print(f"generated {len(videos)} videos in {dt:.1f} s on {bundle.device}: {out}, " + ", ".join(map(str, media)))


def _stream(a):
    import numpy as np
    import torch

    from ..eval.media import write_media
    from ..io import check_writable
    from ..kv_policy import KVPolicy
    from ..runtime import autocast_for
    from ..stream.bundle import Bundle
    from ..stream.engine import Noise
    from ..stream.realtime import realtime_frames
    from ..worlds.registry import make_world
    from ..worlds.samples import save_samples

    _positive("frames", a.frames)
    _positive("window", a.window)
    _positive("seed", a.seed, allow_zero=True)
    if a.out is not None:
        if Path(a.out).suffix.lower() != ".npz":
            raise ValueError(f"--out {a.out}: give the .npz sample file (media are written beside it)")
        check_writable(a.out, "--out")
    bundle = Bundle.load(a.ckpt, device=a.device)
    if not bundle.causal:
        raise ValueError("streaming needs a causal model (a causal teacher or a few-step student)")
    if bundle.world is None:  # a free-text model (Wan2.1)
        if a.prompt is None:
            raise ValueError("a free-text model (no built-in world) needs --prompt TEXT")
        prompt = a.prompt
    else:
        world = make_world(bundle.world)
        prompt = a.prompt if a.prompt is not None else (world.prompts()[0] if world.prompts() else "")
        if world.prompts() and prompt not in world.prompts():
            raise ValueError(f"prompt {prompt!r} is not a {world.config.name} {world.config.variant} prompt")
    if bundle.net.cfg.action_dim:
        raise ValueError("this is a world model: play it with `causal-rcm play --ckpt ...` (actions from the keys)")
    policy = KVPolicy(a.window, a.sink) if a.window else None
    frames = a.frames or bundle.latent_shape[1]
    if (a.graphs or a.compile) and bundle.device.type != "cuda":
        raise ValueError("--graphs and --compile need --device cuda")
    engine = bundle.engine(policy, graphs=a.graphs, compile=a.compile)
    ctx, _ = bundle.contexts([prompt])
    out, times = [], []
    with torch.no_grad(), autocast_for(bundle.device):
        state = engine.start(ctx, None, Noise(a.seed, [0], bundle.device))
        for _, f, t in realtime_frames(engine, state, frames):
            out.append(f)
            times.append(t)
    video = np.concatenate(out, axis=1)
    gaps = np.diff(times)
    print(f"streamed {video.shape[1]} frames on {bundle.device}: first block after {1000 * times[0]:.0f} ms, "
          f"{video.shape[1] / times[-1]:.1f} fps end to end" + (f", {1000 * np.median(gaps):.1f} ms per block"
                                                                  if len(gaps) else ""))
    if a.out is not None:
        save_samples(a.out, video, [prompt])
        write_media(video, Path(a.out).with_suffix(""))
        print(f"wrote {a.out}")


def _export(a):
    import torch

    from ..io import check_writable, load_bundle, save_bundle

    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a bundle is a .safetensors file (e.g. {out.with_suffix('.safetensors')})")
    check_writable(a.out, "--out")
    groups, config = load_bundle(a.ckpt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    path = save_bundle(a.out, groups, config, dtype=dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {a.dtype})")


def _play(a):
    from ..serve.app import play
    from ..serve.options import PlayOptions

    _positive("window", a.window)
    _positive("sink", a.sink, allow_zero=True)
    _positive("max-players", a.max_players)
    _positive("threads", a.threads)
    play(a.ckpt, a.host, a.port, PlayOptions(fps=a.fps, window=a.window, sink=a.sink, side_by_side=a.side_by_side,
                                             max_players=a.max_players, device=a.device, threads=a.threads,
                                             graphs=a.graphs, start_rendered=a.start_rendered))


def _encode(a):
    from ..io import check_dir_writable
    from ..stages.encode import encode_clips
    from ..stages.synth import synth_summary

    _positive("batch", a.batch)
    _positive("shard-size", a.shard_size)
    check_dir_writable(a.out, "--out")
    t0 = time.time()
    out = encode_clips(a.ckpt, a.videos, a.out, a.batch, a.shard_size, device=a.device)
    print(synth_summary(out, time.time() - t0))


def _synth(a):
    from ..io import check_dir_writable
    from ..stages.synth import SynthConfig, parse_times, run_synth, synth_summary

    _positive("seed", a.seed, allow_zero=True)
    check_dir_writable(a.out, "--out")
    cfg = SynthConfig(teacher=a.teacher, n=a.n, seed=a.seed, shard_size=a.shard_size, batch=a.batch,
                      steps=_positive("steps", a.steps), cfg=a.cfg, shift=a.shift, prompts_file=a.prompts,
                      ode_times=None if a.ode_times is None else parse_times(a.ode_times), data=a.data or "")
    t0 = time.time()
    out = run_synth(cfg, a.out, device=a.device)
    print(synth_summary(out, time.time() - t0))


def _paired(a):
    from ..io import check_writable
    from ..stages.paired import make_targets, paired_distance
    from ..stream.bundle import Bundle

    if a.action == "make":
        from ..data.synthetic import read_synthetic

        _positive("n", a.n)
        _positive("steps", a.steps)
        _positive("seed", a.seed, allow_zero=True)
        check_writable(a.out, "--out")
        d = read_synthetic(a.data)
        n = min(a.n, len(d["videos"]))
        path = make_targets(Bundle.load(a.teacher, device=a.device), d["videos"][:n], d["prompts"][:n], a.out,
                            seed=a.seed, steps=a.steps, actions=d["actions"][:n] if "actions" in d else None)
        print(f"paired targets for {n} clips: {path}")
    else:
        from ..eval.report import fmt

        for k, v in paired_distance(Bundle.load(a.ckpt, device=a.device), a.targets).items():
            print(f"{k:16s} {fmt(v)}")


def _run(a):
    from ..stages.recipe import run_recipe

    print(f"report: {run_recipe(a.recipe, out=a.out, device=a.device)}")


def _demo(a):
    from ..stages.demo import run_demo

    print(f"report: {run_demo(out=a.out, device=a.device, assets=a.assets)}")


# ----- parser --------------------------------------------------------------------------------------------
