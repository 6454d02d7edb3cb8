"""Recipes: a YAML file listing stages, run in order into one run folder, then a report.

    name: blob-tiny
    out: runs/blob-tiny
    stages:
      - {stage: teacher, preset: blob-tiny, overrides: [train.steps=300]}
      - {stage: synth, preset: blob-tiny, inputs: {teacher: teacher}}
      - {stage: tf, preset: blob-tiny, inputs: {data: synth, init: teacher}}
      - {stage: tf_scm, preset: blob-tiny, inputs: {data: synth, init: tf, teacher: tf}}
    report: {prompts: 4, per_prompt: 4}

Each stage writes RUN/<name>/ (name defaults to the stage) and hands its outputs (bundle path, data or run
folder) to later stages: ``inputs`` maps a config key to an earlier stage's name. A stage whose output
already exists is skipped, so a killed recipe resumes where it was (and stages resume from checkpoints).
Built-in recipes ship with the package (``causal_rcm/recipes/*.yaml``): ``causal-rcm run blob-tiny`` finds
them by name, a path to a YAML file works too. An override may name an environment variable as ``${NAME}``
(the Wan2.1 recipe takes its weights' folder so); a recipe whose variables are unset is refused at once.

Under ``torchrun`` every process runs every training stage together (each splits its batch over them) and
draws a share of the synthetic data; the scores and the report are made by rank 0 alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import yaml

from ..train import distributed as D
from .common import EvalConfig
from .report import report, score_bundle, score_data

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

RECIPE_KEYS = {"name", "out", "stages", "report"}
STAGE_KEYS = {"stage", "name", "preset", "overrides", "inputs"}


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a built-in recipe (``blob-tiny``, ``blob-s``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if (RECIPES / f"{name_or_path}.yaml").is_file():
        return RECIPES / f"{name_or_path}.yaml"
    raise FileNotFoundError(f"no recipe at {path}; built-in recipes: {', '.join(builtin_recipes())}")


def load_recipe(path: str | Path) -> dict:
    path = recipe_path(path)
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
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
        for key, ref in (st.get("inputs") or {}).items():
            if ref not in names:
                raise ValueError(f"{path}: stage {name!r} takes {key} from {ref!r}, which does not run before it")
        names.add(name)
    recipe.setdefault("name", path.stem)
    unset = [n for n in recipe_variables(recipe) if not os.environ.get(n)]
    if unset:
        raise ValueError(f"{path}: the recipe takes paths from the environment; set {', '.join(unset)} (see the "
                         "comment at the top of the recipe)")
    return recipe


_VAR = re.compile(r"\$\{(\w+)\}")


def recipe_variables(recipe: dict) -> list[str]:
    """The environment variables the recipe's overrides name as ``${NAME}`` (user paths: Wan2.1's weights)."""
    names = []
    for st in recipe["stages"]:
        ov = st.get("overrides") or []
        for o in (ov.values() if isinstance(ov, dict) else ov):
            names += [n for n in _VAR.findall(str(o)) if n not in names]
    return names


def _expand(text: str) -> str:
    return _VAR.sub(lambda m: os.environ[m.group(1)], text)


def _overrides(st: dict, outputs: dict | None = None) -> list[str]:
    """The stage's overrides (``${NAME}`` replaced by the environment variable) plus ``key=<path>`` for each
    input taken from an earlier stage's output."""
    ov = st.get("overrides") or []
    out = [f"{k}={v}" for k, v in ov.items()] if isinstance(ov, dict) else [str(o) for o in ov]
    out = [_expand(o) for o in out]
    for key, ref in (st.get("inputs") or {}).items():
        produced = outputs[ref]
        out.append(f"{key}={produced['data'] if key == 'data' else produced['bundle']}")
    return out


