"""Synthetic data: bidirectional-teacher videos in checksummed, resumable shards (DESIGN.md stage [1]).

The causal teacher (METHOD.md §3) and the few-step students (§4) train on videos sampled from the
bidirectional teacher. ``write_synthetic`` draws n of them into a folder:

    DIR/manifest.json     the settings (``config``) and, per finished shard: file, count, first id, sha256
    DIR/shard_00000.npz   videos uint8 [k, T, H, W, 3], prompts str [k], sample_ids int64 [k]; with ODE
                          snapshots also ode_states float16 [k, K, C, T, H, W] and ode_times float32 [K]

Sample i is the teacher's Euler+CFG sample (§6) from noise ε_i drawn from (seed, i) by
``generate.sample_noise``: index i of ``Generator.sample(prompts, seed)`` over the same prompts, and
``teacher_samples(..., start=i)`` regenerates it alone. The ODE snapshots are the states of that same
Euler trajectory at the grid points nearest to the requested times (``flow.euler_sample(keep=...)``),
what the ODE-init baseline (§4) regresses from; METHOD.md's trajectories use 48 Euler steps.

Sizes (uncompressed; shards are zlib-compressed: Blobworld videos shrink several-fold, ODE states hardly):
a video is T·H·W·3 bytes, 64.5 KB at 21×32×32, so 10,000 videos take 645 MB; one ODE state is C·T·H·W·2
bytes, 129 KB at 3×21×32×32, so K = 4 states of 10,000 videos take 5.2 GB, on disk and in memory when read
back with ``with_ode=True``. Writing holds one shard in memory (256 videos with 4 states: 149 MB).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..flow import cfg_velocity, euler_sample
from ..generate import Generator, autocast_for, sample_noise
from ..train.loop import progress as progress_bar
from .blobworld import from_model

FORMAT = "causal-rcm-synthetic/1"
MANIFEST = "manifest.json"
_PROMPT_ORDER_TAG = 0x5E7  # keeps the prompt-order stream apart from the noise streams drawn from the seed


class SyntheticDataWarning(UserWarning):
    """A shard of a synthetic dataset was skipped (missing, changed, unreadable or malformed)."""


def world_prompt_order(world, n: int, seed: int) -> list[str]:
    """Prompt of sample i for i < n: the world's prompts cycled, each pass in its own seeded random order,
    so every prompt appears ⌊n/P⌋ or ⌈n/P⌉ times and prompt i does not depend on n."""
    ps = world.prompts()
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
            raise ValueError(f"{where}prompt {i} {p!r} is not a {world.name} {world.variant} prompt; valid: "
                             + ", ".join(repr(x) for x in valid))


def check_ode_times(ode_times: Sequence[float]) -> list[float]:
    times = [float(t) for t in ode_times]
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise ValueError(f"ODE snapshot times must be a non-empty list of RF times in [0, 1], got {times}")
    return times


def euler_sampling(generator: Generator, steps: int | None = None, cfg: float | None = None,
                   shift: float | None = None) -> dict:
    """The teacher's Euler+CFG settings (the bundle's, with the non-None overrides applied)."""
    sp = generator.resolved_sampling(steps=steps, cfg=cfg, shift=shift)
    if sp.get("method", "euler") != "euler":
        raise ValueError(f"synthetic data comes from a bidirectional teacher (sampling method 'euler'); this "
                         f"bundle samples with {sp['method']!r}")
    return {"method": "euler", "steps": int(sp["steps"]), "cfg": float(sp["cfg"]), "shift": float(sp["shift"])}


@torch.no_grad()
def teacher_samples(generator: Generator, prompts: Sequence[str], seed: int, start: int = 0,
                    steps: int | None = None, cfg: float | None = None, shift: float | None = None,
                    ode_times: Sequence[float] | None = None, batch: int = 64, bar=None):
    """Videos uint8 [N, T, H, W, 3] of the bidirectional teacher, prompts[j] from noise (seed, start + j):
    the Euler+CFG path of ``Generator.sample`` (same operations, so bit-identical for the same batches)
    with the sample ids offset by ``start``. Returns ``(videos, ode_states, ode_times)``: with ``ode_times``
    the trajectory states float16 [N, K, C, T, H, W] at the nearest grid times float32 [K], else None, None."""
    sp = euler_sampling(generator, steps, cfg, shift)
    dev = generator.device
    videos, states, grid = [], [], None
    for s in range(0, len(prompts), batch):
        chunk = list(prompts[s:s + batch])
        # whole videos per Euler step, in integers, so the bar ends exactly at the number of videos
        tick = None if bar is None else (lambda i, k=len(chunk): bar.update(k * (i + 1) // sp["steps"]
                                                                             - k * i // sp["steps"]))
        with autocast_for(dev):
            ctx, ctx_u = generator.contexts(chunk)
            noise = sample_noise(len(chunk), generator.video_shape, seed, start=start + s, device=dev)
            out = euler_sample(lambda x, t: cfg_velocity(generator.net, x, t, ctx, ctx_u, sp["cfg"]).float(),
                               noise, sp["steps"], sp["shift"], progress=tick, keep=ode_times)
        if ode_times is None:
            x0 = out
        else:
            x0, st, grid = out
            states.append(st.to("cpu", torch.float16).numpy())
        videos.append(from_model(x0.float()))
    if ode_times is None:
        return np.concatenate(videos), None, None
    return np.concatenate(videos), np.concatenate(states), grid.numpy().astype(np.float32)


def weights_sha256(generator: Generator) -> str:
    """sha256 over the teacher's fp32 weights (net, then text encoder): identifies the teacher whatever
    file or dtype it was loaded from."""
    h = hashlib.sha256()
    for name, module in (("net", generator.net), ("text_encoder", generator.text_encoder)):
        for k, v in sorted(module.state_dict().items()):
            h.update(f"{name}.{k}".encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _grid_times(sampling: dict, ode_times: list[float]) -> list[float]:
    # the grid rule lives in euler_sample alone: ask it with a zero velocity on a 1-element state
    _, _, grid = euler_sample(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1), sampling["steps"],
                              sampling["shift"], keep=ode_times)
    return [float(t) for t in grid]


def _differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between two configs; the teacher counts by its weights, not by its path."""
    def comparable(c):
        return {**c, "teacher": {k: v for k, v in c.get("teacher", {}).items() if k != "path"}}
    a, b = comparable(old), comparable(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def load_manifest(root: str | Path) -> dict:
    """The parsed manifest.json of a synthetic dataset folder (FileNotFoundError / ValueError otherwise)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST}; not a synthetic dataset written by `causal-rcm synth`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move the folder away and rerun synth") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _open_manifest(root: Path, config: dict) -> dict:
    """The manifest to continue: a fresh one, or the folder's own when its settings equal ``config``."""
    if not (root / MANIFEST).is_file():
        return {"format": FORMAT, "config": config, "shards": [], "complete": False}
    manifest = load_manifest(root)
    diff = _differences(manifest["config"], config)
    if diff:
        raise ValueError(f"{root} holds a synthetic dataset made with other settings ({'; '.join(diff)}); "
                         "rerun with the same arguments to resume it, or write to a new folder")
    kept = []
    for s in manifest["shards"]:
        f = root / s["file"]
        # a cheap check on resume (the full sha256 check happens on read): the file is there, whole
        if f.is_file() and f.stat().st_size == s["bytes"]:
            kept.append(s)
        else:
            warnings.warn(f"{f}: listed in the manifest but missing or of the wrong size; writing it again",
                          SyntheticDataWarning, stacklevel=3)
    manifest["shards"] = kept
    return manifest


def write_synthetic(generator: Generator, out_dir: str | Path, n: int, seed: int,
                    prompts: Sequence[str] | None = None, shard_size: int = 256, batch: int = 64,
                    ode_times: Sequence[float] | None = None, progress: bool = True, steps: int | None = None,
                    cfg: float | None = None, shift: float | None = None,
                    teacher_path: str | Path | None = None) -> Path:
    """Write n teacher samples (sample i from noise (seed, i)) as shards of ``shard_size`` plus manifest.json
    into ``out_dir``; returns ``out_dir``.

    ``prompts``: None cycles the world's prompts in a seeded order (``world_prompt_order``); a list is
    cycled in its own order (a list of n gives prompt i to sample i). ``ode_times``: also store the Euler
    trajectory states nearest to these RF times. ``steps``/``cfg``/``shift`` override the bundle's sampling.
    Each shard is written to a temporary name, renamed, then recorded in the manifest, so a killed run
    reruns with the same arguments and continues after its last finished shard; other arguments into the
    same folder raise ValueError (``batch`` and ``teacher_path`` may change: they do not change the data).
    Each shard records its device: CUDA samples under bf16 autocast, so a run resumed on another kind of
    device holds shards of two precisions.
    """
    for name, v in (("n", n), ("shard_size", shard_size), ("batch", batch)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    root = Path(out_dir)
    world = generator.world
    sp = euler_sampling(generator, steps, cfg, shift)
    ode = None if ode_times is None else check_ode_times(ode_times)
    if prompts is None:
        plist, prompt_source = world_prompt_order(world, n, seed), {"source": "world"}
    else:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is an empty list; pass None to cycle through the world's prompts")
        check_prompts(world, prompts)
        plist = [prompts[i % len(prompts)] for i in range(n)]
        prompt_source = {"source": "list", "count": len(prompts),
                         "sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}
    config = {"teacher": {"path": None if teacher_path is None else str(teacher_path),
                          "weights_sha256": weights_sha256(generator)},
              "seed": int(seed), "n": int(n), "shard_size": int(shard_size), "world": asdict(world),
              "video_shape": list(generator.video_shape), "sampling": sp, "prompts": prompt_source,
              "ode_times": ode, "ode_grid_times": None if ode is None else _grid_times(sp, ode)}
    root.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(root, config)
    done = {s["file"] for s in manifest["shards"]}
    n_shards = -(-n // shard_size)
    bar = progress_bar(total=n, initial=sum(s["count"] for s in manifest["shards"]), desc="synth",
                       unit="video", disable=not progress)
    for k in range(n_shards):
        name = f"shard_{k:05d}.npz"
        if name in done:
            continue
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        videos, states, grid = teacher_samples(generator, plist[lo:hi], seed, start=lo, ode_times=ode,
                                               batch=batch, bar=bar, **{x: sp[x] for x in ("steps", "cfg", "shift")})
        arrays = {"videos": videos, "prompts": np.array(plist[lo:hi], dtype=str),
                  "sample_ids": np.arange(lo, hi, dtype=np.int64)}
        if ode is not None:
            arrays.update(ode_states=states, ode_times=grid)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        tmp = root / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, root / name)
        manifest["shards"].append({"file": name, "count": hi - lo, "first_id": lo, "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest(), "device": str(generator.device)})
        manifest["shards"].sort(key=lambda s: s["first_id"])
        manifest["complete"] = len(manifest["shards"]) == n_shards
        _write_json(root / MANIFEST, manifest)
    bar.close()
    return root


def _load_shard(root: Path, entry: dict, config: dict, with_ode: bool) -> tuple[dict | None, str | None]:
    """(arrays, None) for a shard that matches its manifest entry and the dataset's shapes, else (None, why)."""
    path = root / entry["file"]
    if not path.is_file():
        return None, "missing"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        return None, (f"sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}… "
                      "(the file was changed or truncated)")
    keys = ["videos", "prompts", "sample_ids"] + (["ode_states", "ode_times"] if with_ode else [])
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                return None, f"lacks arrays {missing}"
            arrays = {k: z[k] for k in keys}
    except Exception as e:  # noqa: BLE001 - any failure to decode the file means: do not use this shard
        return None, f"cannot be read as .npz ({type(e).__name__}: {e})"
    k, (c, t, h, w) = entry["count"], config["video_shape"]
    want = {"videos": (np.uint8, (k, t, h, w, 3)), "sample_ids": (np.int64, (k,))}
    if with_ode:
        kk = len(config["ode_times"])
        want.update(ode_states=(np.float16, (k, kk, c, t, h, w)), ode_times=(np.float32, (kk,)))
    for name, (dtype, shape) in want.items():
        a = arrays[name]
        if a.dtype != dtype or a.shape != shape:
            return None, f"{name} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}"
    if arrays["prompts"].dtype.kind != "U" or arrays["prompts"].shape != (k,):
        return None, f"prompts is {arrays['prompts'].dtype} {arrays['prompts'].shape}, expected str ({k},)"
    if not np.array_equal(arrays["sample_ids"], np.arange(entry["first_id"], entry["first_id"] + k)):
        return None, f"sample_ids are not {entry['first_id']}..{entry['first_id'] + k - 1}"
    if with_ode and not np.allclose(arrays["ode_times"], config["ode_grid_times"]):
        return None, f"ode_times {arrays['ode_times'].tolist()} differ from the manifest's {config['ode_grid_times']}"
    return arrays, None


def read_synthetic(path: str | Path, with_ode: bool = False) -> dict:
    """A synthetic dataset, concatenated over its valid shards in sample order: ``videos`` uint8
    [N, T, H, W, 3], ``prompts`` list[str], ``sample_ids`` int64 [N], ``config`` (the manifest's) and, with
    ``with_ode``, ``ode_states`` float16 [N, K, C, T, H, W] and ``ode_times`` float32 [K].

    A shard that is missing, whose sha256 differs from the manifest, that cannot be decoded or whose arrays
    have the wrong shapes or dtypes is reported (a SyntheticDataWarning naming the file and why) and
    skipped; a folder without a manifest or without any valid shard raises.
    """
    root = Path(path)
    manifest = load_manifest(root)
    config, shards = manifest["config"], manifest["shards"]
    if with_ode and not config["ode_times"]:
        raise ValueError(f"{root} was written without ODE snapshots; rerun synth with --ode-times into a new folder")
    c, t, h, w = config["video_shape"]
    total = sum(s["count"] for s in shards)
    # filled in place, shard by shard: peak memory is the dataset plus one shard, not twice the dataset
    videos = np.empty((total, t, h, w, 3), np.uint8)
    ids = np.empty(total, np.int64)
    ode = np.empty((total, len(config["ode_times"]), c, t, h, w), np.float16) if with_ode else None
    prompts: list[str] = []
    filled = 0
    for entry in shards:
        arrays, why = _load_shard(root, entry, config, with_ode)
        if why is not None:
            warnings.warn(f"{root / entry['file']}: {why}; shard skipped", SyntheticDataWarning, stacklevel=2)
            continue
        k = entry["count"]
        videos[filled:filled + k], ids[filled:filled + k] = arrays["videos"], arrays["sample_ids"]
        prompts.extend(str(p) for p in arrays["prompts"])
        if with_ode:
            ode[filled:filled + k] = arrays["ode_states"]
        filled += k
    if filled == 0:
        raise ValueError(f"{root}: no valid shard ({len(shards)} listed in {MANIFEST}); rerun synth to write it")
    if total < config["n"]:
        warnings.warn(f"{root} holds {total} of {config['n']} videos; rerun synth with the same arguments to "
                      "finish it", SyntheticDataWarning, stacklevel=2)
    out = {"videos": videos[:filled], "prompts": prompts, "sample_ids": ids[:filled], "config": config}
    if with_ode:
        out.update(ode_states=ode[:filled], ode_times=np.asarray(config["ode_grid_times"], np.float32))
    return out
