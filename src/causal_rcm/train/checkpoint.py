"""Checkpoints: safetensors + JSON, never a pickle.

- A *bundle* is one ``.safetensors`` file holding the weights of a few named modules (``net.*``,
  ``text_encoder.*``, ...) with its JSON config in the file's metadata and in a ``.json`` beside it. Bundles
  are what ``generate`` loads and what ships in ``assets/``.
- A *training state* is a folder ``step_XXXXXXXX/`` with the modules, the EMA copies, the optimisers
  (tensors in safetensors, the rest in JSON) and the step. Writes go to a temporary folder that is
  renamed at the end, so a kill never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def _flat(modules: dict[str, torch.nn.Module | dict], dtype=None) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in modules.items():
        sd = m.state_dict() if hasattr(m, "state_dict") else m
        for k, v in sd.items():
            v = v.detach()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[f"{name}.{k}"] = v.cpu().contiguous()
    return out


def split_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        groups.setdefault(head, {})[rest] = v
    return groups


def save_bundle(path: str | Path, modules: dict, config: dict, dtype: torch.dtype | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_flat(modules, dtype), str(tmp), metadata={"config": json.dumps(config)})
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_bundle(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors bundle written by causal-rcm")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" in meta:
        config = json.loads(meta["config"])
    elif path.with_suffix(".json").is_file():
        config = json.loads(path.with_suffix(".json").read_text())
    else:
        raise ValueError(f"{path} carries no config (metadata 'config' or {path.with_suffix('.json').name})")
    return split_prefixes(load_file(str(path))), config


# ----- training state ---------------------------------------------------------------------------------
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


def save_training_state(run_dir: str | Path, step: int, modules: dict, optimizers: dict, extra: dict,
                        keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_flat(modules), str(tmp / "modules.safetensors"))
    meta = {"step": step, "extra": extra, "optimizers": {}}
    for name, opt in optimizers.items():
        tensors, m = _optim_to_tensors(opt)
        save_file(tensors, str(tmp / f"optim_{name}.safetensors"))
        meta["optimizers"][name] = m
    (tmp / "state.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (ckpt_root / "latest").write_text(final.name + "\n")
    for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_training_state(ckpt: Path, modules: dict, optimizers: dict) -> tuple[int, dict]:
    groups = split_prefixes(load_file(str(ckpt / "modules.safetensors")))
    for name, m in modules.items():
        if name not in groups:
            raise KeyError(f"checkpoint {ckpt} has no weights for {name!r} (has {sorted(groups)})")
        m.load_state_dict(groups[name])
    meta = json.loads((ckpt / "state.json").read_text())
    meta["extra"]["fresh_optimizers"] = []
    for name, opt in optimizers.items():
        path = ckpt / f"optim_{name}.safetensors"
        if not path.is_file():
            # A weights-only checkpoint (optimizer files dropped to move it between machines): the moments
            # restart from zero, the step count and the weights carry on.
            print(f"note: {path.name} is not in {ckpt}; optimizer {name!r} restarts with fresh moments")
            meta["extra"]["fresh_optimizers"].append(name)
            continue
        _optim_from_tensors(opt, load_file(str(path)), meta["optimizers"][name])
    return meta["step"], meta["extra"]
