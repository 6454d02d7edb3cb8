"""Claim 1 (docs/results/claims.md): does TF-sCM reach TF-dCM's final paired teacher-ODE distance ≥ 5× sooner?

Reads the metrics.jsonl of every seed's run of both arms, applies the rule written before the runs
(``causal_rcm.eval.convergence``), prints the table, writes JSON and a figure of the curves (each arm's mean
with the band between its seeds' lowest and highest value, the target D* dashed).

    python scripts/claim1.py --slow RUN/tf_dcm_s0 RUN/tf_dcm_s1 ... --fast RUN/tf_scm_s0 ... \\
        --key eval/paired_rmse@1 --out results/claim1.json --plot docs/results/claim1.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from causal_rcm.eval.convergence import read_curve, speedup  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow", nargs="+", required=True, help="run folders (or metrics.jsonl) of the slow arm")
    ap.add_argument("--fast", nargs="+", required=True, help="run folders (or metrics.jsonl) of the fast arm")
    ap.add_argument("--names", default="TF-dCM,TF-sCM")
    ap.add_argument("--key", default="eval/paired_rmse@1")
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--out", default="results/claim1.json")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()

    def curves(paths):
        files = [Path(p) / "metrics.jsonl" if Path(p).is_dir() else Path(p) for p in paths]
        return [read_curve(f, args.key) for f in files]

    slow, fast = curves(args.slow), curves(args.fast)
    r = speedup(slow, fast, n_boot=args.n_boot)
    slow_name, fast_name = args.names.split(",")
    r.update(key=args.key, slow=slow_name, fast=fast_name, slow_runs=args.slow, fast_runs=args.fast)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))
    print(f"target D* = {r['target']:.3f} ({slow_name}'s mean final {args.key}, {r['seeds'][0]} seeds)")
    for name, ns in ((slow_name, r["n_slow"]), (fast_name, r["n_fast"])):
        print(f"  {name:8s} iterations to D* per seed: {', '.join(f'{n:g}' for n in ns)}")
    print(f"speed-up {r['speedup']:.2f}  95 % interval [{r['low']:.2f}, {r['high']:.2f}]  "
          f"({r['n_boot']} bootstrap resamples over seeds)  verdict: {r['verdict']}")
    print(f"wrote {args.out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        for name, cs, colour in ((slow_name, slow, "tab:blue"), (fast_name, fast, "tab:orange")):
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in cs)))
            vals = np.array([[dict(c)[s] for s in steps] for c in cs])
            ax.plot(steps, vals.mean(0), color=colour, label=f"{name} (mean of {len(cs)} seeds)")
            ax.fill_between(steps, vals.min(0), vals.max(0), color=colour, alpha=0.2)
        ax.axhline(r["target"], color="k", ls="--", lw=1, label=f"D* = {slow_name}'s final")
        ax.set_xlabel("iteration")
        ax.set_ylabel(args.key.removeprefix("eval/"))
        ax.set_title(f"speed-up {r['speedup']:.1f} [{r['low']:.1f}, {r['high']:.1f}]: {r['verdict']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
