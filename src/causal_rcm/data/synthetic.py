"""Synthetic data on disk: teacher videos in checksummed, resumable shards (DESIGN.md stage [1]).

The causal teacher (METHOD.md §3) and the few-step students (§4) train on videos sampled from the
bidirectional teacher (``stages/synth.py`` draws them). A dataset is a shard folder (``data/shards.py``):

    DIR/manifest.json     the settings (``config``: teacher, seed, world, video_shape, sampling, prompts, ODE
                          times) and, per finished shard: file, count, first id, sha256, device
    DIR/shard_00000.npz   videos uint8 [k, T, H, W, 3] (a teacher with a latent codec, Wan2.1: latents
                          float16 [k, C, T, H, W] instead, config ``space: latent``), prompts str [k],
                          sample_ids int64 [k]; world models also actions int64 [k, T − 1]; with ODE snapshots
                          also ode_states float16 [k, K, C, T, H, W] (grid times: the config's ``ode_grid_times``)

This module knows the format only: the sampler is a function ``make_shard(lo, hi) -> arrays`` passed in.
Sizes (uncompressed; shards are zlib-compressed: Blobworld videos shrink several-fold, ODE states hardly):
a video is T·H·W·3 bytes, 64.5 KB at 21×32×32, so 10,000 videos take 645 MB; one ODE state is C·T·H·W·2
bytes, 129 KB at 3×21×32×32, so K = 4 states of 10,000 videos take 5.2 GB on disk; training maps them from
one file (``array_file``) shared by every process. Writing holds one shard in memory (256 videos with 4
states: 149 MB).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import write_json
from .shards import (ShardWarning, check_filled, iter_shards, load_manifest as _load_manifest, read_shards,
                     write_shards)

FORMAT = "causal-rcm-synthetic/2"
MANIFEST = "manifest.json"
SyntheticDataWarning = ShardWarning  # a shard was skipped (missing, changed, unreadable or malformed)


def check_ode_times(ode_times: Sequence[float]) -> list[float]:
    times = [float(t) for t in ode_times]
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise ValueError(f"ODE snapshot times must be a non-empty list of RF times in [0, 1], got {times}")
    return times


def load_manifest(root: str | Path) -> dict:
    """The parsed manifest.json of a synthetic dataset folder (FileNotFoundError / ValueError otherwise)."""
    if not (Path(root) / MANIFEST).is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST}; not a synthetic dataset written by `causal-rcm synth`")
    return _load_manifest(root, FORMAT)


def write_synthetic(out_dir: str | Path, n: int, shard_size: int, config: dict,
                    make_shard: Callable[[int, int], dict[str, np.ndarray]], progress: bool = True,
                    device: str = "") -> Path:
    """Write samples 0 … n − 1 as shards of ``shard_size`` into ``out_dir`` (``data/shards.write_shards``).

    ``make_shard(lo, hi)`` returns the arrays of samples [lo, hi) (``videos``, ``prompts``, optional
    ``actions`` and ``ode_states``). ``config`` describes how they are made: a folder holding a dataset of
    other settings is refused (the teacher's path may change: its weights' sha256 identifies it). Each shard
    records ``device`` (CUDA samples under bf16 autocast: a run resumed on another kind of device holds
    shards of two precisions)."""
    return write_shards(out_dir, n, shard_size, config, make_shard, progress=progress, fmt=FORMAT,
                        ignore=("teacher.path",), shard_info={"device": device}, desc="synth")


MAPPABLE = ("latents", "ode_states")  # the arrays large enough to map from one file instead of each process's copy


def mapped_keys(config: dict, with_ode: bool) -> list[str]:
    """The arrays ``read_synthetic(..., with_ode, mmap=True)`` maps from ``array_file`` for a dataset of this
    manifest ``config``: a latent dataset's latents and, with ``with_ode``, the ODE states (pixel videos are
    read from the shards)."""
    return (["latents"] if config.get("space") == "latent" else []) + (["ode_states"] if with_ode else [])


def array_file(path: str | Path, key: str = "latents") -> Path:
    """DIR/KEY.npy: the ``latents`` (a latent dataset's) or ``ode_states`` of every valid shard in sample order
    as one uncompressed array, so that every process of a run maps one copy (``read_synthetic(...,
    mmap=True)``) instead of holding its own (4.2 MB a Wan2.1 480p video: 17 GB for 4,096 per process; 4 ODE
    states of 512 videos: 8.7 GB). Made once, shard by shard (one shard in memory), written under a temporary
    name; remade when the shards change (its stamp, DIR/KEY.json, records their checksums, sizes and times on
    disk, and the valid count)."""
    root = Path(path)
    manifest = load_manifest(root)
    if key not in MAPPABLE:
        raise ValueError(f"{key!r} is not mapped from a file; choose one of {MAPPABLE}")
    if key not in manifest["arrays"]:
        what = "pixel videos, not latents" if key == "latents" else "no ODE snapshots"
        raise ValueError(f"{root} holds {what}")

    def seen(entry: dict) -> str:  # the shard as recorded and as it is on disk now (size, modification time)
        f = root / entry["file"]
        return f"{entry['sha256']}:{f.stat().st_size}:{f.stat().st_mtime_ns}" if f.is_file() else f"{entry['sha256']}:-"

    shards = hashlib.sha256(";".join(seen(e) for e in manifest["shards"]).encode()).hexdigest()
    out, stamp = root / f"{key}.npy", root / f"{key}.json"
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("shards") == shards:
        return out
    total = sum(s["count"] for s in manifest["shards"])
    dtype, tail = manifest["arrays"][key]
    tmp = root / f".{key}.npy.tmp"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(total, *tail))
    filled = 0
    for arrays in iter_shards(root, [key], FORMAT)[1]:
        mm[filled:filled + len(arrays[key])] = arrays[key]
        filled += len(arrays[key])
    mm.flush()
    del mm
    check_filled(root, manifest, filled)
    tmp.replace(out)
    write_json(stamp, {"shards": shards, "count": filled})
    return out


def read_synthetic(path: str | Path, with_ode: bool = False, mmap: bool = False) -> dict:
    """A synthetic dataset, concatenated over its valid shards in sample order: ``videos`` uint8
    [N, T, H, W, 3] (or ``latents`` float16 [N, C, T, H, W]), ``frames`` (T, H, W in pixels), ``prompts``
    list[str], ``sample_ids`` int64 [N], ``actions`` int64 [N, T − 1] (world models), ``config`` (the
    manifest's) and, with ``with_ode``, ``ode_states`` float16 [N, K, C, T, H, W] and ``ode_times`` float32
    [K]. With ``mmap``, latents and ODE states are mapped from ``array_file``
    (one copy shared by every process; made here if missing or stale).

    A shard that is missing, whose sha256 differs from the manifest, that cannot be decoded or whose arrays
    have the wrong shapes or dtypes is reported (a SyntheticDataWarning naming the file and why) and
    skipped; a folder without a manifest or without any valid shard raises."""
    root = Path(path)
    config = load_manifest(root)["config"]
    if with_ode and not config["ode_times"]:
        raise ValueError(f"{root} was written without ODE snapshots; rerun synth with --ode-times into a new folder")
    main = "latents" if config.get("space") == "latent" else "videos"
    mapped = mapped_keys(config, with_ode) if mmap else []
    large = [main] + (["ode_states"] if with_ode else [])
    keys = [k for k in large if k not in mapped] + ["prompts"] + (["actions"] if config.get("actions") else [])
    data = read_shards(root, keys, fmt=FORMAT)
    for key in mapped:
        file = array_file(root, key)
        count = json.loads(file.with_suffix(".json").read_text())["count"]
        data[key] = np.load(file, mmap_mode="r")[:count]
        if len(data[key]) != len(data["prompts"]):
            raise ValueError(f"{root}: {file.name} holds {len(data[key])} samples for {len(data['prompts'])} "
                             "prompts; delete it to have it remade")
    c, t, h, w = config["video_shape"]
    if main == "latents":
        f, H, W = config["video"]["frames"], config["video"]["height"], config["video"]["width"]
        want = (c, t, h, w)
    else:
        f, H, W, want = t, h, w, (t, h, w, 3)
    if data[main].shape[1:] != want:
        raise ValueError(f"{root}: {main} are {data[main].shape[1:]}, the manifest says {want}")
    data["frames"] = (f, H, W)
    out = {**data, "prompts": [str(p) for p in data["prompts"]], "config": config}
    if with_ode:
        out["ode_times"] = np.asarray(config["ode_grid_times"], np.float32)
    return out
