"""Run reports: a Markdown page with a metrics table against the data row, loss curves and sample strips.

Generic over worlds: a world brings its metric names and which way each is better (``higher``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..io import read_jsonl


def fmt(v) -> str:
    """A table cell: numbers to 3 decimals, (value, low, high) as "value [low, high]", NaN as n/a."""
    if isinstance(v, (tuple, list)) and len(v) == 3:
        if not all(isinstance(x, float) and math.isfinite(x) for x in v[1:]):
            return fmt(v[0])
        return f"{fmt(v[0])} [{fmt(v[1])}, {fmt(v[2])}]"
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def metrics_table(rows: list[dict], higher: dict[str, bool], extra_cols: tuple[str, ...] = ()) -> str:
    """Markdown table; each row is {"name": ..., <metric>: value or (value, low, high), ...}. Columns: the
    metrics of ``higher`` present in any row, then ``extra_cols``."""
    cols = [m for m in higher if any(m in r for r in rows)] + [c for c in extra_cols if any(c in r for r in rows)]
    head = "| model | " + " | ".join(f"{c} {'↑' if higher[c] else '↓'}" if c in higher else c
                                     for c in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 1)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def plot_curves(run_dirs: dict[str, Path], out_png: Path, keys=("loss",), log_y: bool = True) -> Path | None:
    """Training curves of several stages side by side (one panel per stage), from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for name, d in run_dirs.items():
        recs = [r for r in read_jsonl(Path(d) / "metrics.jsonl") if "loss" in r]
        if recs:
            series[name] = recs
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, recs) in zip(axes[0], series.items()):
        steps = np.array([r["step"] for r in recs])
        for k in keys:
            vals = np.array([r.get(k, np.nan) for r in recs], dtype=float)
            ax.plot(steps, vals, label=k, lw=1.2)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_eval_curves(run_dirs: dict[str, Path], out_png: Path, higher: dict[str, bool],
                     metrics=("prompt_accuracy", "motion_error")):
    """World metrics of periodic evaluations against the training step, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    any_data = False
    for ax, m in zip(axes[0], metrics):
        for name, d in run_dirs.items():
            recs = [r for r in read_jsonl(Path(d) / "metrics.jsonl") if f"eval/{m}" in r]
            if recs:
                any_data = True
                ax.plot([r["step"] for r in recs], [r[f"eval/{m}"] for r in recs], marker="o", label=name)
        ax.set_title(f"{m} ({'higher' if higher.get(m, True) else 'lower'} is better)")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if any_data:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png if any_data else None


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Markdown page from (heading, body) sections; image paths in bodies are relative to ``path``."""
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.strip(), ""]
    from ..io import atomic_write

    return atomic_write(path, "\n".join(body))


def image(rel: str | Path, caption: str) -> str:
    return f"![{caption}]({Path(rel).as_posix()})\n\n*{caption}*"
