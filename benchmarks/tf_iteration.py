"""Wall time of one training iteration of each teacher-forcing objective on the same GPU (issue 5: TF-sCM
must stay within 1.5× TF-dCM).

An iteration is what the stage does per step, through the same method recipes (``objectives/tf_methods``):
the frozen causal teacher's CFG velocity, the objective's extra passes (dCM: the online student at t1; sCM:
the forward-mode pass; MeanFlow: the forward-mode pass with r), the student's forward + backward, and the
optimiser step. Random weights, bf16 autocast.

    python benchmarks/tf_iteration.py --preset blob-s --batch 64 --out results/tf_iteration.json

Prints a table and writes JSON; CUDA events, median of --iters after --warmup iterations.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from common import time_ms, write_result

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.models import ChunkPattern, WanDiT
from causal_rcm.objectives import tf as obj
from causal_rcm.objectives.tf_methods import METHODS, Nets, Objective, StepInfo
from causal_rcm.seeding import SampleRandom

SHAPES = {"blob-s": (3, 21, 32, 32), "wan2.1-1.3b": (16, 21, 60, 104)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="blob-s", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pattern", default="c3-3")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="results/tf_iteration.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    dev = torch.device("cuda")
    cfg = preset(args.preset)
    C, T, H, W = SHAPES[args.preset]
    pattern = ChunkPattern.parse(args.pattern)
    torch.manual_seed(0)
    with torch.device(dev):
        teacher = WanDiT(cfg).eval().requires_grad_(False)
        student = WanDiT(cfg)
        mf_student = WanDiT(dataclasses.replace(cfg, dual_time=True))
    for m in (teacher, student, mf_student):
        with torch.no_grad():
            m.head.head.weight.normal_(std=0.02)
    B = args.batch
    batch = obj.Batch(x0=torch.randn(B, C, T, H, W, device=dev), eps=torch.randn(B, C, T, H, W, device=dev),
                      ctx=torch.randn(B, 16, cfg.text_dim, device=dev), ctx_u=torch.zeros(B, 16, cfg.text_dim, device=dev))
    t_fn, _ = obj.net_fns(teacher)
    rows = []
    for name in ("tf", "tf_dcm", "tf_scm", "tf_meanflow"):
        m = METHODS[name]
        net = mf_student if m.dual_time else student
        v_fn, jvp_fn = obj.net_fns(net)
        nets = Nets(v_fn, jvp_fn, t_fn)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
        step = [0]

        def iteration():
            rng = SampleRandom(0, 1, step[0], range(B), dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = m.loss(nets, batch, rng, Objective(), pattern, StepInfo(step[0], 1000))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step[0] += 1

        ms = time_ms(iteration, args.warmup, args.iters)
        rows.append(dict(method=name, ms=round(ms, 2)))
        print(rows[-1], flush=True)
    dcm = next(r["ms"] for r in rows if r["method"] == "tf_dcm")
    for r in rows:
        r["vs_tf_dcm"] = round(r["ms"] / dcm, 3)
    write_result(args.out, rows, [("method", "method", 12, "s"), ("ms", "ms/iter", 9, ".2f"),
                                  ("vs_tf_dcm", "× TF-dCM", 9, ".2f")],
                 preset=args.preset, batch=B, pattern=args.pattern)


if __name__ == "__main__":
    main()
