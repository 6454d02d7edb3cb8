"""Training state on disk: safetensors + JSON, never a pickle, and never lost to a kill or a torn write.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXXX/`` holding the modules (and EMA copies), the
optimisers (tensors in safetensors, the rest in JSON) and ``state.json`` (the step, the run's resolved
config, the elapsed time, and the sha256 of every file beside it). It is written into a temporary folder that
is renamed at the end; ``latest`` (a pointer for people and tools) is rewritten atomically after it.

Resuming takes the newest checkpoint that *verifies* (every file present with its recorded sha256): a
truncated, torn or deleted newest one is reported and the previous one is used. Pruning keeps the checkpoint
just written and the ``keep − 1`` newest before it, and removes the temporary folders of saves a kill cut short.

Sharded networks (FSDP2, any run of several processes) write their state with DCP instead of safetensors
(``sharded_state.py``: ``modules.dcp/``, ``optim_<name>.dcp/``, listed file by file in state.json): every rank
writes its shards into the temporary folder, rank 0 checksums, renames and prunes. Either layout resumes on
any number of processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..io import atomic_write, flat_tensors, say, split_prefixes, write_safetensors
from . import distributed as D
from . import sharded_state

STEP_DIR = re.compile(r"step_(\d{8})$")


def _optim_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


HASH_LIMIT = 1 << 28  # larger files (a 14B model's shards) are checked by size: hashing them costs minutes


def _fingerprint(path: Path) -> str:
    size = path.stat().st_size
    return f"bytes:{size}" if size > HASH_LIMIT else _sha256(path)


def step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def save_training_state(run_dir: str | Path, step: int, modules: dict, optimizers: dict, extra: dict,
                        keep: int = 2, is_main: bool = True) -> Path:
    """Write a checkpoint; with sharded modules a collective (every rank calls it, rank 0 finishes it)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    sharded = D.world_size() > 1 or any(sharded_state.is_sharded(m) for m in modules.values())
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    D.barrier()
    if sharded:
        meta = {"step": step, "extra": extra, **sharded_state.save(tmp, modules, optimizers)}
        D.barrier()  # every rank's shards are on disk
        if not is_main:
            D.barrier()
            return final
    else:
        write_safetensors(tmp / "modules.safetensors", flat_tensors(modules))
        meta = {"step": step, "extra": extra, "optimizers": {}}
        for name, opt in optimizers.items():
            tensors, m = _optim_to_tensors(opt)
            write_safetensors(tmp / f"optim_{name}.safetensors", tensors)
            meta["optimizers"][name] = m
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    meta["files"] = {p.relative_to(tmp).as_posix(): _fingerprint(p) for p in files}
    (tmp / "state.json").write_text(json.dumps(meta))
    for p in files + [tmp / "state.json"]:  # on disk before the rename makes the checkpoint visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(ckpt_root / "latest", final.name + "\n")
    older = [p for s, p in step_dirs(run_dir) if s < step]
    newer = [p for s, p in step_dirs(run_dir) if s > step]  # left by a run that was abandoned past here
    torn = sorted(ckpt_root.glob(".tmp_step_*"))  # half-written by a run killed while saving
    for old in older[:max(0, len(older) - (keep - 1))] + newer + torn:
        shutil.rmtree(old, ignore_errors=True)
    if sharded:
        D.barrier()  # the others wait until the checkpoint is visible
    return final


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is whole, else why not."""
    try:
        meta = json.loads((ckpt / "state.json").read_text())
    except FileNotFoundError:
        return "state.json is missing"
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return f"state.json is unreadable ({e})"
    for name, digest in meta.get("files", {}).items():
        p = ckpt / name
        if not p.is_file():
            if name.startswith("optim_"):
                continue  # a weights-only copy (optimizers dropped to move it): resumes with fresh moments
            return f"{name} is missing"
        found = f"bytes:{p.stat().st_size}" if digest.startswith("bytes:") else _sha256(p)
        if found != digest:
            return f"{name} does not match its checksum (truncated or changed)"
    if "files" not in meta and not (ckpt / "modules.safetensors").is_file():
        return "modules.safetensors is missing"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is reported and skipped, and so is the one
    ``latest`` names when its folder is gone (deleted)."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    if STEP_DIR.match(named) and not (pointer.parent / named).is_dir():
        say(f"warning: checkpoint {pointer.parent / named} (named by {pointer}) is missing; falling back to the "
            "previous one")
    for step, path in reversed(step_dirs(run_dir)):
        why = verify(path)
        if why is None:
            return path
        say(f"warning: checkpoint {path} is unusable ({why}); falling back to the previous one")
    return None


def checkpoint_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def load_training_state(ckpt: Path, modules: dict, optimizers: dict) -> tuple[int, dict]:
    meta = checkpoint_meta(ckpt)
    if meta.get("format") == "dcp":
        meta["extra"]["fresh_optimizers"] = sharded_state.load(ckpt, modules, optimizers, meta)
        for name in meta["extra"]["fresh_optimizers"]:
            say(f"note: optim_{name}.dcp is not in {ckpt}; optimizer {name!r} restarts with fresh moments")
        return meta["step"], meta["extra"]
    try:
        groups = split_prefixes(load_file(str(ckpt / "modules.safetensors")))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {ckpt} cannot be read ({e}); delete it to resume from the one before") from None
    for name in modules:
        if name not in groups:
            raise ValueError(f"checkpoint {ckpt} has no weights for {name!r} (has {sorted(groups)})")
    meta["extra"]["fresh_optimizers"] = []
    if any(sharded_state.is_sharded(m) for m in modules.values()):  # one process's checkpoint, now sharded
        present = {n: load_file(str(ckpt / f"optim_{n}.safetensors")) for n in optimizers
                   if (ckpt / f"optim_{n}.safetensors").is_file()}
        sharded_state.load_full(modules, optimizers, groups, present, meta["optimizers"])
        meta["extra"]["fresh_optimizers"] = [n for n in optimizers if n not in present]
        return meta["step"], meta["extra"]
    for name, m in modules.items():
        m.load_state_dict(groups[name])
    for name, opt in optimizers.items():
        path = ckpt / f"optim_{name}.safetensors"
        if not path.is_file():
            # A weights-only checkpoint (optimizer files dropped to move it between machines): the moments
            # restart from zero, the step count and the weights carry on.
            say(f"note: {path.name} is not in {ckpt}; optimizer {name!r} restarts with fresh moments")
            meta["extra"]["fresh_optimizers"].append(name)
            continue
        _optim_from_tensors(opt, load_file(str(path)), meta["optimizers"][name])
    return meta["step"], meta["extra"]
