"""World metrics against training iteration, from the metrics.jsonl of training runs (their eval/ records).

    python scripts/plot_convergence.py            # the two figures of docs/results/blobworld.md
    python scripts/plot_convergence.py --runs "TF-dCM=a.jsonl,b.jsonl" "TF-sCM=c.jsonl" --out fig.png

Several logs of one run (e.g. a finely evaluated 200-iteration run and the same run, same seed, continued to
600 iterations with coarser evaluation) are merged by step; where two logs evaluated the same step, the first
given wins. Also prints, per metric, each run's best value and the first iteration at which each other run
reaches it (for the docs' TF-dCM / TF-sCM figure and for --runs).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = [("prompt_accuracy", "↑"), ("motion_error", "↓"), ("artifact_rate", "↓"), ("size_stability", "↓"),
           ("position_entropy", "↑"), ("direction_entropy", "↑")]
TF = ROOT / "results/tf_convergence_c3-3"
SF = ROOT / "results/sf_dmd_blob_s"
FIGURES = {
    ROOT / "docs/results/tf_convergence_c3-3.png": (
        "TF-dCM vs TF-sCM (c3-3, 2 steps; batch 64, lr 5e-5 after 200 warm-up iterations)",
        [f"TF-dCM={TF}/tf_dcm_200it.jsonl,{TF}/tf_dcm_600it.jsonl",
         f"TF-sCM={TF}/tf_scm_200it.jsonl,{TF}/tf_scm_600it.jsonl"], True),
    ROOT / "docs/results/sf_dmd_curves.png": (
        "SF-DMD (2 steps; generator steps, batch 32, critic ratio 5)",
        [f"c3-3 from TF-sCM (shipped)={SF}/shipped_c3-3_from_tf_scm.jsonl",
         f"c1-1 from TF-sCM={SF}/c1-1_from_tf_scm.jsonl",
         f"c1-1 from TF-dCM={SF}/c1-1_from_tf_dcm.jsonl"], False),
}


def load(paths: list[str]) -> dict[int, dict]:
    """step -> {metric: value} over the eval/ records of the logs (first log wins on a shared step)."""
    out: dict[int, dict] = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            rec = json.loads(line)
            ev = {k[5:]: v for k, v in rec.items() if k.startswith("eval/")}
            if ev and rec["step"] not in out:
                out[rec["step"]] = ev
    return dict(sorted(out.items()))


def first_reaching(curve: dict[int, dict], metric: str, target: float, up: bool) -> int | None:
    for step, ev in curve.items():
        v = ev.get(metric, math.nan)
        if math.isfinite(v) and (v >= target if up else v <= target):
            return step
    return None


def report(curves: dict[str, dict[int, dict]]) -> None:
    for metric, arrow in METRICS:
        up = arrow == "↑"
        for name, curve in curves.items():
            vals = [(ev[metric], s) for s, ev in curve.items() if math.isfinite(ev.get(metric, math.nan))]
            if not vals:
                continue
            best, at = (max if up else min)(vals, key=lambda x: x[0])
            others = ", ".join(f"{o} reaches it at {first_reaching(c, metric, best, up)}"
                               for o, c in curves.items() if o != name)
            print(f"{metric:18s} {name}: best {best:.3f} at iteration {at}; {others}")


def plot(curves: dict[str, dict[int, dict]], title: str, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for ax, (metric, arrow) in zip(axes.flat, METRICS):
        for name, curve in curves.items():
            steps = [s for s, ev in curve.items() if math.isfinite(ev.get(metric, math.nan))]
            ax.plot(steps, [curve[s][metric] for s in steps], marker=".", label=name)
        ax.set_title(f"{metric} {arrow}")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training iteration")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", help="NAME=LOG[,LOG...] per run (default: the docs' figures)")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", default="convergence.png")
    args = ap.parse_args()
    figures = {args.out: (args.title, args.runs, True)} if args.runs else FIGURES
    for out, (title, runs, compare) in figures.items():
        curves = {}
        for item in runs:
            name, logs = item.split("=", 1)
            curves[name] = load(logs.split(","))
        if compare:  # the docs' SF-DMD runs differ in chunk pattern: their bests are not comparable
            print(f"== {title}")
            report(curves)
        plot(curves, title, Path(out))


if __name__ == "__main__":
    main()
