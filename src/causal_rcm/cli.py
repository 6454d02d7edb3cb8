"""The ``causal-rcm`` command line. Each sub-command is a thin wrapper over a library call.

Every expected failure (bad input, a missing or corrupt file, a diverged run, Ctrl-C) ends with one line that
names the fix and a non-zero exit code; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STAGES = ["teacher", "tf", "df", "tf_dcm", "tf_scm", "tf_meanflow", "ode_init", "sf_dmd"]
PRESETS = {"teacher": ("blob-s", "blob-tiny"), "sf_dmd": ("blob-s", "blob-tiny"), "tf": ("blob-s", "blob-tiny")}
MEDIA = (".gif", ".mp4", ".png")

EPILOG = """\
presets: --preset blob-s (Blobworld 32x32, 21 frames, one GPU) or blob-tiny (16x16, 9 frames, CPU minutes)
config keys: `causal-rcm config STAGE --preset P` prints every key of a stage with its value; override any
             of them as key=value (e.g. train.steps=2000 objective.scm_warmup=0.02)
outputs: bundles are .safetensors (+ .json beside); samples are .npz (videos uint8 [N, T, H, W, 3], prompts,
         actions) with a .gif, .mp4 and .png strip beside them; runs write config.json, metrics.jsonl,
         checkpoints/ and summary.json
