"""The sample file every world shares (shared/specs/blobworld.md §5, shared/specs/atari.md §2): one ``.npz``.

- ``videos`` uint8 [N, T, H, W, 3]
- ``prompts`` str [N] ("" for worlds without prompts)
- ``actions`` int64 [N, T − 1] (worlds with actions)
- anything else a world needs for its ground truth (Atari: ``game`` and the emulator ``states``), kept as is.

Written atomically; never pickled.
"""
from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from ..io import atomic_write


def _validated(videos: np.ndarray, prompts: np.ndarray, actions: np.ndarray | None, where: str) -> dict:
    """The §5 arrays after checking their dtypes and shapes; errors name ``where`` (the file)."""
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"{where}: 'videos' must be uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    n, frames = videos.shape[:2]
    if prompts.dtype.kind != "U" or prompts.shape != (n,):
        raise ValueError(f"{where}: 'prompts' must be a str array of shape ({n},), "
                         f"got {prompts.dtype} {prompts.shape}")
    out = {"videos": videos, "prompts": prompts}
    if actions is not None:
        if actions.dtype != np.int64 or actions.shape != (n, frames - 1):
            raise ValueError(f"{where}: 'actions' must be int64 [{n}, {frames - 1}], "
                             f"got {actions.dtype} {actions.shape}")
        out["actions"] = actions
    return out


def save_samples(path: str | os.PathLike, videos: np.ndarray, prompts: Sequence[str],
                 actions: np.ndarray | None = None, **extra) -> None:
    """Write samples as one compressed ``.npz``: videos, prompts, actions (when given) and ``extra`` arrays."""
    prompts = np.array(list(prompts), dtype=str).reshape(-1)
    if actions is not None and np.issubdtype(np.asarray(actions).dtype, np.integer):
        actions = np.asarray(actions).astype(np.int64)
    data = _validated(np.asarray(videos), prompts, None if actions is None else np.asarray(actions), str(path))
    for k, v in extra.items():
        if v is not None:
            data[k] = np.asarray(v)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    atomic_write(path, buf.getvalue())


def load_samples(path: str | os.PathLike) -> dict:
    """Read a sample ``.npz``: ``videos``, ``prompts`` list[str], ``actions`` when stored, and every other
    array under its own name; ValueError naming the file if it is not such a file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a .npz sample file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sample file at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .npz sample file (write one with `causal-rcm generate` or "
                         "`causal-rcm world sample`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            missing = [k for k in ("videos", "prompts") if k not in files]
            if missing:
                raise ValueError(f"{path}: missing {missing}; a samples file holds 'videos', 'prompts' "
                                 f"and optionally 'actions', found {files}")
            arrays = {k: z[k] for k in files}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a .npz sample file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a plain sample file (pickled objects are refused; prompts must be a str "
                         f"array): {e}") from None
    out = dict(arrays)
    out.update(_validated(arrays["videos"], arrays["prompts"], arrays.get("actions"), path))
    out["prompts"] = [str(p) for p in out["prompts"]]
    return out


def load_world_samples(path: str | os.PathLike, world) -> dict:
    """``load_samples`` of a file that must hold videos of ``world`` (a WorldConfig): frames × size × size."""
    s = load_samples(path)
    want = (world.frames, world.size, world.size, 3)
    if s["videos"].shape[1:] != want:
        raise ValueError(f"data={path} holds videos {s['videos'].shape[1:]}; world {world} needs {want}")
    return s


def world_of(samples: dict):
    """The world a sample file belongs to: its stored ``world`` (generate writes it), else read off the file
    (an Atari file carries ``game``; Blobworld files are "agent" exactly when they carry actions)."""
    import json

    from .base import WorldConfig
    from .registry import make_world

    n, frames, h, w = samples["videos"].shape[:4]
    if "world" in samples:
        try:
            return make_world(WorldConfig.from_dict(json.loads(str(samples["world"]))))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"the sample file's 'world' entry is not a world config ({e})") from None
    if "game" in samples:
        return make_world(WorldConfig("atari", str(samples["game"]), w, frames))
    return make_world(WorldConfig("blobworld", "agent" if "actions" in samples else "t2v", w, frames))
