"""Forward-mode pass of the whole Wan2.1-1.3B DiT against its ordinary forward (bf16, TF layout).

The TF layout of 21 latent frames at 480p: [clean 21 | noisy 21] frames of 1560 tokens = 65,520 tokens,
teacher-forcing mask (c3-3 and c1-1). The ordinary forward uses FlexAttention; the forward-mode pass uses
the Triton JVP kernel with the clean half as zero-tangent context (tangent_from = 21).

    python benchmarks/dit_jvp.py --out results/dit_jvp.json

Prints a table and writes JSON; timing with CUDA events, median of --iters.
"""
from __future__ import annotations

import argparse
import sys

import torch
from common import time_ms, write_result

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.models import WanDiT, teacher_forcing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/dit_jvp.json")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--patterns", default="c3-3,c1-1")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    with torch.device(dev):
        model = WanDiT(preset("wan2.1-1.3b"))
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.02)  # Wan zero-initialises the head; make outputs non-trivial
    model = model.to(dt).eval()

    T, H, W = 21, 60, 104
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 16, 2 * T, H, W, device=dev, dtype=dt, generator=g)
    x_dot = torch.randn(1, 16, T, H, W, device=dev, dtype=dt, generator=g)
    context = torch.randn(1, 512, 4096, device=dev, dtype=dt, generator=g)
    t = torch.cat([torch.zeros(1, T, device=dev), torch.full((1, T), 0.6, device=dev)], dim=1)
    t_dot = torch.ones(1, T, device=dev)

    rows = []
    with torch.no_grad():  # not inference_mode: torch.func.jvp needs ordinary tensors
        for name in args.patterns.split(","):
            mask = teacher_forcing(name)
            fwd = time_ms(lambda: model(x, t, context, mask=mask), args.warmup, args.iters)
            jvp_ms = time_ms(lambda: model.forward_jvp(x, t, context, x_dot, t_dot, mask=mask, tangent_from=T),
                             args.warmup, args.iters)
            v, v_dot = model.forward_jvp(x, t, context, x_dot, t_dot, mask=mask, tangent_from=T)
            v_ref = model(x, t, context, mask=mask)
            agree = ((v.float() - v_ref.float()).norm() / v_ref.float().norm()).item()
            rows.append(dict(pattern=name, forward_ms=round(fwd, 1), forward_jvp_ms=round(jvp_ms, 1),
                             ratio=round(jvp_ms / fwd, 3), primal_rel_diff=agree,
                             tangent_finite=bool(torch.isfinite(v_dot).all())))
            print(rows[-1], flush=True)
    write_result(args.out, rows, [("pattern", "pattern", 8, "s"), ("forward_ms", "forward ms", 11, ".1f"),
                                  ("forward_jvp_ms", "fwd-mode ms", 12, ".1f"), ("ratio", "ratio", 6, ".2f")],
                 dtype="bf16", tokens=2 * T * 1560)


if __name__ == "__main__":
    main()
