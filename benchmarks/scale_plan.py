"""A memory and throughput plan for 8 and 64 GPUs (Wan2.1 1.3B and 14B) computed from one GPU's measured
figures (``tf_iteration.py`` / ``sf_dmd_iteration.py`` JSON at 1.3B, batch 1, with FSDP2 on one GPU).

Memory per GPU, FSDP2 over all W GPUs (``train/parallelize.py``: fp32 sharded states, bf16 gathered blocks):

    trained network    16 B/param / W   (fp32 weights 4, gradients 4, AdamW moments 8)
    EMA, frozen nets    4 B/param / W   (fp32 shards; gathered in bf16 block by block)
    gathered blocks     2 × 2 B × block params (the block computing and the one prefetched), bf16
    activations         measured peak − the states above at W = 1, per sample; a 14B block's activation
                        scales with its width (dim), the stack with its depth (checkpointed blocks keep
                        model-width tensors only)

Time per iteration per GPU (one sample per GPU and micro-batch): the measured compute, scaled for 14B by its
model FLOPs (``models/flops.py``) at the same MFU; FSDP2's traffic per GPU, (W − 1)/W × (bf16 all-gather of
the weights per forward and again per backward + fp32 reduce-scatter of the gradients), over the bus
bandwidth (NVLink inside a node of 8, InfiniBand between nodes); the step takes the larger of the two
(prefetching overlaps them). Throughput = W samples / step.

    python benchmarks/scale_plan.py --tf results/tf_iteration_h200.json --sf results/sf_dmd_iteration_h200.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch  # noqa: F401  (common's path setup imports torch anyway)
from common import write_result

from causal_rcm.config import preset  # (common puts src on the path)
from causal_rcm.models.flops import forward_flops

GIB = 2**30
HBM_GIB = 139.0                    # H200 usable
BUS_GBS = {"nvlink": 350.0, "ib": 40.0}  # NCCL bus bandwidth per GPU: NVLink 4 inside a node, 400 Gb/s NDR across
GPUS_PER_NODE = 8
# per method: (trained nets, frozen + EMA nets, all-gathers of a whole network in forwards, in backwards,
# reduce-scatters of a whole network's gradients); TF: the student's pass; dCM / sCM: + the teacher's and the
# no-grad student pass (the online student at t1 / the forward-mode pass)
NETS = {"tf": (1, 1, 1, 1, 1), "tf_dcm": (1, 2, 3, 1, 1), "tf_scm": (1, 2, 3, 1, 1), "tf_meanflow": (1, 2, 3, 1, 1)}


def sf_dmd_passes(critic_ratio: int, blocks: int) -> tuple[int, ...]:
    """Generator + critic trained, real score + EMA frozen. Each critic update: a rollout (blocks gathered
    once: ``Placement.gathered``) and the critic's forward and backward; the generator update: a rollout,
    the real and fake scores, and per block a replayed forward and backward (one reduce-scatter each)."""
    k = critic_ratio
    return 2, 2, 2 * k + 3 + blocks, k + blocks, k + blocks


def block_params(cfg) -> int:
    d, f = cfg.dim, cfg.ffn_dim
    return 2 * (4 * d * d + 4 * d) + 2 * d * f + d + f + 6 * d + 4 * d + 2 * d


def tf_tokens(cfg, video=(16, 21, 60, 104)) -> tuple[int, int]:
    _, T, H, W = video
    return 2 * T * (H // cfg.patch_size[1]) * (W // cfg.patch_size[2]), 512


def states_gib(params: int, trained: int, frozen: int, world: int) -> float:
    return (16 * trained + 4 * frozen) * params / world / GIB


def plan_row(method: str, ac: str, model: str, world: int, ms_1p3b: float, peak_1p3b_gib: float,
             passes: tuple) -> dict:
    small, cfg = preset("wan2.1-1.3b"), preset(model)
    trained, frozen, fwd_gathers, bwd_gathers, scatters = passes
    # activations per sample, measured at 1.3B on one GPU, scaled by width × depth
    act = max(0.0, peak_1p3b_gib - states_gib(small.num_params(), trained, frozen, 1)
              - 4 * block_params(small) * 2 / GIB)
    act *= (cfg.dim * cfg.num_layers) / (small.dim * small.num_layers)
    P = cfg.num_params()
    mem = states_gib(P, trained, frozen, world) + 4 * block_params(cfg) * 2 / GIB + act
    # compute: the measured time × the ratio of model FLOPs of one TF-layout forward (same MFU)
    L, Lc = tf_tokens(cfg)
    ratio = forward_flops(cfg, 1, L, Lc, L * L // 2, 42) / forward_flops(small, 1, L, Lc, L * L // 2, 42)
    compute_s = ms_1p3b / 1e3 * ratio
    # FSDP2 traffic per GPU and step
    shard = (world - 1) / world
    bytes_ = shard * P * (2 * (fwd_gathers + bwd_gathers) + 4 * scatters)
    bus = BUS_GBS["nvlink"] if world <= GPUS_PER_NODE else BUS_GBS["ib"]
    comm_s = bytes_ / (bus * 1e9)
    step = max(compute_s, comm_s)
    return dict(method=method, ac=ac, model=model, gpus=world, mem_gib=round(mem, 1), fits="yes" if mem < HBM_GIB else "NO",
                compute_s=round(compute_s, 2), comm_s=round(comm_s, 2), samples_s=round(world / step, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf", required=True, action="append", help="tf_iteration.py JSON (wan2.1-1.3b, batch 1); "
                    "repeat for several activation-checkpointing settings")
    ap.add_argument("--sf", default=None, help="sf_dmd_iteration.py JSON (wan2.1-1.3b, batch 1)")
    ap.add_argument("--gpus", default="8,64")
    ap.add_argument("--out", default="results/scale_plan.json")
    args = ap.parse_args()
    measured = []
    for path in args.tf:
        tf = json.loads(Path(path).read_text())
        for r in tf["rows"]:
            measured.append((r["method"], tf.get("ac", "?"), r["ms"], r["peak_gib"], NETS[r["method"]]))
    if args.sf:
        sf = json.loads(Path(args.sf).read_text())
        for r in sf["rows"]:
            blocks = 7 if r["pattern"] == "c3-3" else 21  # 21 latent frames
            measured.append(("sf_dmd", sf.get("ac", "?"), r["s_per_step"] * 1e3, r["peak_gib"],
                             sf_dmd_passes(r["critic_ratio"], blocks)))
    rows = [plan_row(m, ac, model, w, ms, peak, passes) for m, ac, ms, peak, passes in measured
            for model in ("wan2.1-1.3b", "wan2.1-14b") for w in map(int, args.gpus.split(","))]
    write_result(args.out, rows, [("method", "method", 12, "s"), ("ac", "AC", 10, "s"), ("model", "model", 12, "s"),
                                  ("gpus", "GPUs", 5, "d"),
                                  ("mem_gib", "GiB/GPU", 8, ".1f"), ("fits", "fits", 5, "s"),
                                  ("compute_s", "compute s", 10, ".2f"), ("comm_s", "comm s", 7, ".2f"),
                                  ("samples_s", "samples/s", 10, ".2f")],
                 measured_tf=args.tf, measured_sf=args.sf, bus_gbs=BUS_GBS, hbm_gib=HBM_GIB)


if __name__ == "__main__":
    main()
