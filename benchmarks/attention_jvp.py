"""Benchmark (GPU): the masked attention JVP kernel against FlexAttention's masked forward.

Wan2.1-1.3B attention shapes: B = 1, 12 heads × 128, bf16, 21 latent frames × 1560 tokens.

  tf-c3-3, tf-c1-1   TF layout [clean 21 | noisy 21] = 65,520 tokens, tangent_rows = tangent_keys = 32,760
                     (the clean half is context with zero tangents: METHOD.md §4, TF-sCM)
  tf-c3-3-plain      the same call without the zero-tangent structure (every row and key has a tangent)
  dense-32760        32,760 tokens, no mask, full tangents (baseline forward: SDPA)

Useful FLOPs count only the matmuls the mask needs, per visible (query, key) pair and head, d = 128:
forward 4d (QKᵀ and PV, 2d each); a query row with tangent adds 4d (Q̇Kᵀ, (P⊙Ṡ)V), and 4d more where the
key has a tangent too (QK̇ᵀ, PV̇). Visible pairs are counted exactly from the frame mask (frames of 1560
tokens). Masked-out work a kernel does anyway (partial tiles) is not counted.

Correctness at these shapes: the primal against FlexAttention's forward (relative Frobenius, bound 5e-3)
and the tangent against the fp32 reference computed blockwise over query chunks (bound 2e-2).

    PYTHONPATH=src python benchmarks/attention_jvp.py --out runs/attention_jvp.json
    PYTHONPATH=src python benchmarks/attention_jvp.py --sweep --out runs/attention_jvp_sweep.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from causal_rcm.kernels import attention_ref
from causal_rcm.kernels.flash_attn_jvp import KernelConfig, Tiles, default_config, flash_attention_jvp
from causal_rcm.masks import teacher_forcing

H, D, T, N = 12, 128, 21, 1560
HALF = T * N  # 32,760 tokens: one copy of the video

TF_C3_3, TF_C1_1 = teacher_forcing("c3-3"), teacher_forcing("c1-1")
CASES = {  # name: (mask or None, sequence length, tangent_rows, tangent_keys)
    "tf-c3-3": (TF_C3_3, 2 * HALF, HALF, HALF),
    "tf-c1-1": (TF_C1_1, 2 * HALF, HALF, HALF),
    "tf-c3-3-plain": (TF_C3_3, 2 * HALF, 0, 0),
    "dense-32760": (None, HALF, 0, 0),
}

# Tile candidates for --sweep (d = 128, bf16): Tiles(block_m, block_n, num_warps, num_stages). Shared memory
# bounds the stages: a forward stage holds K and V tiles, a tangent stage also K̇ and V̇ (227 KiB per SM).
SWEEP_FWD = [Tiles(128, 128, 8, 2), Tiles(128, 128, 8, 3), Tiles(128, 64, 8, 3), Tiles(128, 64, 8, 4),
             Tiles(64, 64, 4, 3)]
SWEEP_JVP = [Tiles(128, 64, 8, 2), Tiles(128, 32, 8, 2), Tiles(128, 32, 8, 3), Tiles(128, 32, 8, 4),
             Tiles(64, 32, 4, 3)]
SWEEP_FUSED = [KernelConfig(Tiles(128, 128, 8, 3), Tiles(128, 32, 8, 3), True),
               KernelConfig(Tiles(128, 64, 8, 3), Tiles(128, 32, 8, 3), True)]


def visible_pairs(mask, L: int, tangent_rows: int, tangent_keys: int) -> dict[str, int]:
    """Visible (query, key) token pairs: all, with a query tangent, with query and key tangents."""
    if mask is None:
        full = L * L
        return dict(all=full, q_tangent=full * (L - tangent_rows) // L,
                    qk_tangent=(L - tangent_rows) * (L - tangent_keys))
    fm = mask.frame_mask(T).long()  # [2T, 2T] frames of N tokens each
    f = torch.arange(fm.shape[0])
    q_t = (f * N >= tangent_rows).long()[:, None]
    k_t = (f * N >= tangent_keys).long()[None, :]
    return dict(all=int(fm.sum()) * N * N, q_tangent=int((fm * q_t).sum()) * N * N,
                qk_tangent=int((fm * q_t * k_t).sum()) * N * N)


def useful_flops(mask, L, tangent_rows, tangent_keys) -> tuple[float, float]:
    """(forward FLOPs, forward + tangent FLOPs) that the mask needs, over all heads."""
    p = visible_pairs(mask, L, tangent_rows, tangent_keys)
    fwd = 4 * D * p["all"] * H
    return fwd, fwd + 4 * D * H * (p["q_tangent"] + p["qk_tangent"])


def make_inputs(L, tangent_rows, tangent_keys, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(n):
        return torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16, generator=g)

    return rnd(L), rnd(L), rnd(L), rnd(L - tangent_rows), rnd(L - tangent_keys), rnd(L - tangent_keys)


def run_ours(name, x, config=None, part="call"):
    """Our kernel on case ``name``. ``part`` times one launch alone: "fwd-rows" the clean rows (forward
    only), "jvp-rows" the noisy rows (with tangent), "fwd-all" a forward of all rows (no tangents)."""
    mask, L, tr, tk = CASES[name]
    q, k, v, tq, tkk, tvv = x
    if part == "call":
        return flash_attention_jvp(q, k, v, tq, tkk, tvv, mask, N, tangent_rows=tr, tangent_keys=tk, config=config)
    if part == "fwd-all":
        return flash_attention_jvp(q, k, v, tq[..., :0, :], tkk[..., :0, :], tvv[..., :0, :], mask, N,
                                   tangent_rows=L, tangent_keys=L, config=config)
    if part == "fwd-rows":
        return flash_attention_jvp(q[..., :tr, :], k, v, tq[..., :0, :], tkk, tvv, mask, N, tangent_rows=tr,
                                   tangent_keys=tk, config=config)
    return flash_attention_jvp(q[..., tr:, :], k, v, tq, tkk, tvv, mask, N, q_offset=tr, tangent_keys=tk,
                               config=config)


def flex_forward(name, x):
    """FlexAttention's masked forward (compiled, block mask from the mask's mask_mod); SDPA without a mask."""
    mask, L, _, _ = CASES[name]
    q, k, v = x[:3]
    if mask is None:
        return lambda: F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(mask.mask_mod(N, T), B=None, H=None, Q_LEN=L, KV_LEN=L, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    return lambda: flex(q, k, v, block_mask=block_mask)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check(name, x, o, to, o_base) -> dict:
    """Primal vs the baseline forward; primal and tangent vs the blockwise fp32 reference."""
    mask, L, tr, tk = CASES[name]
    from causal_rcm.kernels import reference as ref
    ref.REF_CHUNK_ELEMENTS = 1 << 28  # 1 GiB fp32 score chunks: plenty of room on the GPU, fewer launches
    o_ref, to_ref = attention_ref(*x, mask, N, q_offset=0, tangent_rows=tr, tangent_keys=tk)
    errs = dict(primal_vs_flex=rel(o, o_base), primal_vs_ref=rel(o, o_ref), tangent_vs_ref=rel(to, to_ref),
                finite=bool(torch.isfinite(o).all() and torch.isfinite(to).all()))
    errs["ok"] = errs["finite"] and errs["primal_vs_flex"] < 5e-3 and errs["tangent_vs_ref"] < 2e-2
    return errs


def bench(fn) -> float:
    return do_bench(fn, warmup=100, rep=500, return_mode="median")


def _compile_worker(jobs):
    """Run each (case, config, part) once so that Triton's on-disk cache holds its kernel."""
    for name, cfg, part in jobs:
        _, L, tr, tk = CASES[name]
        try:
            run_ours(name, make_inputs(L, tr, tk), cfg, part)
        except Exception as e:  # reported again, with its config, when the main process times it
            print(f"compile {name} {part} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    torch.cuda.synchronize()


def precompile(jobs, workers: int):
    """Compile many kernel variants in parallel processes (each variant takes seconds to build)."""
    if workers <= 1 or len(jobs) <= 1:
        return
    chunks = [jobs[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_compile_worker, [c for c in chunks if c])


def sweep(names, workers) -> list[dict]:
    """Per tile candidate. Cases with zero-tangent structure: the forward-only launch (clean rows) and the
    tangent launch (noisy rows) alone, the fused launch on the whole call, and a forward of all rows for
    comparison with FlexAttention. Cases without: the whole call (tangent programs only)."""
    jobs = []
    for name in names:
        if CASES[name][2]:
            jobs += [(name, KernelConfig(t, t, False), "fwd-rows") for t in SWEEP_FWD]
            jobs += [(name, KernelConfig(t, t, False), "jvp-rows") for t in SWEEP_JVP]
            jobs += [(name, cfg, "call") for cfg in SWEEP_FUSED]
            jobs += [(name, KernelConfig(t, t, False), "fwd-all") for t in SWEEP_FWD[:2]]
        else:
            jobs += [(name, KernelConfig(t, t, False), "call") for t in SWEEP_JVP]
    t0 = time.time()
    precompile(jobs, workers)
    print(f"precompiled {len(jobs)} variants in {time.time() - t0:.0f} s", flush=True)
    rows = []
    for name in names:
        _, L, tr, tk = CASES[name]
        x = make_inputs(L, tr, tk)
        for _, cfg, part in [j for j in jobs if j[0] == name]:
            try:
                ms = bench(lambda: run_ours(name, x, cfg, part))
            except Exception as e:
                ms = float("nan")
                print(f"{name} {part} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            rows.append(dict(case=name, part=part, config=asdict(cfg), ms=ms))
            tiles = cfg if cfg.fused else (cfg.fwd if part.startswith("fwd") else cfg.jvp)
            print(f"{name:13s} {part:9s} {ms:8.2f} ms  {tiles}", flush=True)
        del x
    for name in names:
        best = {}
        for r in rows:
            if r["case"] == name and r["ms"] == r["ms"] and r["ms"] < best.get(r["part"], {"ms": 1e9})["ms"]:
                best[r["part"]] = r
        print(name + ": best " + ", ".join(f"{p} {r['ms']:.2f} ms {r['config']}" for p, r in best.items()),
              flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--sweep", action="store_true", help="also time the tile candidates")
    ap.add_argument("--workers", type=int, default=12, help="processes compiling sweep variants in parallel")
    args = ap.parse_args()
    names = args.cases.split(",")
    props = torch.cuda.get_device_properties(0)
    meta = dict(gpu=props.name, torch=torch.__version__, triton=triton.__version__)
    print(meta, flush=True)
    results = dict(meta=meta, cases={})
    if args.sweep:
        results["sweep"] = sweep(names, args.workers)
    for name in names:
        mask, L, tr, tk = CASES[name]
        x = make_inputs(L, tr, tk, seed=1)
        fwd_flops, jvp_flops = useful_flops(mask, L, tr, tk)
        base = flex_forward(name, x)
        o_base = base()
        o, to = run_ours(name, x)
        errs = check(name, x, o, to, o_base)
        del o, to, o_base
        ms_ours, ms_base = bench(lambda: run_ours(name, x)), bench(base)
        cfg = default_config(D, torch.bfloat16, x[0].device)
        results["cases"][name] = dict(
            ms=ms_ours, tflops=jvp_flops / ms_ours * 1e-9, useful_tflop=jvp_flops * 1e-12,
            baseline="sdpa forward" if mask is None else "flex forward", baseline_ms=ms_base,
            baseline_tflops=fwd_flops / ms_base * 1e-9, ratio_to_baseline=ms_ours / ms_base,
            config=asdict(cfg), **errs)
        print(name, json.dumps(results["cases"][name]), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n{'case':15s} {'ours ms':>8s} {'TFLOP/s':>8s} {'base ms':>8s} {'TFLOP/s':>8s} {'×base':>6s} "
          f"{'primal':>8s} {'tangent':>8s} ok")
    for name, r in results["cases"].items():
        print(f"{name:15s} {r['ms']:8.2f} {r['tflops']:8.0f} {r['baseline_ms']:8.2f} {r['baseline_tflops']:8.0f} "
              f"{r['ratio_to_baseline']:6.2f} {r['primal_vs_flex']:8.1e} {r['tangent_vs_ref']:8.1e} {r['ok']}")


if __name__ == "__main__":
    main()
