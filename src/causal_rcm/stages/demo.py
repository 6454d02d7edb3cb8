"""``causal-rcm demo``: the whole recipe from scratch on a small world, plus the shipped blob-s models.

(a) runs ``configs/blob-tiny.yaml`` (CPU) or ``configs/blob-s-short.yaml`` (GPU: larger world, short
budget) into OUT/recipe; (b) samples every model shipped in ``assets/blob-s/`` and scores it against
freshly rendered data; (c) writes OUT/report.md with both parts.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..eval.report import write_report
from .common import EvalConfig
from .recipe import run_stages
from .report import report_sections, score_bundle, score_data

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "assets" / "blob-s"
SHIPPED = [  # (file, row name, sampling overrides for the CPU demo); missing files are skipped
    ("teacher.safetensors", "blob-s teacher (shipped)", {"steps": 25}),
    ("tf_scm_c3-3.safetensors", "blob-s TF-sCM student, c3-3 (shipped)", {}),
    ("sf_dmd_c3-3.safetensors", "blob-s SF-DMD student, c3-3 (shipped)", {}),
]


def run_demo(out: str | Path = "runs/demo", device=None) -> Path:
    out = Path(out)
    t0 = time.time()
    gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    recipe = ROOT / "configs" / ("blob-s-short.yaml" if gpu else "blob-tiny.yaml")
    rec_out, rec, scored, run_dirs = run_stages(recipe, out / "recipe", device)
    t_recipe = time.time() - t0
    sections = [("Part A: the recipe from scratch", f"`{recipe.relative_to(ROOT).as_posix()}` on "
                 f"{'the GPU' if gpu else 'the CPU'}, {t_recipe / 60:.1f} min.")]
    sections += report_sections(rec_out, scored, run_dirs, root=out)

    shipped = [(ASSETS / f, name, kw) for f, name, kw in SHIPPED if (ASSETS / f).is_file()]
    if shipped:
        ev = EvalConfig(prompts=4, per_prompt=4, batch=16) if not gpu else EvalConfig()
        rows = []
        for path, name, kw in shipped:
            print(f"== sampling shipped model {path.name}", flush=True)
            rows.append(score_bundle(name, path, ev, device=device, **({} if gpu else kw)))
        from ..generate import Generator

        world = Generator.load(shipped[0][0], device="cpu").world
        rows = [score_data(world, ev)] + rows
        sections.append(("Part B: the shipped blob-s models", f"Sampled from `assets/blob-s/` with "
                         f"{ev.prompts} prompts x {ev.per_prompt} samples"
                         + ("" if gpu else " (teacher with 25 Euler steps to fit the CPU budget)") + "."))
        sections += report_sections(out / "shipped", rows, {}, root=out)
    sections.append(("Time", f"Whole demo: {(time.time() - t0) / 60:.1f} min."))
    return write_report(out / "report.md", "causal-rcm demo", sections)
