"""The ``causal-rcm`` command line. Each sub-command is a thin wrapper over a library call."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _world_sample(a):
    from .data.blobworld import save_samples
    from .stages.common import WorldConfig

    world = WorldConfig(a.world, a.variant, a.size, a.frames)
    t0 = time.time()
    s = world.sample(a.n, a.seed, prompts=a.prompt)
    save_samples(a.out, s["videos"], s["prompts"], s.get("actions"))
    print(f"wrote {a.n} {a.variant} videos of {a.frames}x{a.size}x{a.size} to {a.out} ({time.time() - t0:.1f} s)")


def _eval(a):
    from .data.blobworld import load_samples
    from .eval.metrics import evaluate
    from .eval.report import fmt

    s = load_samples(a.file)
    scores = evaluate(s["videos"], list(s["prompts"]), s.get("actions"))
    if a.json:
        print(json.dumps({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in scores.items()},
                         indent=2))
    else:
        for k, v in scores.items():
            print(f"{k:20s} {fmt(v)}")


def _train(a):
    if a.stage == "teacher":
        from .stages.teacher import resolve, train_teacher

        path = train_teacher(resolve(a.preset, a.overrides), a.out, device=a.device)
    elif a.stage == "sf_dmd":
        from .stages.sf_dmd import resolve, train_sf_dmd

        path = train_sf_dmd(resolve(a.preset, a.overrides), a.out, device=a.device)
    else:
        from .stages.tf import resolve, train_tf

        path = train_tf(resolve(a.preset, a.stage, a.overrides), a.out, device=a.device)
    print(f"{a.stage} bundle: {path}")


def _generate(a):
    from .data.blobworld import save_samples

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    from .eval.media import write_media
    from .generate import Generator

    gen = Generator.load(a.ckpt, device=a.device)
    if a.prompt:
        prompts = [a.prompt] * a.n
    elif a.per_prompt:
        prompts = [p for p in gen.world.eval_prompts(max(1, a.n // a.per_prompt)) for _ in range(a.per_prompt)]
    else:
        ps = gen.world.prompts()
        prompts = [ps[i % len(ps)] for i in range(a.n)]
    for p in set(prompts):
        if p not in gen.world.prompts():
            raise ValueError(f"prompt {p!r} is not a {gen.world.name} {gen.world.variant} prompt; valid: "
                             + ", ".join(repr(x) for x in gen.world.prompts()))
    t0 = time.time()
    videos = gen.sample(prompts, seed=a.seed, steps=a.steps, cfg=a.cfg, shift=a.shift, steps_first=a.steps_first)
    dt = time.time() - t0
    save_samples(a.out, videos, prompts)
    media = write_media(videos[:64], Path(a.out).with_suffix(""))
    print(f"generated {len(videos)} videos in {dt:.1f} s on {gen.device}: {a.out}, "
          + ", ".join(str(m) for m in media))


def _export(a):
    import torch

    from .train.checkpoint import load_bundle, save_bundle

    groups, config = load_bundle(a.ckpt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    path = save_bundle(a.out, groups, config, dtype=dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {a.dtype})")


def _run(a):
    from .stages.recipe import run_recipe

    report = run_recipe(a.recipe, out=a.out, device=a.device)
    print(f"report: {report}")


def _demo(a):
    from .stages.demo import run_demo

    report = run_demo(out=a.out, device=a.device)
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causal-rcm", description="Causal-rCM: few-step causal video generators")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("world", help="built-in worlds").add_subparsers(dest="action", required=True)
    ws = w.add_parser("sample", help="render videos from a built-in world to .npz")
    ws.add_argument("--world", default="blobworld")
    ws.add_argument("--variant", default="t2v", choices=["t2v", "agent"])
    ws.add_argument("--n", type=int, default=64)
    ws.add_argument("--seed", type=int, default=0)
    ws.add_argument("--size", type=int, default=32)
    ws.add_argument("--frames", type=int, default=21)
    ws.add_argument("--prompt", default=None, help="fix the prompt of every sample")
    ws.add_argument("--out", required=True)
    ws.set_defaults(fn=_world_sample)

    e = sub.add_parser("eval", help="world metrics of a sample file")
    e.add_argument("file")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_eval)

    t = sub.add_parser("train", help="train a stage")
    t.add_argument("stage", choices=["teacher", "tf", "df", "tf_dcm", "tf_scm", "tf_meanflow", "ode_init", "sf_dmd"])
    t.add_argument("--preset", default="blob-s")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=2000")
    t.add_argument("--out", required=True)
    t.add_argument("--device", default=None)
    t.set_defaults(fn=_train)

    g = sub.add_parser("generate", help="sample videos from a checkpoint bundle")
    g.add_argument("--ckpt", required=True)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (teachers)")
    g.add_argument("--shift", type=float, default=None, help="time shift of the Euler grid (teachers)")
    g.add_argument("--steps-first", type=int, default=None, help="steps of the first chunk (causal students and causal teachers)")
    g.add_argument("--prompt", default=None, help="one prompt for every sample")
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--per-prompt", type=int, default=None,
                   help="evaluation layout: n / per-prompt prompts spread over the world's list, per-prompt each")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--device", default=None)
    g.set_defaults(fn=_generate)

    x = sub.add_parser("export", help="re-write a bundle in another dtype (e.g. bf16 release assets)")
    x.add_argument("ckpt")
    x.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    x.add_argument("--out", required=True)
    x.set_defaults(fn=_export)

    from .stages.synth import add_synth_parser

    add_synth_parser(sub)

    r = sub.add_parser("run", help="run a recipe (YAML) end to end")
    r.add_argument("recipe")
    r.add_argument("--out", default=None)
    r.add_argument("--device", default=None)
    r.set_defaults(fn=_run)

    d = sub.add_parser("demo", help="the whole recipe on the built-in world + the shipped models")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--device", default=None)
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options of `train`
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"causal-rcm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
