"""Wall time of one SF-DMD training step (critic_ratio critic updates on no-grad rollouts + one generator
update through the rollout + EMA), peak memory and model FLOP utilisation.

- ``--preset blob-s`` (default): the stage's own trainer (``train_sf_dmd``) on the shipped blob-s bundles,
  per chunk pattern and with replayed or plain backprop; evaluation and checkpoints off, a log record every
  step; the median of the per-step wall times after --warmup steps.
- ``--preset wan2.1-1.3b`` / ``wan2.1-14b``: random weights at 480p, 21 latent frames (16×21×60×104), a
  512-token prompt; the step of ``stages/sf_dmd.py`` (same rollout, DMD target, replayed backprop, critic
  loss, Steppers and EMA, through the same ``Placement``: checkpointing, compiled blocks, FSDP2 on one GPU),
  timed with CUDA events. Model FLOPs are counted per network call (``models/flops.py``, no recomputation);
  MFU against the H200's 770 TFLOP/s.

    python benchmarks/sf_dmd_iteration.py --steps 25 --out results/sf_dmd_iteration.json
    python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --fsdp \\
        --out results/sf_dmd_iteration_h200.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import time_ms, write_result

from causal_rcm.stages.sf_dmd import DMDConfig, resolve, train_sf_dmd  # (common puts src on the path)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "blob-s"
PEAK_TFLOPS = 770.0  # H200 dense bf16, measured (DESIGN.md)


def blob_s(args) -> None:
    if args.steps <= args.warmup + 1:
        sys.exit("--steps must exceed --warmup + 1")
    rows = []
    for pattern in args.patterns.split(","):
        for replay in (True, False):
            cfg = resolve("blob-s", [f"init={ASSETS / 'tf_scm_c3-3.safetensors'}",
                                     f"teacher={ASSETS / 'teacher.safetensors'}", f"pattern={pattern}",
                                     f"replay={replay}", f"train.steps={args.steps}", f"train.batch={args.batch}",
                                     "train.eval_every=0", "train.log_every=1", "train.ckpt_every=1000000",
                                     f"parallel.ac={args.ac}", f"parallel.compile={args.compile}",
                                     f"parallel.fsdp={'on' if args.fsdp else 'off'}"])
            torch.cuda.reset_peak_memory_stats()
            with tempfile.TemporaryDirectory() as run:
                train_sf_dmd(cfg, run, device="cuda")
                times = [json.loads(line)["time"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
                         if '"time"' in line]
            per_step = [b - a for a, b in zip(times[args.warmup:], times[args.warmup + 1:])]
            rows.append(dict(pattern=pattern, backprop="replayed" if replay else "plain",
                             s_per_step=round(statistics.median(per_step), 3),
                             peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)))
            print(rows[-1], flush=True)
    write_result(args.out, rows, [("pattern", "pattern", 8, "s"), ("backprop", "backprop", 9, "s"),
                                  ("s_per_step", "s/step", 8, ".3f"), ("peak_gib", "peak GiB", 9, ".2f")],
                 preset="blob-s", batch=args.batch, critic_ratio=cfg.critic_ratio,
                 steps=args.steps, warmup=args.warmup)


def wan(args) -> None:
    """The stage's step on random Wan-size networks (mirrors ``train_sf_dmd``'s ``step_fn``)."""
    from causal_rcm.config import preset
    from causal_rcm.flow import shift
    from causal_rcm.models.flops import FlopCounter
    from causal_rcm.objectives.dmd import critic_loss, dmd_loss, dmd_target
    from causal_rcm.objectives.self_forcing import replay_blocks, rollout
    from causal_rcm.stream.engine import Noise
    from causal_rcm.stream.sampling import FewStep
    from causal_rcm.train.loop import Stepper, make_ema
    from causal_rcm.train.parallelize import ParallelConfig
    from causal_rcm.train.placement import Placement

    dev = torch.device("cuda")
    torch.set_float32_matmul_precision("high")
    cfg, stage = preset(args.preset), DMDConfig()
    shape, Lc, B = (16, 21, 60, 104), 512, args.batch
    place = Placement(ParallelConfig(ac=args.ac, compile=args.compile, fsdp="on" if args.fsdp else "off"), dev)
    gen, critic = place.build(cfg, True, seed=1), place.build(cfg, True, seed=2)
    real = place.build(cfg, False, seed=3)
    with torch.no_grad():
        for m in (gen, critic, real):
            m.head.head.weight.normal_(std=0.02)
    tc = stage.train
    ema = make_ema(gen, tc, copy=place.replica)
    gen_opt, critic_opt = Stepper(gen.parameters(), tc), Stepper(critic.parameters(), tc, lr=stage.lr_critic)
    how = FewStep(args.pattern, stage.steps_first, stage.steps)
    ratio = args.critic_ratio
    g = torch.Generator(device=dev).manual_seed(0)
    ctx = torch.randn(B, Lc, cfg.text_dim, device=dev, generator=g)
    ctx_u = torch.zeros_like(ctx)
    eps = torch.randn(B, *shape, device=dev, generator=g)
    step = [0]

    def fake_fn(x, t, c, actions=None):
        return critic(x, t, c)

    def real_fn(x, t, c, actions=None):
        return real(x, t, c)

    def step_fn():
        s = step[0]
        t_D = shift(torch.rand(B, device=dev, generator=g), stage.t_shift)
        for k in range(ratio):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), place.gathered(gen):
                G = rollout(gen, ctx, Noise(s, list(range(B)), dev), shape, how, s * ratio + k, replay=True).video
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss_c, _ = critic_loss(fake_fn, G.float(), t_D, eps, ctx)
            critic_opt.step(loss_c, s)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad(), place.gathered(gen):
                ro = rollout(gen, ctx, Noise(s + 1, list(range(B)), dev), shape, how, s, replay=True)
            target, _ = dmd_target(ro.video.float(), real_fn, fake_fn, t_D, eps, ctx, ctx_u, 3.0)
            replay_blocks(gen, ctx, ro, how.pattern, target, lambda x0, tb: dmd_loss(x0.float(), tb))
        gen_opt.step(None, s)
        ema.update(gen)
        step[0] += 1

    step_fn()  # compiles, allocates the optimiser states
    with FlopCounter(gen, critic, real) as count:
        step_fn()
    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(step_fn, 0, args.iters)
    rows = [dict(pattern=args.pattern, critic_ratio=ratio, s_per_step=round(ms / 1e3, 2),
                 tflop=round(count.total / 1e12, 1), mfu=round(100 * count.total / (ms * 1e-3) / (PEAK_TFLOPS * 1e12), 1),
                 peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))]
    print(rows[0], flush=True)
    write_result(args.out, rows, [("pattern", "pattern", 8, "s"), ("critic_ratio", "critic", 7, "d"),
                                  ("s_per_step", "s/step", 8, ".2f"), ("tflop", "TFLOP/step", 11, ".1f"),
                                  ("mfu", "MFU %", 6, ".1f"), ("peak_gib", "peak GiB", 9, ".1f")],
                 preset=args.preset, batch=B, ac=args.ac, compile=args.compile, fsdp=args.fsdp, iters=args.iters,
                 peak_tflops=PEAK_TFLOPS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="blob-s", choices=("blob-s", "wan2.1-1.3b", "wan2.1-14b"))
    ap.add_argument("--patterns", default="c3-3,c1-1", help="blob-s: the chunk patterns to run")
    ap.add_argument("--pattern", default="c3-3", help="Wan presets: the chunk pattern")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--critic-ratio", type=int, default=DMDConfig().critic_ratio, help="Wan presets")
    ap.add_argument("--ac", default="none", choices=("none", "full", "selective"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fsdp", action="store_true", help="FSDP2 over one GPU (the sharded code path)")
    ap.add_argument("--steps", type=int, default=25, help="blob-s: steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="blob-s: steps left out of the median")
    ap.add_argument("--iters", type=int, default=2, help="Wan presets: timed steps")
    ap.add_argument("--out", default="results/sf_dmd_iteration.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    (blob_s if args.preset == "blob-s" else wan)(args)


if __name__ == "__main__":
    main()
