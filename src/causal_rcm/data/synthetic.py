"""Synthetic data on disk: teacher videos in checksummed, resumable shards (DESIGN.md stage [1]).

The causal teacher (METHOD.md §3) and the few-step students (§4) train on videos sampled from the
bidirectional teacher (``stages/synth.py`` draws them). ``write_synthetic`` stores n of them in a folder:

    DIR/manifest.json     the settings (``config``) and, per finished shard: file, count, first id, sha256
    DIR/shard_00000.npz   videos uint8 [k, T, H, W, 3], prompts str [k], sample_ids int64 [k]; world models
                          also actions int64 [k, T − 1]; with ODE snapshots also ode_states float16
                          [k, K, C, T, H, W] and ode_times float32 [K]

This module knows the format only: the sampler is a function ``make_shard(lo, hi) -> arrays`` passed in.
Sizes (uncompressed; shards are zlib-compressed: Blobworld videos shrink several-fold, ODE states hardly):
a video is T·H·W·3 bytes, 64.5 KB at 21×32×32, so 10,000 videos take 645 MB; one ODE state is C·T·H·W·2
bytes, 129 KB at 3×21×32×32, so K = 4 states of 10,000 videos take 5.2 GB, on disk and in memory when read
back with ``with_ode=True``. Writing holds one shard in memory (256 videos with 4 states: 149 MB).
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import atomic_write, progress as progress_bar

FORMAT = "causal-rcm-synthetic/1"
MANIFEST = "manifest.json"


class SyntheticDataWarning(UserWarning):
    """A shard of a synthetic dataset was skipped (missing, changed, unreadable or malformed)."""


def check_ode_times(ode_times: Sequence[float]) -> list[float]:
    times = [float(t) for t in ode_times]
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise ValueError(f"ODE snapshot times must be a non-empty list of RF times in [0, 1], got {times}")
    return times






def _differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between two configs; the teacher counts by its weights, not by its path."""
    def comparable(c):
        return {**c, "teacher": {k: v for k, v in c.get("teacher", {}).items() if k != "path"}}
    a, b = comparable(old), comparable(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


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


def write_synthetic(out_dir: str | Path, n: int, shard_size: int, config: dict,
                    make_shard: Callable[[int, int, object], dict[str, np.ndarray]], progress: bool = True,
                    device: str = "") -> Path:
    """Write samples 0 … n − 1 as shards of ``shard_size`` plus manifest.json into ``out_dir``.

    ``make_shard(lo, hi, bar)`` returns the arrays of samples [lo, hi) (``videos``, ``prompts``, optional
    ``actions``, ``ode_states``, ``ode_times``; it advances the progress bar by one per video). ``config``
    describes how they are made: a folder holding a dataset of other settings is refused. Each shard is
    written to a temporary name, renamed, then recorded in the manifest, so a killed run reruns with the
    same settings and continues after its last finished shard. Each shard records ``device`` (CUDA samples
    under bf16 autocast: a run resumed on another kind of device holds shards of two precisions).
    """
    for name, v in (("n", n), ("shard_size", shard_size)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    root = Path(out_dir)
    config = {**config, "n": int(n), "shard_size": int(shard_size)}
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
        arrays = make_shard(lo, hi, bar)
        arrays = {**arrays, "prompts": np.array(list(arrays["prompts"]), dtype=str),
                  "sample_ids": np.arange(lo, hi, dtype=np.int64)}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        atomic_write(root / name, data)
        manifest["shards"].append({"file": name, "count": hi - lo, "first_id": lo, "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest(), "device": device})
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
    with_actions = bool(config.get("actions"))
    keys = (["videos", "prompts", "sample_ids"] + (["actions"] if with_actions else [])
            + (["ode_states", "ode_times"] if with_ode else []))
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
    if with_actions:
        want["actions"] = (np.int64, (k, t - 1))
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
    [N, T, H, W, 3], ``prompts`` list[str], ``sample_ids`` int64 [N], ``actions`` int64 [N, T − 1] (world
    models), ``config`` (the manifest's) and, with
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
    acts = np.empty((total, t - 1), np.int64) if config.get("actions") else None
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
        if acts is not None:
            acts[filled:filled + k] = arrays["actions"]
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
    if acts is not None:
        out["actions"] = acts[:filled]
    if with_ode:
        out.update(ode_states=ode[:filled], ode_times=np.asarray(config["ode_grid_times"], np.float32))
    return out
