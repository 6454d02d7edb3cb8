"""The ``causal-rcm`` argument parser: every sub-command, its options and the shared help epilog."""
from __future__ import annotations

import argparse

from . import commands as cmds

STAGES = ["teacher", "wan_teacher", "tf", "df", "tf_dcm", "tf_scm", "tf_meanflow", "ode_init", "sf_dmd"]

EPILOG = """\
presets: --preset blob-s (Blobworld 32x32, 21 frames, one GPU), blob-tiny (16x16, 9 frames, CPU minutes),
         atari (Pong/Breakout 64x64, one GPU) or atari-tiny (CPU smoke test)
config keys: `causal-rcm config STAGE --preset P` prints every key of a stage with its value; override any
             of them as key=value (e.g. train.steps=2000 objective.scm_warmup=0.02)
outputs: bundles are .safetensors (+ .json beside); samples are .npz (videos uint8 [N, T, H, W, 3], prompts,
         actions) with a .gif, .mp4 and .png strip beside them; runs write config.json, metrics.jsonl,
         checkpoints/ and summary.json
"""



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="causal-rcm", description="Causal-rCM: few-step causal video generators",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    # --debug also after the sub-command (where users put it); SUPPRESS keeps the top-level value when absent
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help_, fn):
        c = sub.add_parser(name, help=help_, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           parents=[debug])
        c.set_defaults(fn=fn)
        return c

    w = sub.add_parser("world", help="built-in worlds").add_subparsers(dest="action", required=True)
    ws = w.add_parser("sample", help="render videos from a built-in world to .npz", parents=[debug])
    ws.add_argument("--world", default="blobworld", help="blobworld or atari")
    ws.add_argument("--variant", default="t2v", help="blobworld: t2v or agent; atari: Pong or Breakout")
    ws.add_argument("--n", type=int, default=64)
    ws.add_argument("--seed", type=int, default=0)
    ws.add_argument("--size", type=int, default=32)
    ws.add_argument("--frames", type=int, default=21)
    ws.add_argument("--prompt", default=None, help="fix the prompt of every sample")
    ws.add_argument("--workers", type=int, default=1, help="processes (worlds that emulate: Atari)")
    ws.add_argument("--out", required=True, help="the .npz file to write")
    ws.set_defaults(fn=cmds._world_sample)

    e = cmd("eval", "world metrics of a sample file (.npz)", cmds._eval)
    e.add_argument("file")
    e.add_argument("--json", action="store_true")
    e.add_argument("--intervals", action="store_true", help="95%% bootstrap intervals over videos")
    e.add_argument("--n-boot", type=int, default=1000)

    for name, fn, help_ in (("train", cmds._train, "train a stage"), ("config", cmds._config, "print a stage's resolved config")):
        t = cmd(name, help_, fn)
        t.add_argument("stage", choices=STAGES)
        t.add_argument("--preset", default="blob-s", help="blob-s, blob-tiny, atari or atari-tiny")
        t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=2000")
        if name == "train":
            t.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
            t.add_argument("--device", default=None)

    g = cmd("generate", "sample videos from a checkpoint bundle", cmds._generate)
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
                   "frames of this data .npz (its actions and prompts too, unless --actions / --prompt)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None)

    st = cmd("stream", "stream one video block by block in real time and report its latency", cmds._stream)
    st.add_argument("--ckpt", required=True, help="a causal bundle")
    st.add_argument("--prompt", default=None)
    st.add_argument("--frames", type=int, default=None, help="latent frames to stream (default: the model's video)")
    st.add_argument("--window", type=int, default=None, help="KV window in blocks: an endless stream")
    st.add_argument("--sink", type=int, default=0)
    st.add_argument("--graphs", action="store_true", help="CUDA graphs for the per-chunk forward")
    st.add_argument("--compile", action="store_true", help="compile the blocks around their attention (CUDA; "
                    "the first stream pays the compilation)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--out", default=None, help="also write the frames (.npz + media)")
    st.add_argument("--device", default=None)

    x = cmd("export", "re-write a bundle in another dtype (e.g. bf16 release assets)", cmds._export)
    x.add_argument("ckpt")
    x.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    x.add_argument("--out", required=True)

    pl = cmd("play", "serve a world model to a browser (shared/specs/play.md)", cmds._play)
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
    pl.add_argument("--start-rendered", action="store_true",
                    help="Blobworld: start each stream from the world's rendered first frame(s) for the prompt")
    pl.add_argument("--threads", type=int, default=None, help="torch CPU threads of the model worker")
    pl.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                    help="replay each block's forward as a captured CUDA graph (default: on with a CUDA device)")

    en = cmd("encode", "encode captioned real clips (NAME.mp4 + NAME.txt) into a latent training dataset",
             cmds._encode)
    en.add_argument("--ckpt", required=True, help="a bundle whose codec encodes (the Wan teacher: its VAE)")
    en.add_argument("--videos", required=True, help="folder of clips, each with its caption in NAME.txt")
    en.add_argument("--out", required=True, help="dataset folder (rerun with the same arguments to resume)")
    en.add_argument("--batch", type=int, default=4, help="clips per encoder batch")
    en.add_argument("--shard-size", type=int, default=64, help="clips per shard file")
    en.add_argument("--device", default=None)

    s = cmd("synth", "sample a synthetic dataset from a bidirectional teacher", cmds._synth)
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
    pm = pr.add_parser("make", help="solve held-out clips with the causal teacher's ODE", parents=[debug])
    pm.add_argument("--teacher", required=True, help="the causal teacher bundle")
    pm.add_argument("--data", required=True, help="a synthetic dataset folder (held out from training)")
    pm.add_argument("--n", type=int, default=512)
    pm.add_argument("--steps", type=int, default=48)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--out", required=True, help="the targets .npz")
    pm.add_argument("--device", default=None)
    pm.set_defaults(fn=cmds._paired)
    ps = pr.add_parser("score", help="a student's distance to the targets at 1 and 2 steps", parents=[debug])
    ps.add_argument("--ckpt", required=True)
    ps.add_argument("--targets", required=True)
    ps.add_argument("--device", default=None)
    ps.set_defaults(fn=cmds._paired)

    r = cmd("run", "run a recipe (a YAML file or a built-in name: blob-tiny, blob-s, blob-s-short, blob-agent-tiny, "
            "blob-agent, atari-tiny, atari-pong, atari-breakout)", cmds._run)
    r.add_argument("recipe")
    r.add_argument("--out", default=None)
    r.add_argument("--device", default=None)

    d = cmd("demo", "the whole recipe on the built-in world + the shipped models", cmds._demo)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--device", default=None)
    d.add_argument("--assets", default="assets/blob-s", help="folder of shipped bundles to sample")
    return p


