"""Decode time of the streaming video decoders at 480×832 (bf16), against diffusers' whole-clip decode.

Decoders (random weights at the real configurations: speed does not depend on the values):
  wan_vae  diffusers' AutoencoderKLWan at the Wan2.1 VAE config, streamed by WanVAECodec
  taehv    TinyDecoderCodec at the taew2_1 config (channels_last: 2-D convs only)

Cases (B = 1, latents 60×104, a clip of 21 latent frames = 81 video frames):
  first     the stream's first call: 1 latent → 1 frame (time to first frame)
  chunk-1   a steady-state call on 1 latent frame (4 video frames), from a state after 3 latents
  chunk-3   the same with 3 latent frames (12 video frames)
  clip-c3   the whole clip streamed in 3-latent chunks (1 + 3 + ... : 7 calls, 81 frames)
  diffusers vae.decode of the whole clip (its own frame-by-frame loop), wan_vae only

ms/frame = median call time / video frames produced. Also checks that no decode call synchronises the host
(torch.cuda.set_sync_debug_mode("error")), which the engine's side-stream decode relies on, and prints the
streamed clip's largest difference from diffusers' own decode (bf16).

    python benchmarks/decoders.py --out results/decoders.json [--wan-channels-last] [--wan-compile] [--profile]
    python benchmarks/decoders.py --smoke      # tiny configurations: checks the script in seconds

Prints a table and writes JSON. Timing: CUDA events, median of --iters after --warmup calls.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from common import time_ms, write_result

from causal_rcm.models.vae import TinyDecoderConfig, TinyVideoDecoder, channels_last_, taew2_1  # (common: src on path)
from causal_rcm.stream.codec import TinyDecoderCodec, WanVAECodec


def decode_clip(codec, z, chunk):
    """Stream the whole clip: the first call takes 1 latent, the rest `chunk` at a time → list of frame chunks."""
    state = codec.init_state(z.shape[0])
    frames, state = codec.decode(z[:, :, :1], state)
    out = [frames]
    for i in range(1, z.shape[2], chunk):
        frames, state = codec.decode(z[:, :, i : i + chunk], state)
        out.append(frames)
    return out


def syncs(codec, z) -> str:
    """'none' if two decode calls run under sync debug mode "error", else the error's first line."""
    state = codec.init_state(z.shape[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, state = codec.decode(z[:, :, :1], state)
        codec.decode(z[:, :, 1:4], state)
        return "none"
    except RuntimeError as e:
        return str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def bench(name, codec, z, args, reference=None):
    rows = []
    t0 = time.perf_counter()
    primed = codec.decode(z[:, :, :3], codec.init_state(1))[1]
    torch.cuda.synchronize()
    print(f"  {name:8s} first 3 latents (compiles, if compiled) {time.perf_counter() - t0:.1f} s", flush=True)

    def row(case, fn, frames, warmup=args.warmup, iters=args.iters):
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(fn, warmup, iters)
        rows.append(dict(decoder=name, case=case, frames=frames, ms=ms, ms_per_frame=ms / frames,
                         fps=1000 * frames / ms, peak_gib=torch.cuda.max_memory_allocated() / 2**30))
        print(f"  {name:8s} {case:10s} {ms:9.2f} ms  {ms / frames:7.2f} ms/frame", flush=True)

    row("first", lambda: codec.decode(z[:, :, :1], codec.init_state(1)), 1)
    for c in (1, 3):
        chunk = z[:, :, 3 : 3 + c]
        row(f"chunk-{c}", lambda chunk=chunk: codec.decode(chunk, primed), 4 * c)
    n = 1 + 4 * (z.shape[2] - 1)
    row("clip-c3", lambda: decode_clip(codec, z, 3), n, warmup=1, iters=max(2, args.iters // 3))
    if reference is not None:
        row("diffusers", reference, n, warmup=1, iters=max(2, args.iters // 3))
        err = (torch.cat(decode_clip(codec, z, 3), 2).float() - reference().sample.float()).abs()
        print(f"  {name:8s} streamed clip vs diffusers' decode: max |Δ| {err.max():.4f}, mean {err.mean():.5f}")
        for r in rows:
            r["max_abs_vs_diffusers"] = err.max().item()
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            codec.decode(z[:, :, 3:6], primed)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
    found = syncs(codec, z)
    for r in rows:
        r["host_syncs"] = found
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/decoders.json")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--wan-channels-last", action="store_true", help="Wan VAE in channels_last_3d memory format")
    ap.add_argument("--wan-compile", action="store_true", help="WanVAECodec(vae, compile=True) (torch.compile)")
    ap.add_argument("--profile", action="store_true", help="print each decoder's top CUDA kernels on a chunk-3 call")
    ap.add_argument("--smoke", action="store_true", help="tiny configurations at 64×64, 9 latents: checks the script")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (the CPU checks of these decoders are tests/test_codecs.py)")
    import diffusers

    torch.backends.cudnn.benchmark = True
    dev, dt = torch.device("cuda"), torch.bfloat16
    T, h, w = (9, 8, 8) if args.smoke else (21, 60, 104)  # 480×832 video → 60×104 latents, 81 frames → 21
    wan_kw = dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if args.smoke else {}  # else Wan2.1's
    tae_cfg = TinyDecoderConfig(widths=(16, 8, 8, 8)) if args.smoke else taew2_1()
    torch.manual_seed(0)
    with dev:
        vae = diffusers.AutoencoderKLWan(**wan_kw).to(dt).eval()
        tae = TinyVideoDecoder(tae_cfg).to(dt).eval().to(memory_format=torch.channels_last)
    if args.wan_channels_last:
        channels_last_(vae)
    z = torch.randn(1, 16, T, h, w, device=dev, generator=torch.Generator(dev).manual_seed(0))
    wan = WanVAECodec(vae, compile=args.wan_compile)
    z_raw = wan.stream.denormalize(z)

    rows = []
    with torch.inference_mode():
        rows += bench("wan_vae", wan, z, args, reference=lambda: vae.decode(z_raw))
        rows += bench("taehv", TinyDecoderCodec(tae), z, args)
    write_result(args.out, rows, [("decoder", "decoder", 8, "s"), ("case", "case", 10, "s"), ("frames", "frames", 6, "d"),
                                  ("ms", "ms", 9, ".2f"), ("ms_per_frame", "ms/frame", 9, ".3f"),
                                  ("fps", "fps", 8, ".1f"), ("peak_gib", "peak GiB", 8, ".2f"),
                                  ("host_syncs", "host syncs", 10, "s")],
                 dtype="bfloat16", latents=[T, h, w], wan_channels_last=args.wan_channels_last, wan_compile=args.wan_compile, smoke=args.smoke,
                 diffusers=diffusers.__version__)


if __name__ == "__main__":
    main()
