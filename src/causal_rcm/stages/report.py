"""Scoring bundles on the world's metrics and writing a run's report.md (table, curves, sample strips)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.blobworld import save_samples
from ..eval.media import write_media
from ..eval.metrics import evaluate
from ..eval.report import image, metrics_table, plot_curves, plot_eval_curves, write_report
from ..generate import Generator
from .common import EvalConfig, WorldConfig


@dataclass
class Scored:
    name: str
    metrics: dict
    videos: np.ndarray
    prompts: list[str]
    seconds: float
    note: str = ""
    latency: dict | None = None  # streaming one video: ms per frame, ms to the first frame


def eval_prompts(world: WorldConfig, ev: EvalConfig) -> list[str]:
    return [p for p in world.eval_prompts(ev.prompts) for _ in range(ev.per_prompt)]


def evaluate_generator(gen: Generator, ev: EvalConfig, **sampling) -> dict:
    """World metrics of the generator's samples in the evaluation layout (no timing, no files)."""
    prompts = eval_prompts(gen.world, ev)
    return evaluate(gen.sample(prompts, seed=ev.seed, batch=ev.batch, show_progress=False, **sampling), prompts)


def score_data(world: WorldConfig, ev: EvalConfig) -> Scored:
    """The "data" row: freshly rendered videos with the same prompts as the models get."""
    prompts = eval_prompts(world, ev)
    t0 = time.time()
    s = world.sample(len(prompts), seed=ev.seed + 1, prompts=prompts)
    return Scored("data (rendered)", evaluate(s["videos"], prompts), s["videos"], prompts, time.time() - t0)


def score_bundle(name: str, bundle: str | Path | Generator, ev: EvalConfig, device=None, **sampling) -> Scored:
    gen = bundle if isinstance(bundle, Generator) else Generator.load(bundle, device=device)
    prompts = eval_prompts(gen.world, ev)
    t0 = time.time()
    videos = gen.sample(prompts, seed=ev.seed, batch=ev.batch, **sampling)
    seconds = time.time() - t0
    desc = ", ".join(f"{k}={v}" for k, v in {**gen.sampling, **{k: v for k, v in sampling.items() if v}}.items()
                     if k in ("pattern", "steps_first", "steps", "cfg", "shift", "context"))
    return Scored(name, evaluate(videos, prompts), videos, prompts, seconds, desc, stream_latency(gen, **sampling))


def stream_latency(gen: Generator, repeats: int = 2, **sampling) -> dict:
    """One video at a time, as a player would get it: ms per frame and ms until the first frame is ready
    (a causal model hands over its first block; a bidirectional one has every frame at the end)."""
    best = None
    for _ in range(repeats):  # the first call also pays one-off costs (allocation, caches)
        blocks: list = []
        t0 = time.perf_counter()
        gen.sample([gen.world.prompts()[0]], seed=0, batch=1, show_progress=False, timings=blocks, **sampling)
        total = time.perf_counter() - t0
        first = blocks[0][0] if blocks else total
        if best is None or total < best[0]:
            best = (total, first)
    return {"ms/frame": 1000 * best[0] / gen.world.frames, "first frame ms": 1000 * best[1]}


def report(out: Path, title: str, scored: list[Scored], run_dirs: dict[str, Path], intro: str = "") -> Path:
    """out/report.md with the metrics table, training curves, and a sample strip + GIF per row."""
    sections = report_sections(out, scored, run_dirs, root=out)
    return write_report(out / "report.md", title, ([("About", intro)] if intro else []) + sections)


def report_sections(out: Path, scored: list[Scored], run_dirs: dict[str, Path], root: Path) -> list[tuple[str, str]]:
    """The report's sections; figures and samples are written under ``out``, linked relative to ``root``."""
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in scored:
        n = len(s.videos)
        rows.append({"name": s.name, **s.metrics, "samples": n, "sec/video": s.seconds / max(n, 1),
                     **(s.latency or {}), "sampling": s.note})
    cols = ("samples", "sec/video", "ms/frame", "first frame ms", "sampling")
    sections = [("Metrics (Blobworld spec §4)", metrics_table(rows, extra_cols=cols)
                 + "\n\nEntropies need ≥ 16 samples per prompt; 'n/a' where there are fewer. sec/video: batched "
                 "sampling of the evaluation set; ms/frame and first frame ms: one video streamed alone "
                 "(a bidirectional model has every frame only at the end).")]
    curves = plot_curves(run_dirs, out / "plots" / "loss.png") if run_dirs else None
    if curves:
        sections.append(("Training curves", image(curves.relative_to(root), "training loss per stage")))
    evals = plot_eval_curves(run_dirs, out / "plots" / "eval.png") if run_dirs else None
    if evals:
        sections.append(("Evaluations during training", image(evals.relative_to(root), "world metrics vs step")))
    samples = []
    for s in scored:
        slug = "".join(c if c.isalnum() else "_" for c in s.name).strip("_")
        save_samples(out / "samples" / f"{slug}.npz", s.videos, s.prompts)
        media = write_media(s.videos[:32], out / "samples" / slug)
        png = next(m for m in media if m.suffix == ".png")
        gif = next(m for m in media if m.suffix == ".gif")
        samples.append(f"**{s.name}** ([GIF]({gif.relative_to(root).as_posix()}))\n\n"
                       + image(png.relative_to(root), f"{s.name}: evenly spaced frames of the first samples"))
    sections.append(("Samples", "\n\n".join(samples)))
    return sections
