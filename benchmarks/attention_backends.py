"""Benchmark (GPU): which attention kernel serves our two big shapes fastest, forward and backward.

Wan2.1-1.3B attention, B = 1, 12 heads × 128, bf16, latent frames of 1,560 tokens:

  stream-K      a streaming chunk of 3 frames (4,680 queries) against K cached + own keys, no mask
                (``models/static_cache.py``): SDPA with each dense backend (flash, cuDNN, memory-efficient);
                ``stream-K-cache``: the same keys as the static cache hands them over, a prefix view of a
                21-frame buffer, and the queries as the projection makes them (a [B, L, H, d] transpose)
  tf-c3-3/c1-1  the teacher-forcing layout [clean 21 | noisy 21] = 65,520 tokens, forward and forward +
                backward: FlexAttention with the block mask (the default on CUDA) against the ``split``
                backend (dense pieces, ``kernels/attention.py``) running on flash or on cuDNN

Useful FLOPs count the visible (query, key) pairs exactly: forward 4d per pair and head, backward 10d (the
five matmuls of the flash backward: 2.5 × the forward). Every masked row is checked against FlexAttention
(relative Frobenius, forward output and the three input gradients).

    PYTHONPATH=src python benchmarks/attention_backends.py --out results/attention_backends.json
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import time_ms, write_result

from causal_rcm.kernels.attention import attention
from causal_rcm.masks import teacher_forcing

H, D, N, T = 12, 128, 1560, 21
DENSE = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION}


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def stream_inputs(frames: int, cache: bool):
    """q, k, v of a streaming chunk: contiguous [B, H, L, d], or laid out as the stream has them."""
    if not cache:
        return (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16) for L in (3 * N, frames * N, frames * N))
    q = torch.randn(1, 3 * N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    buf = torch.randn(2, 1, H, T * N, D, device="cuda", dtype=torch.bfloat16)
    return q, buf[0, :, :, :frames * N], buf[1, :, :, :frames * N]


def cudnn_verdict(q, k, v) -> str:
    """Whether SDPA's dispatcher would take cuDNN for these inputs, with its reason when not."""
    import warnings

    from torch.backends.cuda import SDPAParams, can_use_cudnn_attention

    try:
        params = SDPAParams(q, k, v, None, 0.0, False, False)
    except TypeError:  # the constructor's arguments differ between versions
        return "unknown (SDPAParams takes other arguments here)"
    with warnings.catch_warnings(record=True) as caught:  # the reasons come as warnings
        warnings.simplefilter("always")
        ok = can_use_cudnn_attention(params, True)
    return "yes" if ok else "no: " + " | ".join(str(w.message) for w in caught)[:300]


def stream_rows(iters: int) -> list[dict]:
    rows = []
    for frames, cache in ((3, False), (12, False), (21, False), (12, True), (21, True)):
        q, k, v = stream_inputs(frames, cache)
        case = f"stream-{frames}" + ("-cache" if cache else "")
        print(f"{case}: cuDNN takes these inputs: {cudnn_verdict(q, k, v)}", flush=True)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        flops = 4 * D * H * q.shape[2] * k.shape[2]
        for name, backend in DENSE.items():
            with sdpa_kernel(backend):
                try:
                    out = F.scaled_dot_product_attention(q, k, v)
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), 5, iters)
                except RuntimeError as e:  # a backend that cannot take the shape says so in the row
                    rows.append(dict(case=case, kernel=name, error=str(e).splitlines()[0]))
                    continue
            rows.append(dict(case=case, kernel=name, fwd_ms=ms, fwd_tflops=flops / ms / 1e9,
                             bwd_ms=float("nan"), bwd_tflops=float("nan"), err=rel(out, ref)))
            print(rows[-1], flush=True)
    return rows


def tf_rows(pattern: str, iters: int) -> list[dict]:
    mask = teacher_forcing(pattern)
    L = mask.seq_frames(T) * N
    pairs = int(mask.frame_mask(T).sum()) * N * N
    fwd_flops, bwd_flops = 4 * D * H * pairs, 10 * D * H * pairs
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    w = torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g)

    def run(backend: str, dense):
        def fwd():
            with torch.no_grad():
                return attention(q, k, v, mask, N, backend=backend)

        def fwd_bwd():
            out = attention(q, k, v, mask, N, backend=backend)
            return (out,) + torch.autograd.grad(out, (q, k, v), w)

        ctx = sdpa_kernel(dense) if dense is not None else torch.enable_grad()
        with ctx:
            results = fwd_bwd()
            f = time_ms(fwd, 3, iters)
            fb = time_ms(fwd_bwd, 3, iters)
        return results, f, fb

    rows, ref = [], None
    for name, backend, dense in (("flex", "flex", None), ("split+flash", "split", DENSE["flash"]),
                                 ("split+cudnn", "split", DENSE["cudnn"])):
        try:
            res, f, fb = run(backend, dense)
        except RuntimeError as e:
            rows.append(dict(case=f"tf-{pattern}", kernel=name, error=str(e).splitlines()[0]))
            print(rows[-1], flush=True)
            continue
        ref = ref or res
        b = fb - f
        rows.append(dict(case=f"tf-{pattern}", kernel=name, fwd_ms=f, fwd_tflops=fwd_flops / f / 1e9, bwd_ms=b,
                         bwd_tflops=bwd_flops / b / 1e9, err=max(rel(x, y) for x, y in zip(res, ref))))
        print(rows[-1], flush=True)
        del res
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="results/attention_backends.json")
    ap.add_argument("--stream-only", action="store_true")
    args = ap.parse_args()
    rows = stream_rows(args.iters)
    if not args.stream_only:
        rows += tf_rows("c3-3", args.iters) + tf_rows("c1-1", args.iters)
    cols = [("case", "case", 10, "s"), ("kernel", "kernel", 12, "s"), ("fwd_ms", "fwd ms", 8, ".2f"),
            ("fwd_tflops", "TFLOP/s", 8, ".0f"), ("bwd_ms", "bwd ms", 8, ".2f"), ("bwd_tflops", "TFLOP/s", 8, ".0f"),
            ("err", "rel err", 9, ".1e")]
    ok = [r for r in rows if "error" not in r]
    write_result(args.out, rows, cols, show=False)
    write_result(args.out, ok, cols, note="err: against fp32 SDPA (stream) or FlexAttention (tf rows: output and "
                 "input gradients, the largest); bwd = (forward + backward) - forward")
    for r in rows:
        if "error" in r:
            print(f"{r['case']} {r['kernel']}: {r['error']}")


if __name__ == "__main__":
    main()
