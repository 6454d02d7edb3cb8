"""Sharded training state through ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards,
and a checkpoint loads into any number of processes, sharded or not (DCP matches tensors by parameter name
and global shape and reads the pieces each rank needs). A run saved on 2 processes resumes on 1 or 8.

Inside a checkpoint folder (``train/checkpoint.py`` owns the folder, its checksums and its rename):

    modules.dcp/        the networks and EMA copies, keyed ``<name>.<parameter>``
    optim_<name>.dcp/   one optimiser's moments, keyed by parameter name (drop it: fresh moments on resume)

Only tensors go into DCP; the optimisers' hyper-parameters (param_groups) and the EMA update counts go into
``state.json`` as JSON. Single-process checkpoints stay in the safetensors layout; ``load_full`` puts one of
those into sharded networks (each rank reads the file: fine at the sizes one process trains).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from .distributed import is_sharded as _sharded
from .ema import EMA


def network(x) -> torch.nn.Module:
    """The module behind a checkpointed object (an EMA's averaged copy)."""
    return x.model if isinstance(x, EMA) else x


def is_sharded(x) -> bool:
    return _sharded(network(x))


def _owner(opt: torch.optim.Optimizer, modules: dict) -> torch.nn.Module:
    """The checkpointed module whose parameters the optimiser updates (its names key the moments)."""
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    for m in modules.values():
        if not isinstance(m, EMA) and ids <= {id(p) for p in m.parameters()}:
            return m
    raise ValueError("an optimiser updates parameters of none of the checkpointed modules")


def save(folder: Path, modules: dict, optimizers: dict) -> dict:
    """Write the state into ``folder`` (a collective); returns the JSON part for state.json."""
    dcp.save({name: get_model_state_dict(network(m)) for name, m in modules.items()},
             checkpoint_id=folder / "modules.dcp")
    meta = {"format": "dcp", "ema_updates": {n: m.updates for n, m in modules.items() if isinstance(m, EMA)},
            "optimizers": {}}
    for name, opt in optimizers.items():
        osd = get_optimizer_state_dict(_owner(opt, modules), opt)
        dcp.save({"state": osd["state"]}, checkpoint_id=folder / f"optim_{name}.dcp")
        meta["optimizers"][name] = {"param_groups": osd["param_groups"]}
    return meta


def load(ckpt: Path, modules: dict, optimizers: dict, meta: dict) -> list[str]:
    """Read a DCP checkpoint into ``modules`` and ``optimizers`` (any placement, any world size); returns
    the names of the optimisers whose files were dropped (they restart with fresh moments)."""
    sd = {name: get_model_state_dict(network(m)) for name, m in modules.items()}
    with warnings.catch_warnings():  # one process without a process group: DCP says it reads alone, as meant
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(sd, checkpoint_id=ckpt / "modules.dcp")
    for name, m in modules.items():
        set_model_state_dict(network(m), sd[name])
        if isinstance(m, EMA):
            m.updates = int(meta["ema_updates"][name])
    fresh = []
    for name, opt in optimizers.items():
        folder = ckpt / f"optim_{name}.dcp"
        if not folder.is_dir():
            fresh.append(name)
            continue
        owner = _owner(opt, modules)
        osd = get_optimizer_state_dict(owner, opt)  # a fresh optimiser's zero moments, the targets to fill
        state = {"state": osd["state"]}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=folder)
        set_optimizer_state_dict(owner, opt, {"state": state["state"],
                                              "param_groups": meta["optimizers"][name]["param_groups"]})
    return fresh


def load_full(modules: dict, optimizers: dict, groups: dict, optim_tensors: dict, optim_meta: dict) -> None:
    """A single-process (safetensors) checkpoint into sharded modules: full state dicts, keyed by name.
    ``optim_tensors[name]`` holds ``"<index>.<state>"`` tensors, ``optim_meta[name]`` the JSON part."""
    full = StateDictOptions(full_state_dict=True)
    for name, m in modules.items():
        sd = dict(groups[name])
        if isinstance(m, EMA):
            m.updates = int(sd.pop("__updates"))
        set_model_state_dict(network(m), sd, options=full)
    for name, tensors in optim_tensors.items():
        opt, owner = optimizers[name], _owner(optimizers[name], modules)
        names = {id(p): k for k, p in owner.named_parameters()}
        order = [names[id(p)] for g in opt.param_groups for p in g["params"]]  # the index -> name of the saved state
        state: dict[str, dict] = {}
        for key, val in list(tensors.items()) + list(optim_meta[name]["scalars"].items()):
            idx, entry = key.split(".", 1)
            state.setdefault(order[int(idx)], {})[entry] = val
        groups_ = []
        start = 0
        for g in optim_meta[name]["param_groups"]:
            groups_.append({**g, "params": order[start:start + len(g["params"])]})
            start += len(g["params"])
        set_optimizer_state_dict(owner, opt, {"state": state, "param_groups": groups_}, options=full)
