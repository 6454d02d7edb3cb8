"""Recipes: a YAML file listing stages, run in order into one run folder, then a report.

    name: blob-tiny
    out: runs/blob-tiny
    stages:
      - {stage: teacher, preset: blob-tiny, overrides: [train.steps=300]}
    report: {prompts: 4, per_prompt: 4}

Each stage writes RUN/<name>/ (name defaults to the stage) and hands its outputs (bundle path, run folder)
to later stages. A stage whose bundle already exists is skipped, so a killed recipe resumes where it was.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from .common import EvalConfig
from .report import report, score_bundle, score_data

RECIPE_KEYS = {"name", "out", "stages", "report"}
STAGE_KEYS = {"stage", "name", "preset", "overrides"}


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}")
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict) or "stages" not in recipe:
        raise ValueError(f"{path}: a recipe is a mapping with a 'stages' list")
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {sorted(unknown)}; valid: {sorted(RECIPE_KEYS)}")
    names = set()
    for st in recipe["stages"]:
        bad = set(st) - STAGE_KEYS
        if bad:
            raise ValueError(f"{path}: unknown keys {sorted(bad)} in stage {st}; valid: {sorted(STAGE_KEYS)}")
        if st.get("stage") not in STAGE_RUNNERS:
            raise ValueError(f"{path}: unknown stage {st.get('stage')!r}; stages: {sorted(STAGE_RUNNERS)}")
        name = st.get("name", st["stage"])
        if name in names:
            raise ValueError(f"{path}: two stages are named {name!r}; give one a 'name'")
        names.add(name)
    recipe.setdefault("name", path.stem)
    return recipe


def _overrides(st: dict) -> list[str]:
    ov = st.get("overrides") or []
    return [f"{k}={v}" for k, v in ov.items()] if isinstance(ov, dict) else [str(o) for o in ov]


def _teacher(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    from .teacher import resolve, train_teacher

    cfg = resolve(st.get("preset", "blob-s"), _overrides(st))
    bundle = run_dir / "teacher.safetensors"
    if not bundle.is_file():
        train_teacher(cfg, run_dir, device)
    return {"bundle": bundle, "run_dir": run_dir, "world": cfg.world}


STAGE_RUNNERS = {"teacher": _teacher}


def run_recipe(path: str | Path, out: str | Path | None = None, device=None) -> Path:
    """Run every stage, score every bundle against the data row, write RUN/report.md."""
    out, recipe, scored, run_dirs = run_stages(path, out, device)
    return report(out, f"Recipe {recipe['name']}", scored, run_dirs,
                  intro=f"Recipe file: `{Path(path).as_posix()}`; run folder: `{out.as_posix()}`.")


def run_stages(path: str | Path, out: str | Path | None = None, device=None):
    """Run the recipe's stages and score their bundles; returns (out, recipe, scored rows, run folders)."""

    recipe = load_recipe(path)
    out = Path(out or recipe.get("out") or f"runs/{recipe['name']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    outputs: dict[str, dict] = {}
    for st in recipe["stages"]:
        name = st.get("name", st["stage"])
        print(f"== stage {name} ({st['stage']}) -> {out / name}", flush=True)
        outputs[name] = STAGE_RUNNERS[st["stage"]](st, out / name, outputs, device)
    ev = dataclasses.replace(EvalConfig(), **(recipe.get("report") or {}))
    scored = []
    for name, o in outputs.items():
        if "bundle" in o:
            print(f"== scoring {name}", flush=True)
            scored.append(score_bundle(name, o["bundle"], ev, device=device))
    world = next(o["world"] for o in outputs.values() if "world" in o)
    scored = [score_data(world, ev)] + scored
    run_dirs = {name: o["run_dir"] for name, o in outputs.items() if "run_dir" in o}
    return out, recipe, scored, run_dirs
