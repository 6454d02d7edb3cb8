"""Stage 1: the synthetic dataset, videos sampled from the bidirectional teacher (DESIGN.md, METHOD.md §3–4).

    causal-rcm synth --teacher BUNDLE --n N --seed S --out DIR [--steps K] [--cfg W] [--shift S]
                     [--shard-size 256] [--batch 64] [--prompts FILE] [--ode-times 0.9994,0.9375,0.8333,0.625]

Sample i is the teacher's Euler+CFG sample (§6) from noise ε_i drawn from (seed, i): index i of
``sample_videos(bundle, prompts, seed)`` over the same prompts, whatever the batch. A world model's sample i
follows the world's own action sequence i (its behaviour policy, seed s). The ODE snapshots are the states
of that same Euler trajectory at the grid points nearest to the requested times (``flow.euler_sample``),
what the ODE-init baseline (§4) regresses from; METHOD.md's trajectories use 48 Euler steps.
Writes DIR/config.json (the resolved settings), DIR/manifest.json and DIR/shard_*.npz (``data/synthetic.py``).
A killed run continues when rerun with the same arguments.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.synthetic import MANIFEST, check_ode_times, write_synthetic
from ..flow import euler_sample
from ..io import progress as progress_bar, write_json
from ..runtime import autocast_for, resolve_device
from ..seeding import derive
from ..stream.bundle import Bundle, stored_modules, text_encoder_config
from ..stream.codec import PixelCodec, to_uint8, to_unit
from ..stream.sample import euler_batch, video_actions
from ..stream.sampling import Euler, to_dict, with_overrides
from ..train import distributed as D
from ..worlds.registry import make_world

_PROMPT_ORDER_TAG = 0x5E7  # keeps the prompt-order stream apart from the noise streams drawn from the seed
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
    data: str = ""  # world models: a world sample file whose actions (and, for worlds that start from real
                    # frames, first frames) the teacher follows; sample i uses its video i mod N


def synth_preset(name: str) -> SynthConfig:
    """Recipe presets (the teacher comes from the recipe's inputs)."""
    if name == "blob-s":
        return SynthConfig(teacher="", n=4096, batch=256)
    if name == "blob-tiny":
        return SynthConfig(teacher="", n=256, shard_size=128, batch=64)
    if name == "atari":
        return SynthConfig(teacher="", n=2048, batch=128)
    if name == "atari-tiny":
        return SynthConfig(teacher="", n=4, shard_size=4, batch=4)
    if name in ("wan2.1-1.3b", "wan2.1-14b"):  # Wan's own sampling (50 steps, CFG 5); prompts_file= is required
        return SynthConfig(teacher="", n=4096, shard_size=64, batch=4)
    if name in ("wan2.1-1.3b-ode", "wan2.1-14b-ode"):  # the ODE-init baseline's trajectories: 4 states of 4.2 MB
        return SynthConfig(teacher="", n=512, shard_size=16, batch=4, steps=48, ode_times=ODE_INIT_TIMES)
    if name == "wan-tiny":
        return SynthConfig(teacher="", n=8, shard_size=4, batch=2)
    if name == "wan-tiny-ode":
        return SynthConfig(teacher="", n=8, shard_size=4, batch=2, steps=48, ode_times=ODE_INIT_TIMES)
    raise ValueError(f"unknown synth preset {name!r}; choose blob-s, blob-tiny, atari, atari-tiny, wan2.1-1.3b(-ode), "
                     "wan2.1-14b(-ode) or wan-tiny(-ode)")


def world_prompt_order(world, n: int, seed: int) -> list[str]:
    """Prompt of sample i for i < n: the world's prompts cycled, each pass in its own seeded random order,
    so every prompt appears ⌊n/P⌋ or ⌈n/P⌉ times and prompt i does not depend on n."""
    ps = world.prompts() or ("",)
    out: list[str] = []
    for epoch in range(-(-n // len(ps))):
        perm = np.random.default_rng([seed, _PROMPT_ORDER_TAG, epoch]).permutation(len(ps))
        out.extend(ps[j] for j in perm)
    return out[:n]


def check_prompts(world, prompts: Sequence[str], where: str = "") -> None:
    """Raise ValueError naming the first prompt that is not one of the world's prompts."""
    valid = world.prompts()
    for i, p in enumerate(prompts):
        if p not in valid:
            raise ValueError(f"{where}prompt {i} {p!r} is not a {world.config.name} {world.config.variant} prompt; "
                             "valid: " + ", ".join(repr(x) for x in valid))


def read_prompts_file(path: str | Path, world=None) -> list[str]:
    """One prompt per line (blank lines skipped), each one of the world's prompts (a free-text model's
    prompts are free)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompts file at {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompt (one prompt per line)")
    if world is not None:
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


def teacher_sampling(bundle: Bundle, steps=None, cfg=None, shift=None) -> Euler:
    """The teacher's Euler+CFG settings (the bundle's, with the non-None overrides applied)."""
    if not isinstance(bundle.sampling, Euler):
        raise ValueError(f"synthetic data comes from a bidirectional teacher (sampling 'euler'); this bundle "
                         f"samples with {bundle.sampling.method!r}")
    return with_overrides(bundle.sampling, steps=steps, cfg=cfg, shift=shift)


def weights_sha256(bundle: Bundle) -> str:
    """sha256 over the teacher's fp32 weights (net, then a stored text encoder; a referenced one, umT5,
    by its config): identifies the teacher whatever file or dtype it was loaded from."""
    h = hashlib.sha256()
    for name, module in stored_modules(bundle.net, bundle.text_encoder).items():
        for k, v in sorted(module.state_dict().items()):
            h.update(f"{name}.{k}".encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if not getattr(bundle.text_encoder, "stored", True):
        h.update(json.dumps(text_encoder_config(bundle.text_encoder), sort_keys=True).encode())
    return h.hexdigest()


def grid_times(sp: Euler, ode_times: list[float]) -> list[float]:
    # the grid rule lives in euler_sample alone: ask it with a zero velocity on a 1-element state
    _, _, grid = euler_sample(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1), sp.steps, sp.shift, keep=ode_times)
    return [float(t) for t in grid]


def stores_latents(bundle: Bundle) -> bool:
    """Whether a teacher's synthetic data hold latents (a latent codec: what its students train on, saved
    from a decode and a lossy re-encode) rather than uint8 pixel videos."""
    return not isinstance(bundle.codec, PixelCodec)


@torch.no_grad()
def teacher_samples(bundle: Bundle, prompts: Sequence[str], seed: int, start: int, sp: Euler,
                    actions: np.ndarray | None = None, ode_times: Sequence[float] | None = None, batch: int = 64,
                    bar=None, first_frames: np.ndarray | None = None):
    """Videos uint8 [N, T, H, W, 3] of the bidirectional teacher (latents float16 [N, C, T, H, W] for a
    latent codec, ``stores_latents``), prompts[j] from noise (seed, start + j) (and actions[j] for a world
    model, from ``first_frames[j]`` uint8 [P, H, W, 3] when given); with ``ode_times`` also the trajectory
    states float16 [N, K, C, T, H, W] at the nearest grid times float32 [K] (else None, None)."""
    dev = bundle.device
    T = bundle.latent_shape[1]
    videos, states, grid = [], [], None
    for s in range(0, len(prompts), batch):
        chunk = list(prompts[s:s + batch])
        a = None if actions is None else video_actions(bundle, actions[s:s + batch], T, dev)
        prefix = None if first_frames is None else bundle.codec.encode(to_unit(first_frames[s:s + batch]).to(dev))
        with autocast_for(dev):
            out = euler_batch(bundle, chunk, seed, start + s, sp, a, bar, keep=ode_times, prefix=prefix)
        if ode_times is None:
            x0 = out
        else:
            x0, st, grid = out
            states.append(st.to("cpu", torch.float16).numpy())
        if stores_latents(bundle):
            videos.append(x0.to("cpu", torch.float16).numpy())
        else:
            videos.append(to_uint8(bundle.codec.decode(x0.float(), bundle.codec.init_state(len(chunk)))[0]))
    if ode_times is None:
        return np.concatenate(videos), None, None
    return np.concatenate(videos), np.concatenate(states), grid.numpy().astype(np.float32)


def run_synth(cfg: SynthConfig, out_dir: str | Path, device: str | None = None, progress: bool = True) -> Path:
    """Load the teacher, write DIR/config.json (the settings with the bundle's sampling resolved) and the
    dataset (``write_synthetic``); returns ``out_dir``.

    Under torchrun every process calls it: each shard's samples are split over the processes (sample i is
    the same whichever process draws it), rank 0 gathers and writes them (``_RankShards``)."""
    out = Path(out_dir)
    if not Path(cfg.teacher).is_file():
        raise FileNotFoundError(f"no teacher bundle at {cfg.teacher}")
    for name in ("n", "shard_size", "batch"):
        if int(getattr(cfg, name)) != getattr(cfg, name) or getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {getattr(cfg, name)!r}")
    if int(cfg.seed) != cfg.seed or cfg.seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {cfg.seed!r}")
    ode = None if cfg.ode_times is None else check_ode_times(cfg.ode_times)
    dev = D.init_from_env(resolve_device(device))
    bundle = Bundle.load(cfg.teacher, device=dev)
    world = None if bundle.world is None else make_world(bundle.world)
    sp = teacher_sampling(bundle, cfg.steps, cfg.cfg, cfg.shift)
    if cfg.prompts_file is None:
        if world is None:
            raise ValueError("a free-text teacher (no built-in world) samples the prompts of a file: give "
                             "prompts_file= (one prompt per line)")
        plist, prompt_source = world_prompt_order(world, cfg.n, cfg.seed), {"source": "world"}
    else:
        prompts = read_prompts_file(cfg.prompts_file, world)
        plist = [prompts[i % len(prompts)] for i in range(cfg.n)]
        prompt_source = {"source": "list", "count": len(prompts),
                         "sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}
    if world is None and cfg.data:
        raise ValueError("data= gives a world model's actions and first frames; this teacher is a free-text model")
    with_actions = world is not None and bool(world.action_names)
    source = None if world is None else _source(cfg, bundle, world)
    space = "latent" if stores_latents(bundle) else "pixel"
    # a latent dataset also records its space and pixel size (pixel data: the world gives it, and the
    # manifests of datasets written before latents existed stay resumable)
    latent = {"video": asdict(bundle.video_size), "space": space} if space == "latent" else {}
    config = {"teacher": {"path": str(cfg.teacher), "weights_sha256": weights_sha256(bundle)},
              "seed": int(cfg.seed), "world": None if world is None else asdict(bundle.world), **latent,
              "video_shape": list(bundle.latent_shape),
              "sampling": to_dict(sp), "prompts": prompt_source, "actions": with_actions,
              "ode_times": ode, "ode_grid_times": None if ode is None else grid_times(sp, ode),
              "data": None if source is None else source["sha256"],
              "context_frames": 0 if source is None or source["first"] is None else source["first"].shape[1]}

    def make_shard(lo: int, hi: int) -> dict:
        # a world model's videos follow the world's own (behaviour-policy) action sequences lo … hi − 1
        rows = None if source is None else np.arange(lo, hi) % len(source["actions"])
        if source is not None:
            acts = source["actions"][rows]
        else:
            acts = world.behaviour_actions([derive(cfg.seed, i) for i in range(lo, hi)]) if with_actions else None
        first = None if source is None or source["first"] is None else source["first"][rows]
        bar = progress_bar(total=hi - lo, desc=f"videos {lo}..{hi - 1}", unit="video", leave=False,
                           disable=not progress or not D.is_main())
        videos, states, _ = teacher_samples(bundle, plist[lo:hi], cfg.seed, lo, sp, acts, ode, cfg.batch, bar,
                                            first)
        bar.close()
        arrays = {"latents" if space == "latent" else "videos": videos, "prompts": np.array(plist[lo:hi], dtype=str)}
        if acts is not None:
            arrays["actions"] = acts
        if ode is not None:
            arrays["ode_states"] = states
        return arrays

    resolved = {"stage": "synth", **asdict(cfg), "sampling": to_dict(sp), "world": config["world"],
                "video": asdict(bundle.video_size), "world_size": D.world_size()}
    shards = _RankShards(make_shard)
    if not D.is_main():
        shards.follow()
        return out
    try:
        # config.json never overwrites the record of another dataset: before sampling it is written into a new
        # folder only; write_synthetic refuses other settings, so once it returns the settings are this one's
        if not (out / MANIFEST).is_file():
            write_json(out / "config.json", resolved)
        write_synthetic(out, cfg.n, cfg.shard_size, config, shards.lead, progress, str(bundle.device))
        write_json(out / "config.json", resolved)
    except BaseException as e:
        shards.finish(f"{type(e).__name__}: {e}")
        raise
    shards.finish()
    return out


class _RankShards:
    """Shards made by every process together: rank 0 (inside ``write_synthetic``) announces each range,
    every rank draws a contiguous share of it, rank 0 gathers the pieces in sample order; at the end rank 0
    says whether it succeeded, and the others return or raise with it. In one process: ``make_shard``."""

    def __init__(self, make_shard):
        self.make_shard = make_shard

    def _piece(self, lo: int, hi: int) -> dict | None:
        r, n = D.rank(), D.world_size()
        a, b = lo + (hi - lo) * r // n, lo + (hi - lo) * (r + 1) // n
        return self.make_shard(a, b) if b > a else None

    def lead(self, lo: int, hi: int) -> dict:
        if D.world_size() == 1:
            return self.make_shard(lo, hi)
        D.broadcast_object(("shard", lo, hi))
        pieces = [p for p in D.gather_objects(self._piece(lo, hi)) if p is not None]
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    def follow(self) -> None:
        while True:
            job = D.broadcast_object(None)
            if job[0] == "shard":
                D.gather_objects(self._piece(*job[1:]))
            elif job[0] == "failed":
                raise RuntimeError(f"synth failed on rank 0 ({job[1]})")
            else:
                return

    def finish(self, error: str | None = None) -> None:
        if D.world_size() > 1:
            D.broadcast_object(("done",) if error is None else ("failed", error))


def _source(cfg: SynthConfig, bundle: Bundle, world) -> dict | None:
    """The world sample file a world model's synthetic videos follow: its actions, and for a world whose
    models start from real frames its first ``context_frames`` frames (the teacher's ``prefix_frames``)."""
    if not cfg.data:
        if world.starts_from_frames:
            raise ValueError(f"a {world.config.name} world model starts from real frames: give data= (a file from "
                             "`causal-rcm world sample`) whose first frames and actions the teacher follows")
        return None
    from ..worlds.samples import load_world_samples

    s = load_world_samples(cfg.data, world.config)
    if "actions" not in s:
        raise ValueError(f"{cfg.data} holds no actions; the synthetic data of a world model follow its actions")
    P = bundle.first_block_frames if world.starts_from_frames else 0
    return {"actions": s["actions"], "first": s["videos"][:, :P] if P else None,
            "sha256": hashlib.sha256(s["videos"].tobytes() + s["actions"].tobytes()).hexdigest()}


def synth_summary(out: Path, seconds: float) -> str:
    manifest = json.loads((out / MANIFEST).read_text())
    size = sum(s["bytes"] for s in manifest["shards"]) / 2**20
    c = manifest["config"]
    sp = c["sampling"]
    how = (f"Euler {sp['steps']} steps, cfg {sp['cfg']}, shift {sp['shift']}" if sp else
           "real clips encoded")
    return (f"{'synthetic' if sp else 'training'} dataset: {out} — {c['n']} videos in {len(manifest['shards'])} "
            f"shards ({size:.1f} MiB), {how}"
            + (f", ODE states at t = {c['ode_grid_times']}" if c["ode_times"] else "")
            + f"; {seconds:.1f} s this run")
