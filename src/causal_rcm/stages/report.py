"""Scoring bundles on their world's metrics and writing a run's report.md (table, curves, sample strips).

The evaluation layout: ``ev.prompts`` prompts spread over the world's list, ``ev.per_prompt`` samples each,
model noise from ``ev.seed``; the "data" row renders the same prompts from ``ev.seed + 1``. A world model
is driven by that data row's actions (and, for worlds scored against ground truth, starts from its first
block of frames), so its scores compare the same actions frame by frame.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..eval.media import write_media
from ..eval.report import image, metrics_table, plot_curves, plot_eval_curves, write_report
from ..stream.bundle import Bundle
from ..stream.sample import sample_videos
from ..worlds.base import WorldConfig
from ..worlds.registry import make_world
from ..worlds.samples import save_samples
from .common import EvalConfig


@dataclass
class Scored:
    name: str
    metrics: dict
    videos: np.ndarray
    prompts: list[str]
    seconds: float
    note: str = ""
    latency: dict | None = None  # streaming one video: ms per frame, ms to the first frame
    actions: np.ndarray | None = None


@functools.lru_cache(maxsize=8)
def eval_data(world: WorldConfig, ev: EvalConfig) -> dict:
    """The evaluation set: prompts in the evaluation layout, rendered from ``ev.seed + 1`` (with actions);
    kept for the periodic evaluations of a run (an emulated world renders slowly). Callers do not modify it."""
    w = make_world(world)
    prompts = [p for p in w.eval_prompts(ev.prompts) for _ in range(ev.per_prompt)]
    return w.sample(len(prompts), seed=ev.seed + 1, prompts=prompts if w.prompts() else None)


def _model_samples(bundle: Bundle, ev: EvalConfig, data: dict, show_progress: bool, sampling=None,
                   timings=None) -> tuple[dict, int]:
    """(the model's sample dict in the evaluation layout, the number of given context frames)."""
    starts = make_world(bundle.world).starts_from_frames
    context = bundle.first_block_frames if starts else 0
    videos = sample_videos(bundle, data["prompts"], seed=ev.seed, sampling=sampling, batch=ev.batch,
                           actions=data.get("actions"), start_frames=data["videos"][:, :context] if starts else None,
                           show_progress=show_progress, timings=timings)
    return {**data, "videos": videos, "truth": data["videos"]}, context


def evaluate_bundle(bundle: Bundle, ev: EvalConfig, **sampling) -> dict:
    """World metrics of the bundle's samples in the evaluation layout (no timing, no files)."""
    world = make_world(bundle.world_or_raise())
    samples, context = _model_samples(bundle, ev, eval_data(bundle.world, ev), False, sampling.get("sampling"))
    scores = world.metrics(samples, context)
    if ev.paired and bundle.sampling.method == "few_step":
        from .paired import paired_distance

        scores.update({k: v[0] for k, v in paired_distance(bundle, ev.paired, n_boot=0).items()})
    return scores


def score_data(world: WorldConfig, ev: EvalConfig, intervals: bool = True) -> Scored:
    """The "data" row: freshly rendered videos with the same prompts (and actions) as the models get."""
    t0 = time.time()
    s = eval_data(world, ev)
    w = make_world(world)
    scores = w.intervals({**s, "truth": s["videos"]}) if intervals else w.metrics({**s, "truth": s["videos"]})
    return Scored("data (rendered)", scores, s["videos"], s["prompts"], time.time() - t0, actions=s.get("actions"))


def score_bundle(name: str, bundle: str | Path | Bundle, ev: EvalConfig, device=None, sampling=None,
                 intervals: bool = True) -> Scored:
    """Sample the evaluation set, score it (95 % bootstrap intervals over videos) and time one streamed video."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, device=device)
    world = make_world(b.world_or_raise())
    data = eval_data(b.world, ev)
    t0 = time.time()
    samples, context = _model_samples(b, ev, data, True, sampling)
    seconds = time.time() - t0
    scores = world.intervals(samples, context) if intervals else world.metrics(samples, context)
    sp = sampling or b.sampling
    desc = ", ".join(f"{k}={v}" for k, v in vars(sp).items()
                     if k in ("pattern", "steps_first", "steps", "cfg", "shift", "context"))
    return Scored(name, scores, samples["videos"], data["prompts"], seconds, desc, stream_latency(b, ev, sampling),
                  data.get("actions"))


def stream_latency(bundle: Bundle, ev: EvalConfig, sampling=None, repeats: int = 2) -> dict:
    """One video at a time, as a player would get it: ms per frame and ms until the first frame is ready
    (a causal model hands over its first block; a bidirectional one has every frame at the end)."""
    one = EvalConfig(prompts=1, per_prompt=1, seed=0, batch=1)
    data = eval_data(bundle.world, one)
    best = None
    for _ in range(repeats):  # the first call also pays one-off costs (allocation, caches)
        blocks: list = []
        t0 = time.perf_counter()
        _model_samples(bundle, one, data, False, sampling, timings=blocks)
        total = time.perf_counter() - t0
        first = blocks[0][0] if blocks else total
        if best is None or total < best[0]:
            best = (total, first)
    return {"ms/frame": 1000 * best[0] / bundle.world.frames, "first frame ms": 1000 * best[1]}


def report(out: Path, title: str, scored: list[Scored], run_dirs: dict[str, Path], world: WorldConfig | None,
           intro: str = "") -> Path:
    """out/report.md with the metrics table, training curves, and a sample strip + GIF per row."""
    sections = report_sections(out, scored, run_dirs, world, root=out)
    return write_report(out / "report.md", title, ([("About", intro)] if intro else []) + sections)


def report_sections(out: Path, scored: list[Scored], run_dirs: dict[str, Path], world: WorldConfig | None,
                    root: Path) -> list[tuple[str, str]]:
    """The report's sections; figures and samples are written under ``out``, linked relative to ``root``.
    A free-text recipe (``world`` None: Wan2.1) has no world metrics: its report holds the training curves."""
    if world is None:
        curves = plot_curves(run_dirs, out / "plots" / "loss.png") if run_dirs else None
        stages = "\n".join(f"- `{name}`: `{Path(d).relative_to(root).as_posix() if Path(d).is_relative_to(root) else d}`"
                           for name, d in run_dirs.items())
        return [("Stages", "A free-text model has no world metrics; the stages' run folders:\n\n" + stages)] + (
            [("Training curves", image(curves.relative_to(root), "training loss per stage"))] if curves else [])
    w = make_world(world)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in scored:
        n = len(s.videos)
        rows.append({"name": s.name, **s.metrics, "samples": n, "sec/video": s.seconds / max(n, 1),
                     **(s.latency or {}), "sampling": s.note})
    cols = ("samples", "sec/video", "ms/frame", "first frame ms", "sampling")
    sections = [(f"Metrics ({world.name} {world.variant})", metrics_table(rows, w.higher_is_better, extra_cols=cols)
                 + "\n\nValues with a 95 % interval: Blobworld resamples prompts, each with all its videos (Blob-FD: the "
                 "delete-one-prompt jackknife), Atari resamples videos. Entropies "
                 "need ≥ 16 samples per prompt; 'n/a' where there are fewer. sec/video: batched sampling of the "
                 "evaluation set; ms/frame and first frame ms: one video streamed alone (a bidirectional model "
                 "has every frame only at the end).")]
    curves = plot_curves(run_dirs, out / "plots" / "loss.png") if run_dirs else None
    if curves:
        sections.append(("Training curves", image(curves.relative_to(root), "training loss per stage")))
    evals = plot_eval_curves(run_dirs, out / "plots" / "eval.png", w.higher_is_better,
                             w.curve_metrics) if run_dirs else None
    if evals:
        sections.append(("Evaluations during training", image(evals.relative_to(root), "world metrics vs step")))
    samples = []
    for s in scored:
        slug = "".join(c if c.isalnum() else "_" for c in s.name).strip("_")
        save_samples(out / "samples" / f"{slug}.npz", s.videos, s.prompts, s.actions)
        media = write_media(s.videos[:32], out / "samples" / slug)
        png = next(m for m in media if m.suffix == ".png")
        gif = next(m for m in media if m.suffix == ".gif")
        samples.append(f"**{s.name}** ([GIF]({gif.relative_to(root).as_posix()}))\n\n"
                       + image(png.relative_to(root), f"{s.name}: evenly spaced frames of the first samples"))
    sections.append(("Samples", "\n\n".join(samples)))
    return sections
