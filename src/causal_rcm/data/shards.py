"""Checksummed, resumable, process-parallel shards of per-sample arrays (DESIGN.md stage [1] and world data).

    DIR/manifest.json     {"format", "config", "arrays", "shards": [{file, count, first_id, bytes, sha256}],
                          "complete"}
    DIR/shard_00000.npz   the arrays ``make_shard(lo, hi)`` returned for samples lo … hi − 1 (each with
                          leading dimension hi − lo) plus ``sample_ids`` int64 [hi − lo]

``write_shards`` cuts n samples into shards of ``shard_size``; shard k holds samples [k·size, (k+1)·size).
Each shard is made by ``make_shard(lo, hi)`` (in ``workers`` processes), written under a temporary name,
renamed, and only then recorded in the manifest by the parent, so a kill loses at most the shards in
flight: a rerun with the same ``config`` continues with the shards the manifest does not list; another
config raises ValueError naming the differing keys. Shards are written byte-deterministically (fixed zip
timestamps), so the same config gives the same sha256 for any number of workers, provided ``make_shard``
is a pure function of (lo, hi) (its result must not depend on what the process computed before).

``read_shards`` concatenates the valid shards in sample order; a shard that is missing, whose sha256 differs
from the manifest, that cannot be decoded, or whose arrays differ from the manifest's dtypes and shapes is
reported with a ``ShardWarning`` and skipped.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import atomic_write, progress as progress_bar, write_json

FORMAT = "causal-rcm-shards/1"
MANIFEST = "manifest.json"
SAMPLE_IDS = "sample_ids"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no wall-clock time in the bytes


class ShardWarning(UserWarning):
    """A shard was skipped (missing, changed, unreadable or malformed) or the dataset is incomplete."""


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` of ``arrays`` with fixed timestamps: equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


def _schema(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    """{name: [dtype, per-sample shape]}; a str array is "str" of any length (its itemsize varies by shard)."""
    return {k: ["str" if a.dtype.kind == "U" else a.dtype.str, list(a.shape[1:])] for k, a in arrays.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: dict, new: dict, ignore: Sequence[str] = ()) -> list[str]:
    """"key: old -> new" for every (dotted, nested) config key that differs, except the ``ignore`` keys."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if not any(k == i or k.startswith(i + ".") for i in ignore))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def load_manifest(root: str | Path, fmt: str | None = None) -> dict:
    """The parsed manifest.json of a shard folder (FileNotFoundError / ValueError naming the fix)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST}; not a shard folder written by causal-rcm")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move the folder away and write it again") from None
    if fmt is not None and manifest.get("format") != fmt:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {fmt!r}")
    return manifest


def _open_manifest(root: Path, config: dict, fmt: str, ignore: Sequence[str], verify: bool) -> dict:
    """A fresh manifest, or the folder's own when its settings equal ``config`` (its whole shards kept;
    with ``verify`` only those that pass read_shards' checks)."""
    if not (root / MANIFEST).is_file():
        return {"format": fmt, "config": config, "arrays": None, "shards": [], "complete": False}
    manifest = load_manifest(root, fmt)
    diff = differences(manifest["config"], config, ignore)
    if diff:
        raise ValueError(f"{root} holds shards made with other settings ({'; '.join(diff)}); rerun with the same "
                         "settings to resume it, or write to a new folder")
    kept = []
    for s in manifest["shards"]:
        f = root / s["file"]
        # by default a cheap check on resume (read_shards checks the sha256): the file is there, whole
        whole = f.is_file() and f.stat().st_size == s["bytes"]
        if whole and (not verify or _load_shard(root, s, manifest["arrays"], list(manifest["arrays"]))[1] is None):
            kept.append(s)
        else:
            warnings.warn(f"{f}: listed in the manifest but missing or changed; writing it again",
                          ShardWarning, stacklevel=3)
    manifest["shards"] = kept
    return manifest


