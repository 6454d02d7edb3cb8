"""``causal-rcm demo``: the whole recipe from scratch on a small world, plus the shipped blob-s models.

(a) runs the built-in recipe ``blob-tiny`` (CPU) or ``blob-s-short`` (GPU: larger world, short budget) into
OUT/recipe; (b) samples every model shipped in ``ASSETS`` (``--assets``, by default ``assets/blob-s`` of the
working directory; skipped with a note when absent, e.g. in an installed wheel) and scores it against freshly
rendered data; (c) writes OUT/report.md with both parts.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..eval.report import write_report
from ..io import say
from ..stream.bundle import Bundle
from ..stream.sampling import with_overrides
from .common import EvalConfig
from .recipe import recipe_path, run_stages
from .report import report_sections, score_bundle, score_data

SHIPPED = [  # (file, row name, Euler steps for the CPU demo); missing files are skipped
    ("teacher.safetensors", "blob-s teacher (shipped)", 25),
    ("tf_scm_c3-3.safetensors", "blob-s TF-sCM student, c3-3 (shipped)", None),
    ("sf_dmd_c3-3.safetensors", "blob-s SF-DMD student, c3-3 (shipped)", None),
]


def run_demo(out: str | Path = "runs/demo", device=None, assets: str | Path = "assets/blob-s") -> Path:
    out, assets = Path(out), Path(assets)
    t0 = time.time()
    gpu = (str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    name = "blob-s-short" if gpu else "blob-tiny"
    rec_out, rec, scored, run_dirs, world = run_stages(recipe_path(name), out / "recipe", device)
    t_recipe = time.time() - t0
    sections = [("Part A: the recipe from scratch", f"Built-in recipe `{name}` on "
                 f"{'the GPU' if gpu else 'the CPU'}, {t_recipe / 60:.1f} min.")]
    sections += report_sections(rec_out, scored, run_dirs, world, root=out)

    shipped = [(assets / f, row, steps) for f, row, steps in SHIPPED if (assets / f).is_file()]
    if shipped:
        ev = EvalConfig(prompts=4, per_prompt=4, batch=16) if not gpu else EvalConfig()
        rows = []
        for path, row, steps in shipped:
            say(f"== sampling shipped model {path.name}")
            b = Bundle.load(path, device=device)
            sp = with_overrides(b.sampling, steps=steps) if (steps and not gpu) else None
            rows.append(score_bundle(row, b, ev, sampling=sp))
        world = Bundle.load(shipped[0][0], device="cpu").world
        rows = [score_data(world, ev)] + rows
        sections.append(("Part B: the shipped blob-s models", f"Sampled from `{assets.as_posix()}` with "
                         f"{ev.prompts} prompts x {ev.per_prompt} samples"
                         + ("" if gpu else " (teacher with 25 Euler steps to fit the CPU budget)") + "."))
        sections += report_sections(out / "shipped", rows, {}, world, root=out)
    else:
        sections.append(("Part B: the shipped blob-s models", f"skipped: no shipped bundles in `{assets}` "
                         "(give --assets DIR)."))
    sections.append(("Time", f"Whole demo: {(time.time() - t0) / 60:.1f} min."))
    return write_report(out / "report.md", "causal-rcm demo", sections)
