"""Does a world model use its actions? Its flow-matching error on held-out data with the true actions and with
the actions permuted across the batch, per noise time, with 95 % bootstrap intervals (``eval/actions.py``).

    python scripts/action_sensitivity.py BUNDLE --data FILE.npz|SYNTH_DIR [--batches 8 --batch 64] --out r.json

A ratio of 1 means the model ignores its actions. Causal models are scored in the TF layout of their chunk
pattern (clean context), bidirectional teachers on the whole noisy video. ``--data``: a world sample file
(`causal-rcm world sample`, rendered with another seed than the training data) or a synthetic dataset folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from causal_rcm.eval.actions import action_sensitivity  # noqa: E402
from causal_rcm.io import write_json  # noqa: E402
from causal_rcm.masks import ChunkPattern  # noqa: E402
from causal_rcm.stages.tf import TFData  # noqa: E402
from causal_rcm.stream.bundle import Bundle  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--times", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    bundle = Bundle.load(a.bundle, device=a.device)
    if not bundle.net.cfg.action_dim:
        raise SystemExit(f"{a.bundle} is not a world model (no action embedding)")
    pattern = ChunkPattern.parse(bundle.sampling.pattern) if bundle.causal else None
    data = TFData(a.data, bundle, False, a.seed, bundle.device)
    batches = (data.batch(i, list(range(a.batch)))[0] for i in range(a.batches))
    rows = action_sensitivity(bundle.net.eval(), batches, [float(t) for t in a.times.split(",")], pattern, seed=a.seed)
    layout = f"causal, TF layout {bundle.sampling.pattern}" if pattern else "bidirectional"
    print(f"{a.bundle} ({layout}) on {a.data}: n = {rows[0]['n']} videos drawn (with replacement)")
    print("| t | error, true actions | error, permuted | ratio [95 % CI] |\n| --- | --- | --- | --- |")
    for r in rows:
        lo, hi = r["ratio_ci95"]
        print(f"| {r['t']:.2f} | {r['error_true']:.5f} | {r['error_permuted']:.5f} | "
              f"{r['ratio']:.3f} [{lo:.3f}, {hi:.3f}] |")
    if a.out:
        write_json(a.out, {"bundle": a.bundle, "data": a.data, "layout": layout, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
