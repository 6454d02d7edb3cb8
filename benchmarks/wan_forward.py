"""Forward time of the Wan2.1-1.3B preset (bf16, 480p latents) against diffusers' WanTransformer3DModel.

Cases (B = 1, 1560 tokens per latent frame, 512 text tokens, same random weights in both models):
  bidir-21   bidirectional forward on 21 latent frames (32,760 tokens)
  chunk-3    one 3-frame chunk (4,680 query tokens) against a full KV cache of 18 frames (ours only: diffusers
             has no cache, so its rows are the 3-frame forward without context (a lower bound) and the
             21-frame forward it would need to condition the chunk on 18 frames)

    python benchmarks/wan_forward.py --out results/wan_forward.json [--unfused] [--compile]

Prints a table and writes JSON. Timing: CUDA events, median of --iters after --warmup calls.
"""
from __future__ import annotations

import argparse
import sys

import torch
from common import time_ms, write_result

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.models import WanDiT


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/wan_forward.json")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd versions of both")
    ap.add_argument("--unfused", action="store_true",
                    help="also time ours with q/k RMSNorm+RoPE as the PyTorch composition (the fused kernel is the default)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    import diffusers

    dev, dt = torch.device("cuda"), torch.bfloat16
    cfg = preset("wan2.1-1.3b")
    torch.manual_seed(0)
    with torch.device(dev):
        ref = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)
    ref = ref.to(dt).eval()
    with torch.no_grad():
        ref.proj_out.weight.normal_(std=0.02)  # diffusers' init is random already; make the output non-trivial
    ours = WanDiT.from_state_dict(ref.state_dict(), num_heads=12).to(dev, dt).eval()
    assert ours.cfg == cfg

    T, H, W = 21, 60, 104  # 480x832 video -> Wan VAE latents (8x spatial, 4x temporal: 81 frames -> 21)
    N = ours.frame_tokens(H, W)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 16, T, H, W, device=dev, dtype=dt, generator=g)
    context = torch.randn(1, 512, 4096, device=dev, dtype=dt, generator=g)
    t = torch.full((1,), 0.7, device=dev)

    rows = []
    with torch.inference_mode():
        v_ours = ours(x, t, context)
        v_ref = ref(x, 1000 * t, context, return_dict=False)[0]
        rel = ((v_ours.float() - v_ref.float()).norm() / v_ref.float().norm()).item()
        print(f"bf16 output agreement (rel. Frobenius): {rel:.2e}", flush=True)

        def bench(name, model_name, fn, tokens_q, tokens_k):
            ms = time_ms(fn, args.warmup, args.iters)
            rows.append(dict(case=name, model=model_name, ms=round(ms, 2), query_tokens=tokens_q, key_tokens=tokens_k))
            print(f"{name:10s} {model_name:24s} {ms:9.2f} ms", flush=True)

        def run_chunk(model):
            cache = model.new_cache(T, N, pattern="c3-3")
            for s in range(0, 18, 3):
                model(x[:, :, s:s + 3], t.expand(1), context, cache=cache, update_cache=True)
            return lambda: model(x[:, :, 18:21], t, context, cache=cache)

        variants = [("ours (eager)", ours, "ref (diffusers, eager)", ref)]
        if args.unfused:
            plain = WanDiT.from_state_dict(ref.state_dict(), num_heads=12).to(dev, dt).eval().use_fused_norm_rope(False)
            variants.append(("ours (eager, unfused norm+rope)", plain, "ref (diffusers, eager)", ref))
        if args.compile:
            variants.append(("ours (compiled)", torch.compile(ours), "ref (diffusers, compiled)", torch.compile(ref)))
        for our_name, om, ref_name, rm in variants:
            bench("bidir-21", our_name, lambda: om(x, t, context), T * N, T * N)
            bench("bidir-21", ref_name, lambda: rm(x, 1000 * t, context, return_dict=False), T * N, T * N)
            bench("chunk-3", our_name + " +cache18", run_chunk(ours if om is ours else om), 3 * N, T * N)
            bench("chunk-3", ref_name + " 3 frames", lambda: rm(x[:, :, 18:], 1000 * t, context, return_dict=False),
                  3 * N, 3 * N)

    write_result(args.out, rows, [("case", "case", 10, "s"), ("model", "model", 36, "s"), ("ms", "ms", 9, ".2f")],
                 diffusers=diffusers.__version__, dtype="bf16", frames=T, latent_hw=[H, W], frame_tokens=N,
                 output_rel_error=rel)


if __name__ == "__main__":
    main()
