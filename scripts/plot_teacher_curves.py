"""Loss and world-metric curves of the shipped blob-s teacher over both of its training runs (the first run,
then the continuation from its weights), for docs/results/blobworld.md.

    python scripts/plot_teacher_curves.py [--out docs/results]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUNS = [("first run", RESULTS / "teacher_blob_s_metrics.jsonl"),
        ("continued", RESULTS / "teacher_blob_s_continue_metrics.jsonl")]


def load():
    """Records of both runs on one step axis: the continuation's steps offset by the first run's last step."""
    offset, out = 0, []
    for name, path in RUNS:
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out.append((name, offset, [dict(r, step=r["step"] + offset) for r in recs]))
        offset += max(r["step"] for r in recs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results"))
    out = Path(ap.parse_args().out)
    runs = load()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, start, recs in runs:
        tr = [r for r in recs if "loss" in r]
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=1.0, label=name)
        if start:
            ax.axvline(start, color="gray", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", ylabel="flow-matching loss", title="blob-s teacher")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "teacher_blob_s_loss.png", dpi=110)
    metrics = [("prompt_accuracy", None), ("motion_error", 0.25), ("size_stability", 0.05)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, (m, target) in zip(axes, metrics):
        for name, start, recs in runs:
            ev = [r for r in recs if f"eval/{m}" in r]
            ax.plot([r["step"] for r in ev], [r[f"eval/{m}"] for r in ev], "o-", ms=3, label=name)
        if target is not None:
            ax.axhline(target, color="red", ls="--", lw=1, label="issue 3 target")
        ax.set(title=m, xlabel="step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "teacher_blob_s_eval.png", dpi=110)
    print(f"wrote {out / 'teacher_blob_s_loss.png'} and {out / 'teacher_blob_s_eval.png'}")


if __name__ == "__main__":
    main()