"""


def _positive(name: str, v, allow_zero: bool = False):
    if v is None:
        return v
    if v < (0 if allow_zero else 1):
        raise ValueError(f"--{name} must be {'>= 0' if allow_zero else '>= 1'}, got {v}")
    return v


def _resolve_stage(stage: str, preset: str, overrides: list[str]):
    if stage == "teacher":
        from .stages.teacher import resolve
        return resolve(preset, overrides)
    if stage == "sf_dmd":
        from .stages.sf_dmd import resolve
        return resolve(preset, overrides)
    from .stages.tf import resolve
    return resolve(preset, stage, overrides)


# ----- commands ------------------------------------------------------------------------------------------
def _world_sample(a):
    from .io import check_writable
    from .worlds.base import WorldConfig
    from .worlds.registry import make_world
    from .worlds.writer import write_world_samples

    _positive("n", a.n)
    _positive("workers", a.workers)
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
    from .eval.report import fmt
    from .io import finite_or_none
    from .worlds.samples import load_samples, world_of

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
    from .stages.common import config_dict

    print(json.dumps(config_dict(_resolve_stage(a.stage, a.preset, a.overrides)), indent=2))


def _train(a):
    from .io import check_dir_writable

    cfg = _resolve_stage(a.stage, a.preset, a.overrides)
    check_dir_writable(a.out, "--out")
    if a.stage == "teacher":
        from .stages.teacher import train_teacher as run
    elif a.stage == "sf_dmd":
        from .stages.sf_dmd import train_sf_dmd as run
    else:
        from .stages.tf import train_tf as run
    path = run(cfg, a.out, device=a.device)
    _print_summary(Path(a.out), path)


def _print_summary(run_dir: Path, bundle: Path) -> None:
    from .train import distributed as D

    if not D.is_main():
        return
    s = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    loss = s.get("final_loss")
    print(f"{s.get('stage', 'run')}: {s.get('steps_done', '?')}/{s.get('steps', '?')} steps in "
          f"{s.get('seconds', 0) / 60:.1f} min" + (f", final loss {loss:.4g}" if isinstance(loss, float) else ""))
    print(f"  bundle       {bundle}")
    if s.get("checkpoint"):
        print(f"  checkpoint   {s['checkpoint']}")
    print(f"  log          {run_dir / 'metrics.jsonl'}")
    print(f"  config       {run_dir / 'config.json'}")


def _generate(a):
    import numpy as np

    from .eval.media import write_media
    from .io import check_writable
    from .stream.bundle import Bundle
    from .stream.sample import sample_videos
    from .stream.sampling import with_overrides
    from .worlds.registry import choose_prompts, make_world
    from .worlds.samples import load_samples, save_samples

    out = Path(a.out)
    if out.suffix.lower() in MEDIA or out.suffix.lower() != ".npz":
        raise ValueError(f"--out {out} names the .npz sample file (e.g. {out.with_suffix('.npz')}); the GIF, MP4 "
                         "and PNG are written beside it")
    for name in ("n", "per_prompt", "steps", "steps_first"):
        _positive(name.replace("_", "-"), getattr(a, name))
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
    world = make_world(bundle.world_or_raise())
    n = len(actions) if actions is not None else (len(start["videos"]) if start is not None else a.n)
    prompts = choose_prompts(world, n, a.prompt, a.per_prompt, a.unconditional)
    if start is not None:
        if actions is None:
            actions = start.get("actions")
        start_frames = start["videos"][:n, :bundle.first_block_frames]
    else:
        start_frames = None
    t0 = time.time()
    videos = sample_videos(bundle, prompts, seed=a.seed, sampling=sampling, actions=actions, start_frames=start_frames)
    dt = time.time() - t0
    extra = {k: start[k] for k in ("game", "states") if start is not None and k in start}
    save_samples(out, videos, prompts, actions, world=json.dumps(vars(world.config)),
                 context_frames=bundle.first_block_frames if start is not None else 0, **extra)
    media = write_media(videos[:64], out.with_suffix(""))
    print(f"generated {len(videos)} videos in {dt:.1f} s on {bundle.device}: {out}, " + ", ".join(map(str, media)))


def _stream(a):
    import numpy as np
    import torch

    from .eval.media import write_media
    from .io import check_writable
    from .kv_policy import KVPolicy
    from .runtime import autocast_for
    from .stream.bundle import Bundle
    from .stream.engine import Noise
    from .stream.realtime import realtime_frames
    from .worlds.registry import make_world
    from .worlds.samples import save_samples

    _positive("frames", a.frames)
    _positive("window", a.window)
    if a.out is not None:
        if Path(a.out).suffix.lower() != ".npz":
            raise ValueError(f"--out {a.out}: give the .npz sample file (media are written beside it)")
        check_writable(a.out, "--out")
    bundle = Bundle.load(a.ckpt, device=a.device)
    if not bundle.causal:
        raise ValueError("streaming needs a causal model (a causal teacher or a few-step student)")
    world = make_world(bundle.world_or_raise())
    prompt = a.prompt if a.prompt is not None else (world.prompts()[0] if world.prompts() else "")
    if world.prompts() and prompt not in world.prompts():
        raise ValueError(f"prompt {prompt!r} is not a {world.config.name} {world.config.variant} prompt")
    if bundle.net.cfg.action_dim:
        raise ValueError("this is a world model: play it with `causal-rcm play --ckpt ...` (actions from the keys)")
    policy = KVPolicy(a.window, a.sink) if a.window else None
    frames = a.frames or bundle.latent_shape[1]
    if a.graphs and bundle.device.type != "cuda":
        raise ValueError("--graphs needs --device cuda")
    engine = bundle.engine(policy, graphs=a.graphs)
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

    from .io import check_writable, load_bundle, save_bundle

    check_writable(a.out, "--out")
    groups, config = load_bundle(a.ckpt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    path = save_bundle(a.out, groups, config, dtype=dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {a.dtype})")


def _play(a):
    from .serve.app import play
    from .serve.options import PlayOptions

    _positive("window", a.window)
    _positive("sink", a.sink, allow_zero=True)
    _positive("max-players", a.max_players)
    _positive("threads", a.threads)
    play(a.ckpt, a.host, a.port, PlayOptions(fps=a.fps, window=a.window, sink=a.sink, side_by_side=a.side_by_side,
                                             max_players=a.max_players, device=a.device, threads=a.threads))


def _synth(a):
    from .io import check_dir_writable
    from .stages.synth import SynthConfig, parse_times, run_synth, synth_summary

    check_dir_writable(a.out, "--out")
    cfg = SynthConfig(teacher=a.teacher, n=a.n, seed=a.seed, shard_size=a.shard_size, batch=a.batch,
                      steps=_positive("steps", a.steps), cfg=a.cfg, shift=a.shift, prompts_file=a.prompts,
                      ode_times=None if a.ode_times is None else parse_times(a.ode_times), data=a.data or "")
    t0 = time.time()
    out = run_synth(cfg, a.out, device=a.device)
    print(synth_summary(out, time.time() - t0))


def _paired(a):
    from .io import check_writable
    from .stages.paired import make_targets, paired_distance
    from .stream.bundle import Bundle

    if a.action == "make":
        from .data.synthetic import read_synthetic

        _positive("n", a.n)
        check_writable(a.out, "--out")
        d = read_synthetic(a.data)
        n = min(a.n, len(d["videos"]))
        path = make_targets(Bundle.load(a.teacher, device=a.device), d["videos"][:n], d["prompts"][:n], a.out,
                            seed=a.seed, steps=a.steps, actions=d["actions"][:n] if "actions" in d else None)
        print(f"paired targets for {n} clips: {path}")
    else:
        from .eval.report import fmt

        for k, v in paired_distance(Bundle.load(a.ckpt, device=a.device), a.targets).items():
            print(f"{k:16s} {fmt(v)}")


def _run(a):
    from .stages.recipe import run_recipe

    print(f"report: {run_recipe(a.recipe, out=a.out, device=a.device)}")


def _demo(a):
    from .stages.demo import run_demo

    print(f"report: {run_demo(out=a.out, device=a.device, assets=a.assets)}")


# ----- parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causal-rcm", description="Causal-rCM: few-step causal video generators",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help_, fn):
        c = sub.add_parser(name, help=help_, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        c.set_defaults(fn=fn)
        return c

    w = sub.add_parser("world", help="built-in worlds").add_subparsers(dest="action", required=True)
    ws = w.add_parser("sample", help="render videos from a built-in world to .npz")
    ws.add_argument("--world", default="blobworld", help="blobworld or atari")
    ws.add_argument("--variant", default="t2v", help="blobworld: t2v or agent; atari: Pong or Breakout")
    ws.add_argument("--n", type=int, default=64)
    ws.add_argument("--seed", type=int, default=0)
    ws.add_argument("--size", type=int, default=32)
    ws.add_argument("--frames", type=int, default=21)
    ws.add_argument("--prompt", default=None, help="fix the prompt of every sample")
    ws.add_argument("--workers", type=int, default=1, help="processes (worlds that emulate: Atari)")
    ws.add_argument("--out", required=True, help="the .npz file to write")
    ws.set_defaults(fn=_world_sample)

    e = cmd("eval", "world metrics of a sample file (.npz)", _eval)
    e.add_argument("file")
    e.add_argument("--json", action="store_true")
    e.add_argument("--intervals", action="store_true", help="95%% bootstrap intervals over videos")
    e.add_argument("--n-boot", type=int, default=1000)

    for name, fn, help_ in (("train", _train, "train a stage"), ("config", _config, "print a stage's resolved config")):
        t = cmd(name, help_, fn)
        t.add_argument("stage", choices=STAGES)
        t.add_argument("--preset", default="blob-s", help="blob-s or blob-tiny")
        t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=2000")
        if name == "train":
            t.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
            t.add_argument("--device", default=None)

    g = cmd("generate", "sample videos from a checkpoint bundle", _generate)
    g.add_argument("--ckpt", required=True, help="a bundle (.safetensors)")
    g.add_argument("--out", required=True, help="the .npz sample file (media are written beside it)")
    g.add_argument("--steps", type=int, default=None, help="Euler steps (teachers) or steps per chunk (students)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (teachers)")
    g.add_argument("--shift", type=float, default=None, help="time shift of the Euler grid (teachers)")
    g.add_argument("--steps-first", type=int, default=None, help="steps of the first chunk (causal models)")
    g.add_argument("--prompt", default=None, help="one prompt for every sample")
    g.add_argument("--unconditional", action="store_true", help="sample with the empty prompt")
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--per-prompt", type=int, default=None,
                   help="evaluation layout: n / per-prompt prompts spread over the world's list, per-prompt each")
    g.add_argument("--actions", default=None, help="world models: a .npy of int actions [N, T - 1] (N follows)")
    g.add_argument("--start-from", default=None, help="world models: start each video from the first block of "
                   "frames of this data .npz (its actions too, unless --actions)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None)

    st = cmd("stream", "stream one video block by block in real time and report its latency", _stream)
    st.add_argument("--ckpt", required=True, help="a causal bundle")
    st.add_argument("--prompt", default=None)
    st.add_argument("--frames", type=int, default=None, help="latent frames to stream (default: the world's)")
    st.add_argument("--window", type=int, default=None, help="KV window in blocks: an endless stream")
    st.add_argument("--sink", type=int, default=0)
    st.add_argument("--graphs", action="store_true", help="CUDA graphs for the per-chunk forward")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--out", default=None, help="also write the frames (.npz + media)")
    st.add_argument("--device", default=None)

    x = cmd("export", "re-write a bundle in another dtype (e.g. bf16 release assets)", _export)
    x.add_argument("ckpt")
    x.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    x.add_argument("--out", required=True)

    pl = cmd("play", "serve a world model to a browser (shared/specs/play.md)", _play)
    pl.add_argument("--ckpt", required=True, help="a causal student or causal teacher bundle (.safetensors)")
    pl.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    pl.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port, printed)")
    pl.add_argument("--device", default=None, help="cpu, cuda, cuda:N, or a list (cuda:0,cuda:1): one model "
                    "worker per device, each session on the least busy")
    pl.add_argument("--fps", type=float, default=30.0, help="target frames per second per player")
    pl.add_argument("--window", type=int, default=None,
                    help="KV window in blocks (default: as many as fit the trained video length with the sink)")
    pl.add_argument("--sink", type=int, default=1, help="blocks at the stream's start kept in the KV cache")
    pl.add_argument("--side-by-side", action="store_true",
                    help="Atari: step the real emulator with the same keys and show it beside the model")
    pl.add_argument("--max-players", type=int, default=4, help="simultaneous sessions; more are refused")
    pl.add_argument("--threads", type=int, default=None, help="torch CPU threads of the model worker")

    s = cmd("synth", "sample a synthetic dataset from a bidirectional teacher", _synth)
    s.add_argument("--teacher", required=True, help="teacher bundle (.safetensors)")
    s.add_argument("--n", type=int, required=True, help="number of videos")
    s.add_argument("--seed", type=int, required=True, help="sample i is drawn from noise (seed, i)")
    s.add_argument("--out", required=True, help="dataset folder (rerun with the same arguments to resume)")
    s.add_argument("--steps", type=int, default=None, help="Euler steps (default: the bundle's; ODE init: 48)")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the bundle's)")
    s.add_argument("--shift", type=float, default=None, help="time shift of the Euler grid (default: the bundle's)")
    s.add_argument("--shard-size", type=int, default=256, help="videos per shard file")
    s.add_argument("--batch", type=int, default=64, help="videos per sampling batch")
    s.add_argument("--prompts", default=None,
                   help="file with one prompt per line, cycled (default: the world's prompts in a seeded order)")
    s.add_argument("--ode-times", default=None, help="also store the teacher's ODE states nearest to these "
                   "comma-separated RF times, e.g. 0.9994,0.9375,0.8333,0.625")
    s.add_argument("--data", default=None, help="world models: a world sample file whose actions (and first "
                   "frames, for worlds started from real frames) the teacher follows")
    s.add_argument("--device", default=None)

    pr = sub.add_parser("paired", help="the paired teacher-ODE distance of few-step students").add_subparsers(
        dest="action", required=True)
    pm = pr.add_parser("make", help="solve held-out clips with the causal teacher's ODE")
    pm.add_argument("--teacher", required=True, help="the causal teacher bundle")
    pm.add_argument("--data", required=True, help="a synthetic dataset folder (held out from training)")
    pm.add_argument("--n", type=int, default=512)
    pm.add_argument("--steps", type=int, default=48)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--out", required=True, help="the targets .npz")
    pm.add_argument("--device", default=None)
    pm.set_defaults(fn=_paired)
    ps = pr.add_parser("score", help="a student's distance to the targets at 1 and 2 steps")
    ps.add_argument("--ckpt", required=True)
    ps.add_argument("--targets", required=True)
    ps.add_argument("--device", default=None)
    ps.set_defaults(fn=_paired)

    r = cmd("run", "run a recipe (a YAML file or a built-in name: blob-tiny, blob-s, blob-s-short)", _run)
    r.add_argument("recipe")
    r.add_argument("--out", default=None)
    r.add_argument("--device", default=None)

    d = cmd("demo", "the whole recipe on the built-in world + the shipped models", _demo)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--device", default=None)
    d.add_argument("--assets", default="assets/blob-s", help="folder of shipped bundles to sample")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options of `train` / `config`
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.debug:
        args.fn(args)
        return 0
    from .train.loop import Interrupted

    prog = f"causal-rcm {args.command}"
    try:
        args.fn(args)
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written that is not complete", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            print(f"{prog}: error: out of memory ({str(e).splitlines()[0][:120]}); lower the batch "
                  "(train.batch=..., eval.batch=...) or the model size", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