def _teacher(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    from .teacher import resolve, train_teacher

    cfg = resolve(st.get("preset", "blob-s"), _overrides(st, outputs))
    bundle = run_dir / "teacher.safetensors"
    if not bundle.is_file():
        train_teacher(cfg, run_dir, device)
    return {"bundle": bundle, "run_dir": run_dir, "world": cfg.world}


def _synth(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    from ..config import apply_overrides
    from .synth import run_synth, synth_preset

    cfg = apply_overrides(synth_preset(st.get("preset", "blob-s")), _overrides(st, outputs))
    return {"data": run_synth(cfg, run_dir, device)}  # every process draws a share of each shard


def _student(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    """The causal teacher, the TF students and SF-DMD: each writes RUN/<name>/model.safetensors."""
    bundle = run_dir / "model.safetensors"
    if not bundle.is_file():
        if st["stage"] == "sf_dmd":
            from .sf_dmd import resolve, train_sf_dmd

            train_sf_dmd(resolve(st.get("preset", "blob-s"), _overrides(st, outputs)), run_dir, device)
        else:
            from .tf import resolve, train_tf

            train_tf(resolve(st.get("preset", "blob-s"), st["stage"], _overrides(st, outputs)), run_dir, device)
    world = next(o["world"] for o in outputs.values() if "world" in o)
    return {"bundle": bundle, "run_dir": run_dir, "world": world}


def _wan_teacher(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    from .wan import resolve, run_wan_teacher

    cfg = resolve(st.get("preset", "wan2.1-1.3b"), _overrides(st, outputs))
    return {"bundle": run_wan_teacher(cfg, run_dir), "run_dir": run_dir, "world": None}


def _world(st: dict, run_dir: Path, outputs: dict, device) -> dict:
    from .world_data import run_world_data

    return run_world_data(st, _overrides(st, outputs), run_dir)


STUDENT_STAGES = ("tf", "df", "tf_dcm", "tf_scm", "tf_meanflow", "ode_init", "sf_dmd")
STAGE_RUNNERS = {"world": _world, "teacher": _teacher, "wan_teacher": _wan_teacher, "synth": _synth,
                 **{m: _student for m in STUDENT_STAGES}}


def run_recipe(path: str | Path, out: str | Path | None = None, device=None) -> Path:
    """Run every stage, score every bundle against the data row, write RUN/report.md."""
    out, recipe, scored, run_dirs, world = run_stages(path, out, device)
    return D.on_main(lambda: report(out, f"Recipe {recipe['name']}", scored, run_dirs, world,
                                    intro=f"Recipe file: `{Path(path).as_posix()}`; run folder: `{out.as_posix()}`."))


def run_stages(path: str | Path, out: str | Path | None = None, device=None):
    """Run the recipe's stages and score their bundles; returns (out, recipe, scored rows, run folders, world)."""
    recipe = load_recipe(path)
    out = Path(out or recipe.get("out") or f"runs/{recipe['name']}")
    out.mkdir(parents=True, exist_ok=True)
    if D.is_main():
        (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    outputs: dict[str, dict] = {}
    for st in recipe["stages"]:
        name = st.get("name", st["stage"])
        if D.is_main():
            print(f"== stage {name} ({st['stage']}) -> {out / name}", flush=True)
        outputs[name] = STAGE_RUNNERS[st["stage"]](st, out / name, outputs, device)
    try:
        ev = dataclasses.replace(EvalConfig(), **(recipe.get("report") or {}))
    except TypeError as e:
        raise ValueError(f"recipe 'report' settings: {e}; valid: prompts, per_prompt, seed, batch") from None
    world = next(o["world"] for o in outputs.values() if "world" in o)

    def score() -> list:
        if world is None:  # a free-text recipe (Wan2.1): no world to score against
            return []
        rows = [score_data(world, ev)]
        for name, o in outputs.items():
            if "bundle" in o:
                print(f"== scoring {name}", flush=True)
                rows.append(score_bundle(name, o["bundle"], ev, device=device))
        return rows

    scored = D.on_main(score)
    run_dirs = {name: o["run_dir"] for name, o in outputs.items() if "run_dir" in o}
    return out, recipe, scored, run_dirs, world
