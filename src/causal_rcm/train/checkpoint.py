"""Training state on disk: safetensors + JSON, never a pickle, and never lost to a kill or a torn write.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXXX/`` holding the modules (and EMA copies), the
optimisers (tensors in safetensors, the rest in JSON) and ``state.json`` (the step, the run's resolved
config, the elapsed time, and the sha256 of every file beside it). It is written into a temporary folder that
is renamed at the end; ``latest`` (a pointer for people and tools) is rewritten atomically after it.

Resuming takes the newest checkpoint that *verifies* (every file present with its recorded sha256): a
truncated, torn or deleted newest one is reported and the previous one is used. Pruning keeps the checkpoint
just written and the ``keep − 1`` newest before it.
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
from safetensors.torch import load_file, save_file

from ..io import atomic_write, flat_tensors, say, split_prefixes

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


def step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def save_training_state(run_dir: str | Path, step: int, modules: dict, optimizers: dict, extra: dict,
                        keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(flat_tensors(modules), str(tmp / "modules.safetensors"))
    meta = {"step": step, "extra": extra, "optimizers": {}}
    for name, opt in optimizers.items():
        tensors, m = _optim_to_tensors(opt)
        save_file(tensors, str(tmp / f"optim_{name}.safetensors"))
        meta["optimizers"][name] = m
    meta["files"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / "state.json").write_text(json.dumps(meta))
    for p in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(ckpt_root / "latest", final.name + "\n")
    older = [p for s, p in step_dirs(run_dir) if s < step]
    newer = [p for s, p in step_dirs(run_dir) if s > step]  # left by a run that was abandoned past here
    for old in older[:max(0, len(older) - (keep - 1))] + newer:
        shutil.rmtree(old, ignore_errors=True)
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
        if _sha256(p) != digest:
            return f"{name} does not match its checksum (truncated or changed)"
    if "files" not in meta and not (ckpt / "modules.safetensors").is_file():
        return "modules.safetensors is missing"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is reported and skipped."""
    for step, path in reversed(step_dirs(run_dir)):
        why = verify(path)
        if why is None:
            return path
        say(f"warning: checkpoint {path} is unusable ({why}); falling back to the previous one")
    return None


def checkpoint_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def load_training_state(ckpt: Path, modules: dict, optimizers: dict) -> tuple[int, dict]:
    try:
        groups = split_prefixes(load_file(str(ckpt / "modules.safetensors")))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {ckpt} cannot be read ({e}); delete it to resume from the one before") from None
    for name, m in modules.items():
        if name not in groups:
            raise ValueError(f"checkpoint {ckpt} has no weights for {name!r} (has {sorted(groups)})")
        m.load_state_dict(groups[name])
    meta = checkpoint_meta(ckpt)
    meta["extra"]["fresh_optimizers"] = []
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
