"""The streaming latency protocol: what a viewer of a generated stream waits for, measured end to end.

For each (pattern, steps per chunk, decoder) one video is streamed through ``stream/realtime.py`` (the
decoder on a second CUDA stream, frames into pinned host memory) after warm-up videos, and we report:

  first_ms     time to the first frame on the host (the first block: steps_first steps, default the same
               number as every later block, decoded)
  frame_p50/99 per-frame latency: the gap between consecutive blocks' arrival divided by their frames (ms)
  jitter_ms    standard deviation of the inter-block arrival gaps
  e2e_fps      video frames / wall time from start to the last frame on the host
  dit_fps      the same stream without decoding, synchronised per block (the DiT alone)
  peak_gib     peak GPU memory of the streamed video
  warmup_s     the warm-up videos (compilation and graph capture included): repeated, up to 3, until one
               compiles nothing new
  compiles     graphs torch.compile made during the timed video (0 when the warm-up covered them all)

Random weights at the real configuration (speed does not depend on the values): Wan2.1-1.3B at 832×480,
81 frames = 21 latent frames of 60×104, a random 512-token text context; decoders none | wan_vae (diffusers'
AutoencoderKLWan at its Wan2.1 config, channels-last, streamed) | taehv (the taew2_1 tiny decoder).
``--graphs`` captures the per-chunk forward as a CUDA graph (``Engine(graphs=True)``); ``--check-14b`` also
builds the 14B DiT and streams one chunk to report its memory.

    python benchmarks/stream_latency.py --out results/stream_latency.json [--graphs] [--plot results/stream.png]
    python benchmarks/stream_latency.py --smoke     # a tiny configuration: checks the script in seconds

Prints a table and writes JSON (and a plot with --plot).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from common import write_result
from torch._dynamo.utils import counters

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.kernels.attention import SDPA_ORDERS, use_sdpa_order
from causal_rcm.kv_policy import FULL
from causal_rcm.models import WanDiT
from causal_rcm.stream.codec import PixelCodec, TinyDecoderCodec, WanVAECodec
from causal_rcm.stream.engine import Engine, Noise
from causal_rcm.stream.realtime import realtime_frames
from causal_rcm.stream.sampling import FewStep


def decoder(name: str, smoke: bool, vae_compile: bool = False):
    if name == "none":
        return PixelCodec()
    if name == "wan_vae":
        from diffusers import AutoencoderKLWan

        from causal_rcm.models.vae import channels_last_

        kw = dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if smoke else {}  # else Wan2.1's
        vae = channels_last_(AutoencoderKLWan(**kw).to("cuda", torch.bfloat16).eval())  # as decoders.py measures
        return WanVAECodec(vae, compile=vae_compile)  # compiled: every chunk shape compiles in the warm-up
    if name == "taehv":
        from causal_rcm.models.vae import TinyDecoderConfig, TinyVideoDecoder, taew2_1

        cfg = TinyDecoderConfig(widths=(16, 8, 8, 8)) if smoke else taew2_1()
        return TinyDecoderCodec(TinyVideoDecoder(cfg).to("cuda", torch.bfloat16).eval())
    raise SystemExit(f"unknown decoder {name!r}; choose none, wan_vae or taehv")


def stream_once(engine: Engine, ctx, frames: int, seed: int, reuse=None):
    """One streamed video: (arrival times, frames per block, the finished state). ``reuse``: the warm-up's
    state, whose static cache and captured graphs the measured stream takes over (no capture in the timing)."""
    state = engine.start(ctx, None, Noise(seed, [0], "cuda"), reuse=reuse)
    arrivals, blocks = [], []
    torch.cuda.synchronize()
    for b, f, t in realtime_frames(engine, state, frames):
        arrivals.append(t)
        blocks.append(f.shape[1])
    return arrivals, blocks, state


def measure(net, pattern, steps, codec, shape, ctx, frames, graphs: bool, steps_first: int | None = None,
            context: str = "clean", compile: bool = False) -> dict:
    C, H, W = shape
    how = FewStep(pattern, steps_first=steps_first or steps, steps=steps, context=context)
    engine = Engine(net, how, (C, H, W), codec, FULL, frames, graphs=graphs, compile=compile)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        # warm-up: allocations, autotuning, compiling, capture; repeated (up to 3 videos) while a video still
        # compiles new graphs (a compiled decoder's cache tensors can take a few videos to reach every layout)
        t_warm, warm = time.perf_counter(), None
        for warm_videos in range(1, 4):
            graphs = counters["stats"]["unique_graphs"]
            *_, warm = stream_once(engine, ctx, frames, 0, reuse=warm)
            if counters["stats"]["unique_graphs"] == graphs:
                break
        warm_s = time.perf_counter() - t_warm
        torch.cuda.reset_peak_memory_stats()
        graphs = counters["stats"]["unique_graphs"]
        arrivals, per_block, _ = stream_once(engine, ctx, frames, 1, reuse=warm)
        compiles = counters["stats"]["unique_graphs"] - graphs  # compiled during the timed video: should be 0
        peak = torch.cuda.max_memory_allocated() / 2**30
        dit = Engine(net, how, (C, H, W), PixelCodec(), FULL, frames, graphs=graphs, compile=compile)
        *_, warm = stream_once(dit, ctx, frames, 0)
        t0 = time.perf_counter()
        st = dit.start(ctx, None, Noise(1, [0], "cuda"), reuse=warm)
        while st.frame < frames:
            dit.step(st, decode=False)
        dit_s = time.perf_counter() - t0
    # video frames of `frames` latent frames through Wan's VAE (temporal stride 4), whichever decoder runs,
    # so the DiT-only rows count the frames the latents stand for (81 for 21)
    video = 1 + 4 * (frames - 1)
    scale = video / sum(per_block)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    per_frame = [1000 * g / (n * scale) for g, n in zip(gaps, per_block[1:])] or [float("nan")]
    return dict(pattern=pattern, steps=steps, steps_first=how.steps_first, context=context, first_ms=1000 * arrivals[0],
                frame_p50=statistics.median(per_frame), frame_p99=sorted(per_frame)[int(0.99 * (len(per_frame) - 1))],
                jitter_ms=1000 * statistics.pstdev(gaps) if len(gaps) > 1 else 0.0,
                e2e_fps=video / arrivals[-1], dit_fps=video / dit_s, peak_gib=peak, warmup_s=warm_s,
                warmup_videos=warm_videos, timed_compiles=compiles)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default="c3-3,c1-1")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--decoders", default="none,taehv,wan_vae")
    ap.add_argument("--runs", default=None, help="pattern:steps pairs (c3-3:2,c1-1:1) instead of patterns x steps")
    ap.add_argument("--graphs", action="store_true", help="capture the per-chunk forward as a CUDA graph")
    ap.add_argument("--sdpa", default="default", choices=SDPA_ORDERS,
                    help="cudnn: SDPA tries cuDNN's fused attention before flash")
    ap.add_argument("--steps-first", type=int, default=None, help="steps on the first chunk (default: --steps)")
    ap.add_argument("--context", default="clean", choices=["clean", "noisy"],
                    help="noisy: the students' noisy-context sampling, whose last step writes the cache (no "
                         "separate context pass; METHOD.md §3)")
    ap.add_argument("--vae-compile", action="store_true", help="run the Wan VAE decoder through torch.compile")
    ap.add_argument("--compile", action="store_true", help="compile the DiT blocks around their attention "
                    "(WanDiT.compile_for_streaming; with --graphs: compiled kernels inside the captured graphs)")
    ap.add_argument("--check-14b", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default="results/stream_latency.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    use_sdpa_order(args.sdpa)
    torch.manual_seed(0)
    # the smoke configuration keeps Wan's 16 latent channels so every decoder fits it
    cfg = dataclasses.replace(preset("tiny"), in_dim=16, out_dim=16) if args.smoke else preset("wan2.1-1.3b")
    shape, frames, ctx_len = ((cfg.in_dim, 8, 12), 5, 8) if args.smoke else ((16, 60, 104), 21, 512)
    net = WanDiT(cfg).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    ctx = torch.randn(1, ctx_len, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    runs = ([(p, int(n)) for p, n in (r.split(":") for r in args.runs.split(","))] if args.runs else
            [(p, int(n)) for p in args.patterns.split(",") for n in args.steps.split(",")])
    meta = dict(preset="tiny" if args.smoke else "wan2.1-1.3b", latent_frames=frames, graphs=args.graphs,
                context=args.context, steps_first=args.steps_first, sdpa=args.sdpa,
                vae_compile=args.vae_compile, compile=args.compile)
    cols = [("decoder", "decoder", 8, "s"), ("pattern", "pattern", 7, "s"), ("steps", "steps", 5, "d"),
            ("first_ms", "first ms", 9, ".1f"), ("frame_p50", "p50 ms/f", 9, ".2f"), ("frame_p99", "p99 ms/f", 9, ".2f"),
            ("jitter_ms", "jitter", 7, ".1f"), ("dit_fps", "DiT fps", 8, ".1f"), ("e2e_fps", "e2e fps", 8, ".1f"),
            ("peak_gib", "peak GiB", 8, ".1f"), ("warmup_s", "warm-up s", 9, ".1f"),
            ("timed_compiles", "compiles", 8, "d")]
    rows = []
    for dec in args.decoders.split(","):
        codec = decoder(dec, args.smoke, args.vae_compile)
        for pattern, steps in runs:
            if pattern == "c3-3" and (frames - 3) % 3:
                continue
            r = dict(decoder=dec, **measure(net, pattern, steps, codec, shape, ctx, frames, args.graphs,
                                                         args.steps_first, args.context, args.compile))
            rows.append(r)
            print(r, flush=True)
            write_result(args.out, rows, cols, show=False, **meta)  # a run cut short keeps what it measured
    if args.check_14b:
        del net
        torch.cuda.empty_cache()
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # made on the GPU in bf16: no 56 GB fp32 copy on either side
        try:
            with torch.device("cuda"):
                big = WanDiT(preset("wan2.1-14b")).eval().requires_grad_(False)
        finally:
            torch.set_default_dtype(dtype)
        ctx14 = torch.randn(1, 512, big.cfg.text_dim, device="cuda", dtype=torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
        engine = Engine(big, FewStep("c3-3", 2, 2), (16, 60, 104), PixelCodec(), FULL, 21)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            st = engine.start(ctx14, None, Noise(0, [0], "cuda"))
            t0 = time.perf_counter()
            engine.step(st, decode=False)
            engine.step(st, decode=False)
        meta["wan14b"] = dict(weights_gib=sum(p.numel() for p in big.parameters()) * 2 / 2**30,
                              peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                              two_chunks_s=time.perf_counter() - t0)
        print("14B:", meta["wan14b"])
    write_result(args.out, rows, cols, **meta)
    if args.plot:
        plot({"this run": rows}, args.plot)


def plot(runs: dict[str, list[dict]], path: str) -> None:
    """Frames per second (bars: end to end; ticks: DiT only) and time to the first frame of each row, the
    runs side by side (e.g. compiled vs plain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["decoder"], r["pattern"], r["steps"]) for rows in runs.values() for r in rows))
    width = 0.8 / len(runs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"wspace": 0.6})
    for j, (name, rows) in enumerate(runs.items()):
        by = {(r["decoder"], r["pattern"], r["steps"]): r for r in rows}
        xs = [i + (j - (len(runs) - 1) / 2) * width for i, k in enumerate(keys) if k in by]
        got = [by[k] for k in keys if k in by]
        color = f"C{j}"
        ax.bar(xs, [r["e2e_fps"] for r in got], width, color=color, alpha=0.55, label=f"{name}: end to end")
        ax.plot(xs, [r["dit_fps"] for r in got], "_", color=color, markersize=16, markeredgewidth=2.5,
                label=f"{name}: DiT only")
        ax2.bar(xs, [r["first_ms"] for r in got], width, color=color, alpha=0.55, label=name)
    labels = [f"{d}\n{p} {n} step{'s' * (n > 1)}" for d, p, n in keys]
    for a, title in ((ax, "frames per second"), (ax2, "time to the first frame (ms)")):
        a.set_xticks(range(len(keys)), labels, fontsize=7)
        a.set_title(title, fontsize=9)
    ax.axhline(80, color="grey", lw=0.8, ls="--")
    ax2.axhline(80, color="grey", lw=0.8, ls="--")
    ax2.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def replot(argv: list[str]) -> None:
    """python benchmarks/stream_latency.py --replot NAME=JSON [NAME=JSON ...] --plot PNG (no GPU needed)."""
    import json

    ap = argparse.ArgumentParser(description=replot.__doc__)
    ap.add_argument("--replot", nargs="+", required=True)
    ap.add_argument("--plot", required=True)
    args = ap.parse_args(argv)
    runs = {}
    for item in args.replot:
        name, _, path = item.partition("=")
        runs[name] = json.loads(Path(path).read_text())["rows"]
    plot(runs, args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    replot(sys.argv[1:]) if "--replot" in sys.argv else main()
