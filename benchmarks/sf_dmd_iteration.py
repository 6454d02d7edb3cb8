"""Wall time of one SF-DMD training step (critic_ratio critic updates on no-grad rollouts + one generator
update through the rollout + EMA), measured on the stage's own trainer (`train_sf_dmd`), per chunk pattern
and with replayed or plain backprop.

    python benchmarks/sf_dmd_iteration.py --steps 25 --out results/sf_dmd_iteration.json

Each case trains a fresh run directory for --steps steps from the shipped blob-s bundles (evaluation and
checkpoints off, a log record every step) and reports the median of the per-step wall times after --warmup
steps, and the peak GPU memory. The weights do not change the cost: the c1-1 cases start from the c3-3
student's weights with pattern=c1-1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import write_result

from causal_rcm.stages.sf_dmd import resolve, train_sf_dmd  # (common puts src on the path)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "blob-s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default="c3-3,c1-1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="results/sf_dmd_iteration.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    if args.steps <= args.warmup + 1:
        sys.exit("--steps must exceed --warmup + 1")
    rows = []
    for pattern in args.patterns.split(","):
        for replay in (True, False):
            cfg = resolve("blob-s", [f"init={ASSETS / 'tf_scm_c3-3.safetensors'}",
                                     f"teacher={ASSETS / 'teacher.safetensors'}", f"pattern={pattern}",
                                     f"replay={replay}", f"train.steps={args.steps}", f"train.batch={args.batch}",
                                     "train.eval_every=0", "train.log_every=1", "train.ckpt_every=1000000"])
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


if __name__ == "__main__":
    main()