def _make_and_write(make_shard: Callable[[int, int], dict], root: str, name: str, lo: int,
                    hi: int) -> tuple[dict, dict]:
    """In a worker: make shard [lo, hi), write it (temporary name, then rename); (manifest entry, schema)."""
    arrays = dict(make_shard(lo, hi))
    if SAMPLE_IDS in arrays:
        raise ValueError(f"make_shard must not return {SAMPLE_IDS!r}: the writer adds it")
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim == 0 or len(a) != hi - lo or a.dtype.hasobject:
            raise ValueError(f"make_shard({lo}, {hi}) returned {k!r} of {type(a).__name__} "
                             f"{getattr(a, 'shape', '')}; every value must be a non-object ndarray of {hi - lo} rows")
    arrays[SAMPLE_IDS] = np.arange(lo, hi, dtype=np.int64)
    data = npz_bytes(arrays)
    atomic_write(Path(root) / name, data)
    entry = {"file": name, "count": hi - lo, "first_id": lo, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    return entry, _schema(arrays)


def _worker_context():
    """Fresh worker processes (no inherited emulator, CUDA or thread state): forked from a forkserver that has
    imported this module once (numpy, torch via ..io), so each pool does not pay the imports again; spawn
    where there is no forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def write_shards(out_dir: str | Path, n: int, shard_size: int, config: dict,
                 make_shard: Callable[[int, int], dict[str, np.ndarray]], workers: int = 1, progress: bool = True,
                 fmt: str = FORMAT, ignore: Sequence[str] = (), shard_info: dict | None = None,
                 verify: bool = False, desc: str = "shards") -> Path:
    """Write samples 0 … n − 1 as shards of ``shard_size`` (module docstring) into ``out_dir``; returns it.

    ``config``: JSON-able settings that determine the data (``n`` and ``shard_size`` are added); a rerun
    must give equal settings, except the dotted keys in ``ignore`` (e.g. a path that does not change the
    data). ``make_shard(lo, hi)``: a picklable top-level callable (the workers are spawned processes) that
    returns {name: ndarray with hi − lo rows}. ``shard_info``: extra fields recorded with every shard this
    run writes (e.g. the device). ``workers`` = 1 makes the shards in this process; more start fresh
    processes, so a script that calls this needs the ``if __name__ == "__main__":`` guard. ``verify``: on resume,
    check every finished shard as ``read_shards`` does (not only its size) and make the bad ones again."""
    for name, v in (("n", n), ("shard_size", shard_size), ("workers", workers)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for k, v in (("n", n), ("shard_size", shard_size)):
        if k in config and config[k] != v:
            raise ValueError(f"config[{k!r}] = {config[k]!r} differs from the argument {k} = {v!r}")
    config = json.loads(json.dumps({**config, "n": int(n), "shard_size": int(shard_size)}))  # as stored
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(root, config, fmt, ignore, verify)
    for stale in root.glob(".shard_*.npz.tmp*"):  # left by a killed run (atomic_write's temporary names)
        stale.unlink()
    done = {s["first_id"] for s in manifest["shards"]}
    todo = [(f"shard_{k:05d}.npz", k * shard_size, min(n, (k + 1) * shard_size))
            for k in range(-(-n // shard_size)) if k * shard_size not in done]
    n_shards = -(-n // shard_size)
    manifest["complete"] = len(manifest["shards"]) == n_shards
    write_json(root / MANIFEST, manifest)
    bar = progress_bar(total=n, initial=n - sum(hi - lo for _, lo, hi in todo), desc=desc, unit="sample",
                       disable=not progress)

    def record(entry: dict, schema: dict) -> None:
        if manifest["arrays"] is None:
            manifest["arrays"] = schema
        elif schema != manifest["arrays"]:
            raise ValueError(f"shard {entry['file']} has arrays {schema}, earlier shards {manifest['arrays']}; "
                             "make_shard must return the same names, dtypes and shapes for every range")
        manifest["shards"].append({**entry, **(shard_info or {})})
        manifest["shards"].sort(key=lambda s: s["first_id"])
        manifest["complete"] = len(manifest["shards"]) == n_shards
        write_json(root / MANIFEST, manifest)
        bar.update(entry["count"])

    try:
        if workers == 1 or len(todo) <= 1:
            for name, lo, hi in todo:
                record(*_make_and_write(make_shard, str(root), name, lo, hi))
        else:
            ctx = _worker_context()
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                pending = {pool.submit(_make_and_write, make_shard, str(root), *job) for job in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            record(*f.result())
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return root


def _load_shard(root: Path, entry: dict, schema: dict, keys: Sequence[str]) -> tuple[dict | None, str | None]:
    """(arrays, None) for a shard that matches its manifest entry and the dataset's schema, else (None, why)."""
    path = root / entry["file"]
    if not path.is_file():
        return None, "missing"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        return None, (f"sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}… "
                      "(the file was changed or truncated)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                return None, f"lacks arrays {missing}"
            arrays = {k: z[k] for k in keys}
    except Exception as e:  # noqa: BLE001 - any failure to decode the file means: do not use this shard
        return None, f"cannot be read as .npz ({type(e).__name__}: {e})"
    k = entry["count"]
    for name, a in arrays.items():
        dtype, tail = schema[name]
        got = "str" if a.dtype.kind == "U" else a.dtype.str
        if got != dtype or list(a.shape) != [k, *tail]:
            return None, f"{name} is {a.dtype} {a.shape}, expected {dtype} {tuple([k, *tail])}"
    if not np.array_equal(arrays[SAMPLE_IDS], np.arange(entry["first_id"], entry["first_id"] + k)):
        return None, f"sample_ids are not {entry['first_id']}..{entry['first_id'] + k - 1}"
    return arrays, None


def iter_shards(out_dir: str | Path, keys: Sequence[str] | None = None, fmt: str | None = None):
    """(manifest, generator of the valid shards' arrays in sample order): ``keys`` plus ``sample_ids`` of
    each shard; a bad shard is reported with a ShardWarning and skipped."""
    root = Path(out_dir)
    manifest = load_manifest(root, fmt)
    schema = manifest.get("arrays") or {}
    keys = list(schema) if keys is None else list(dict.fromkeys([*keys, SAMPLE_IDS]))
    unknown = [k for k in keys if k not in schema]
    if unknown:
        raise ValueError(f"{root} holds arrays {sorted(schema)}; no {unknown}")

    def shards():
        for entry in manifest["shards"]:
            arrays, why = _load_shard(root, entry, schema, keys)
            if why is not None:
                warnings.warn(f"{root / entry['file']}: {why}; shard skipped", ShardWarning, stacklevel=3)
                continue
            yield arrays

    return manifest, shards()


def read_shards(out_dir: str | Path, keys: Sequence[str] | None = None,
                fmt: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of a shard folder (all, or ``keys`` plus ``sample_ids``), concatenated over its valid
    shards in sample order. Bad shards are skipped with a ShardWarning; so is an incomplete dataset
    reported. A folder without a manifest or without any valid shard raises."""
    root = Path(out_dir)
    manifest, shards = iter_shards(root, keys, fmt)
    schema = manifest.get("arrays") or {}
    keys = list(schema) if keys is None else list(dict.fromkeys([*keys, SAMPLE_IDS]))
    total = sum(s["count"] for s in manifest["shards"])
    # numeric arrays are filled in place, shard by shard: peak memory is the dataset plus one shard
    out = {k: np.empty((total, *schema[k][1]), schema[k][0]) for k in keys if schema[k][0] != "str"}
    strs: dict[str, list[np.ndarray]] = {k: [] for k in keys if schema[k][0] == "str"}
    filled = 0
    for arrays in shards:
        for k, a in arrays.items():
            if k in out:
                out[k][filled:filled + len(a)] = a
            else:
                strs[k].append(a)
        filled += len(arrays[SAMPLE_IDS])
    check_filled(root, manifest, filled)
    return {**{k: a[:filled] for k, a in out.items()}, **{k: np.concatenate(v) for k, v in strs.items()}}


def check_filled(root: Path, manifest: dict, filled: int) -> None:
    """Raise when no shard was valid; warn when the dataset is short of its n samples."""
    if filled == 0:
        raise ValueError(f"{root}: no valid shard ({len(manifest['shards'])} listed in {MANIFEST}); write it again")
    n = manifest["config"]["n"]
    if filled < n:
        warnings.warn(f"{root} holds {filled} valid samples of {n}; rerun the writer with the same settings to "
                      "finish it", ShardWarning, stacklevel=3)
