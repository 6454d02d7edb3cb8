"""One training iteration of each teacher-forcing objective on one GPU: wall time, peak memory and model FLOP
utilisation (issue 5: TF-sCM within 1.5× TF-dCM; issue 16: MFU ≥ 45 % for TF with selective checkpointing
and compiled blocks).

An iteration is what the stage does per step, through the same method recipes (``objectives/tf_methods``),
the same placement (``train/placement.py``: activation checkpointing, compiled blocks, FSDP2 with a world
size of 1) and the same optimiser step (``train/loop.Stepper``: AdamW, global-norm clipping): the frozen
causal teacher's CFG velocity, the objective's extra passes (dCM: the online student at t1; sCM: the
forward-mode pass; MeanFlow: the forward-mode pass with r), the student's forward + backward. Random weights,
bf16 autocast, batch of ``--batch`` videos.

    python benchmarks/tf_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --compile --fsdp \\
        --out results/tf_iteration_h200.json

Model FLOPs are counted per network call during one iteration (``models/flops.py``: analytic, no
recomputation); MFU = FLOPs / time / 770 TFLOP/s (the H200's measured dense bf16 peak, DESIGN.md). Prints one
table (ms/iter, TFLOP/iter, MFU, peak GiB, × TF-dCM) and writes JSON; CUDA events, median of --iters.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from common import time_ms, write_result

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.kernels.attention import MASKED_CUDA_BACKENDS, SDPA_ORDERS
from causal_rcm.models import ChunkPattern
from causal_rcm.models.flops import FlopCounter
from causal_rcm.objectives import tf as obj
from causal_rcm.objectives.tf_methods import METHODS, Nets, Objective, StepInfo
from causal_rcm.seeding import SampleRandom
from causal_rcm.train.loop import Stepper, TrainConfig
from causal_rcm.train.parallelize import ParallelConfig
from causal_rcm.train.placement import Placement

PEAK_TFLOPS = 770.0  # H200 dense bf16, measured (DESIGN.md)
# latent video (C, T, H, W) and prompt tokens: Wan's 21 latent frames of 480p (832×480 → 104×60), umT5's 512
SHAPES = {"blob-s": ((3, 21, 32, 32), 16), "wan2.1-1.3b": ((16, 21, 60, 104), 512),
          "wan2.1-14b": ((16, 21, 60, 104), 512)}


def args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="blob-s", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pattern", default="c3-3")
    ap.add_argument("--methods", default="tf,tf_dcm,tf_scm", help="comma-separated (tf_meanflow adds a 3rd net)")
    ap.add_argument("--ac", default="none", choices=("none", "full", "selective"), help="activation checkpointing")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block")
    ap.add_argument("--fsdp", action="store_true", help="FSDP2 over one GPU (the sharded code path)")
    ap.add_argument("--attention", default="flex", choices=MASKED_CUDA_BACKENDS,
                    help="parallel.attention: masked attention on CUDA, FlexAttention or dense SDPA pieces")
    ap.add_argument("--sdpa", default="default", choices=SDPA_ORDERS,
                    help="parallel.sdpa: cudnn tries cuDNN's fused attention before flash")
    ap.add_argument("--profile", default=None, help="profile one more iteration of the first method: top kernels "
                    "by GPU time into this text file")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="results/tf_iteration.json")
    return ap


def profile(iteration, path: str) -> None:
    """One iteration under the profiler: the kernels that take the GPU's time, most first."""
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CUDA]) as p:
        iteration()
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    with open(path, "w") as f:
        f.write(table)
    print(table, flush=True)


def main():
    args = args_parser().parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.set_float32_matmul_precision("high")
    cfg = preset(args.preset)
    (C, T, H, W), Lc = SHAPES[args.preset]
    pattern = ChunkPattern.parse(args.pattern)
    place = Placement(ParallelConfig(ac=args.ac, compile=args.compile, fsdp="on" if args.fsdp else "off",
                                     attention=args.attention, sdpa=args.sdpa), dev)
    methods = args.methods.split(",")
    teacher = place.build(cfg, trainable=False, seed=0)
    student = place.build(cfg, trainable=True, seed=1)
    mf_student = place.build(dataclasses.replace(cfg, dual_time=True), True, 2) if "tf_meanflow" in methods else None
    with torch.no_grad():  # Wan zero-initialises the head: give the outputs (and the tangents) some size
        for m in (teacher, student, mf_student):
            if m is not None:
                m.head.head.weight.normal_(std=0.02)
    B = args.batch
    g = torch.Generator(device=dev).manual_seed(0)
    batch = obj.Batch(x0=torch.randn(B, C, T, H, W, device=dev, generator=g),
                      eps=torch.randn(B, C, T, H, W, device=dev, generator=g),
                      ctx=torch.randn(B, Lc, cfg.text_dim, device=dev, generator=g),
                      ctx_u=torch.zeros(B, Lc, cfg.text_dim, device=dev))
    t_fn, _ = obj.net_fns(teacher)
    rows = []
    for name in methods:
        m = METHODS[name]
        net = mf_student if m.dual_time else student
        v_fn, jvp_fn = obj.net_fns(net)
        nets = Nets(v_fn, jvp_fn, t_fn)
        stepper = Stepper(net.parameters(), TrainConfig(lr=1e-5, warmup=0, clip_relative=0.0, grad_clip=1.0))
        step = [0]

        def iteration():
            rng = SampleRandom(0, 1, step[0], range(B), dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = m.loss(nets, batch, rng, Objective(), pattern, StepInfo(step[0], 1000))
            stepper.step(loss, step[0])
            step[0] += 1

        iteration()  # compiles, allocates the optimiser state
        with FlopCounter(teacher, net) as count:
            iteration()
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(iteration, max(0, args.warmup - 2), args.iters)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append(dict(method=name, ms=round(ms, 1), tflop=round(count.total / 1e12, 1),
                         mfu=round(100 * count.total / (ms * 1e-3) / (PEAK_TFLOPS * 1e12), 1), peak_gib=round(peak, 1)))
        print(rows[-1], flush=True)
        if args.profile and name == methods[0]:
            profile(iteration, args.profile)
        del stepper
    dcm = next((r["ms"] for r in rows if r["method"] == "tf_dcm"), None)
    for r in rows:
        r["vs_tf_dcm"] = round(r["ms"] / dcm, 3) if dcm else float("nan")
    write_result(args.out, rows, [("method", "method", 12, "s"), ("ms", "ms/iter", 9, ".1f"),
                                  ("tflop", "TFLOP/it", 9, ".1f"), ("mfu", "MFU %", 6, ".1f"),
                                  ("peak_gib", "peak GiB", 9, ".1f"), ("vs_tf_dcm", "× TF-dCM", 9, ".2f")],
                 preset=args.preset, batch=B, pattern=args.pattern, ac=args.ac, compile=args.compile,
                 fsdp=args.fsdp, attention=args.attention, sdpa=args.sdpa, peak_tflops=PEAK_TFLOPS,
                 tokens_tf_layout=2 * T * (H // cfg.patch_size[1]) * (W // cfg.patch_size[2]))


if __name__ == "__main__":
    main()
