"""Stage 1: the synthetic dataset, videos sampled from the bidirectional teacher (DESIGN.md, METHOD.md §3–4).

    causal-rcm synth --teacher BUNDLE --n N --seed S --out DIR [--steps K] [--cfg W] [--shift S]
                     [--shard-size 256] [--batch 64] [--prompts FILE] [--ode-times 0.9994,0.9375,0.8333,0.625]

Writes DIR/config.json (the resolved settings), DIR/manifest.json and DIR/shard_*.npz
(``data/synthetic.py``). A killed run continues when rerun with the same arguments.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.synthetic import MANIFEST, check_ode_times, check_prompts, euler_sampling, write_synthetic
from ..generate import Generator

ODE_INIT_TIMES = (0.9994, 0.9375, 0.8333, 0.625)  # the student's sampling times t0, 15/16, 5/6, 5/8 (§6)


@dataclass(frozen=True)
class SynthConfig:
    teacher: str  # a bidirectional teacher bundle (.safetensors)
    n: int = 10_000
    seed: int = 0
    shard_size: int = 256
    batch: int = 64
    steps: int | None = None  # None: the bundle's; the ODE-init baseline wants 48 (METHOD.md §4)
    cfg: float | None = None
    shift: float | None = None
    ode_times: tuple[float, ...] | None = None
    prompts_file: str | None = None


def synth_preset(name: str) -> SynthConfig:
    """Recipe presets (the teacher comes from the recipe's inputs)."""
    if name == "blob-s":
        return SynthConfig(teacher="", n=4096, batch=256)
    if name == "blob-tiny":
        return SynthConfig(teacher="", n=256, shard_size=128, batch=64)
    raise ValueError(f"unknown synth preset {name!r}; choose blob-s or blob-tiny")


def read_prompts_file(path: str | Path, world) -> list[str]:
    """One prompt per line (blank lines skipped), each one of the world's prompts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompts file at {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompt (one prompt per line)")
    check_prompts(world, prompts, where=f"{path}: ")
    return prompts


def parse_times(text: str) -> tuple[float, ...]:
    """'0.9994,0.9375' -> (0.9994, 0.9375), each an RF time in [0, 1]."""
    try:
        times = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--ode-times {text!r}: give comma-separated RF times in [0, 1], e.g. "
                         + ",".join(map(str, ODE_INIT_TIMES))) from None
    return tuple(check_ode_times(times))


def run_synth(cfg: SynthConfig, out_dir: str | Path, device: str | None = None) -> Path:
    """Load the teacher, write DIR/config.json (the settings with the bundle's sampling resolved) and the
    dataset (``write_synthetic``); returns ``out_dir``."""
    out = Path(out_dir)
    if not Path(cfg.teacher).is_file():
        raise FileNotFoundError(f"no teacher bundle at {cfg.teacher}")
    for name in ("n", "shard_size", "batch"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.ode_times is not None:
        check_ode_times(cfg.ode_times)
    gen = Generator.load(cfg.teacher, device=device)
    prompts = None if cfg.prompts_file is None else read_prompts_file(cfg.prompts_file, gen.world)
    sampling = euler_sampling(gen, cfg.steps, cfg.cfg, cfg.shift)
    resolved = {"stage": "synth", **asdict(cfg), "sampling": sampling, "world": asdict(gen.world)}
    # config.json never overwrites the record of another dataset: before sampling it is written into a new
    # folder only; write_synthetic refuses other settings, so once it returns the settings are this one's
    config_path = out / "config.json"
    if not (out / MANIFEST).is_file():
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(resolved, indent=2) + "\n")
    write_synthetic(gen, out, cfg.n, cfg.seed, prompts=prompts, shard_size=cfg.shard_size, batch=cfg.batch,
                    ode_times=cfg.ode_times, steps=cfg.steps, cfg=cfg.cfg, shift=cfg.shift, teacher_path=cfg.teacher)
    config_path.write_text(json.dumps(resolved, indent=2) + "\n")
    return out


def _synth(a) -> None:
    cfg = SynthConfig(teacher=a.teacher, n=a.n, seed=a.seed, shard_size=a.shard_size, batch=a.batch,
                      steps=a.steps, cfg=a.cfg, shift=a.shift, prompts_file=a.prompts,
                      ode_times=None if a.ode_times is None else parse_times(a.ode_times))
    t0 = time.time()
    out = run_synth(cfg, a.out, device=a.device)
    manifest = json.loads((out / MANIFEST).read_text())
    size = sum(s["bytes"] for s in manifest["shards"]) / 2**20
    sp = manifest["config"]["sampling"]
    print(f"synthetic dataset: {out} — {cfg.n} videos in {len(manifest['shards'])} shards ({size:.1f} MiB), "
          f"Euler {sp['steps']} steps, cfg {sp['cfg']}, shift {sp['shift']}"
          + (f", ODE states at t = {manifest['config']['ode_grid_times']}" if cfg.ode_times else "")
          + f"; {time.time() - t0:.1f} s this run")


def add_synth_parser(subparsers) -> None:
    """Register ``causal-rcm synth`` on the CLI's sub-command parsers."""
    s = subparsers.add_parser("synth", help="sample a synthetic dataset from a bidirectional teacher")
    s.add_argument("--teacher", required=True, help="teacher bundle (.safetensors)")
    s.add_argument("--n", type=int, required=True, help="number of videos")
    s.add_argument("--seed", type=int, required=True, help="sample i is drawn from noise (seed, i)")
    s.add_argument("--out", required=True, help="dataset folder (rerun with the same arguments to resume)")
    s.add_argument("--steps", type=int, default=None, help="Euler steps (default: the bundle's; ODE init: 48)")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the bundle's)")
    s.add_argument("--shift", type=float, default=None, help="time shift of the Euler grid (default: the bundle's)")
    s.add_argument("--shard-size", type=int, default=256, help="videos per shard file")
    s.add_argument("--batch", type=int, default=64, help="videos per sampling batch")
    s.add_argument("--prompts", default=None,
                   help="file with one prompt per line, cycled (default: the world's prompts in a seeded order)")
    s.add_argument("--ode-times", default=None,
                   help="also store the teacher's ODE states nearest to these comma-separated RF times, e.g. "
                        + ",".join(map(str, ODE_INIT_TIMES)))
    s.add_argument("--device", default=None)
    s.set_defaults(fn=_synth)
