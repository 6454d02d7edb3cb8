"""Where a training stage's networks live: in one process as they always did, or as FSDP2 shards over the
process group (``parallel.fsdp``: auto = whenever torchrun starts more than one process).

``Placement`` is the one value a stage asks for its networks, so every stage places them alike:

- ``load_bundle``: a bundle's network, trained or frozen. Sharded, it is built on the meta device,
  parallelised (``parallelize.py``), materialised empty and filled shard by shard from the file
  (``models/loading.load_into``); rank 0 checks the file's checksum in one streaming pass. One process:
  ``Bundle.load`` as before, then checkpointing / compile.
- ``load_wan``: an official / diffusers Wan2.1 checkpoint (a folder of shards), into shards the same way.
- ``prepare``: a network the stage built itself (the teacher from scratch); ``build``: a fresh random one
  straight into shards (the benchmarks at Wan scale).
- ``replica``: the EMA copy of a network, placed like it (sharded alike, frozen), holding its values.
- ``gathered``: a network's blocks kept gathered through a rollout's many small no-grad calls.
- ``save_bundle``: the release artefact, gathered to rank 0 only (full state dict, CPU) and written there.

Frozen teachers, the critic and every EMA are sharded like the trained network; text encoders the stage
does not train stay whole on every rank (they are small).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from ..config import WanConfig
from ..io import BundleError, bundle_header, check_bundle_tensors, save_bundle
from ..kernels.attention import use_masked_backend, use_sdpa_order
from ..models.loading import load_into, to_wan_names, wan_files_config
from ..models.wan import WanDiT
from . import distributed as D
from .parallelize import ParallelConfig, parallelize


class LazyTensors(Mapping):
    """The tensors of a safetensors file as a mapping that reads one tensor per lookup."""

    def __init__(self, handle):
        self.h = handle

    def __getitem__(self, key):
        return self.h.get_tensor(key)

    def __iter__(self):
        return iter(self.h.keys())

    def __len__(self):
        return len(self.h.keys())


def _rebuild(m: nn.Module) -> nn.Module:
    """A fresh module of the same architecture (on the current default device; meta under ``torch.device``)."""
    if isinstance(m, nn.ModuleDict):
        return nn.ModuleDict({k: _rebuild(v) for k, v in m.items()})
    if hasattr(m, "cfg"):  # WanDiT, WorldTextEncoder: the config builds the module
        return type(m)(m.cfg)
    raise TypeError(f"cannot rebuild a {type(m).__name__}: it has no cfg")


class Placement:
    def __init__(self, cfg: ParallelConfig, device: torch.device):
        self.cfg, self.device = cfg, torch.device(device)
        if self.device.type == "cuda":  # the attention kernels, process-wide (kernels/attention.py)
            use_masked_backend(cfg.attention)
            use_sdpa_order(cfg.sdpa)
        world = D.world_size()
        if cfg.fsdp == "off" and world > 1:
            raise ValueError(f"parallel.fsdp=off runs in one process, but {world} were started; "
                             "use parallel.fsdp=auto under torchrun")
        self.sharded = cfg.fsdp == "on" or (cfg.fsdp == "auto" and world > 1)
        self.mesh = None
        if self.sharded:
            D.ensure_group(self.device)
            self.mesh = init_device_mesh(self.device.type, (D.world_size(),))

    def micro_batches(self, ids: range) -> list[range]:
        return D.micro_batches(ids, self.cfg.grad_accum)

    # ----- networks ---------------------------------------------------------------------------------
    def prepare(self, module: nn.Module, trainable: bool) -> nn.Module:
        """A materialised module placed: on the device, checkpointed / compiled / sharded."""
        module.to(self.device).train(trainable).requires_grad_(trainable)
        return parallelize(module, self.cfg, self.device, self.mesh, trainable)

    def _empty(self, cfg: WanConfig, trainable: bool) -> WanDiT:
        """A DiT built on the meta device, parallelised, then materialised uninitialised on this device:
        each rank allocates its shards only."""
        with torch.device("meta"):
            net = WanDiT(cfg)
        net.train(trainable).requires_grad_(trainable)
        parallelize(net, self.cfg, self.device, self.mesh, trainable)
        return net.to_empty(device=self.device)

    def build(self, cfg: WanConfig, trainable: bool = False, seed: int = 0) -> WanDiT:
        """A fresh DiT with Wan's random initialisation (drawn on the shards), placed: the benchmarks'
        networks at any size, built without a full copy anywhere."""
        net = self._empty(cfg, trainable)
        torch.manual_seed(seed)
        net.init_weights()
        return net

    def load_wan(self, source: str | Path, trainable: bool = False, num_heads: int | None = None) -> WanDiT:
        """A Wan2.1 DiT from official or diffusers safetensors (a file or a folder of shards) placed, each
        rank reading only its shards: the config comes from the headers, the weights tensor by tensor."""
        cfg, files = wan_files_config(source, num_heads)
        net = self._empty(cfg, trainable)
        load_into(net, files, rename=to_wan_names)
        return net

    def load_bundle(self, path: str, what: str, trainable: bool = False,
                    net_config: Callable[[WanConfig], WanConfig] | None = None,
                    rename: Callable[[dict], dict] | None = None):
        """The bundle at ``path`` (the config key ``what=`` names it) with its network placed.
        ``net_config`` changes the network's config (fewer blocks, MeanFlow's dual_time) and ``rename``
        maps the bundle's state-dict keys to the changed network's (``{key: value}`` to ``{key: value}``);
        weights the bundle lacks keep the model's initialisation (its zero last layers)."""
        if not path:
            raise ValueError(f"this stage needs {what}= (a bundle path)")
        if self.sharded:
            return self._load_bundle_sharded(path, trainable, net_config, rename)
        from ..stream.bundle import Bundle

        b = Bundle.load(path, device=self.device, trainable=trainable)
        new_cfg = net_config(b.net.cfg) if net_config is not None else b.net.cfg
        if new_cfg != b.net.cfg or rename is not None:
            net = WanDiT(new_cfg).to(self.device)
            sd = rename(b.net.state_dict()) if rename is not None else b.net.state_dict()
            bad = net.load_state_dict(sd, strict=False).unexpected_keys
            if bad:
                raise ValueError(f"{path}: the changed network has no place for {bad[:5]}")
            b.net = net.train(trainable).requires_grad_(trainable)
        b.net = parallelize(b.net, self.cfg, self.device, None, trainable)
        return b

    def _load_bundle_sharded(self, path: str, trainable: bool, net_config, rename):
        from safetensors import safe_open

        from ..stream.bundle import Bundle, net_config as bundle_net_config

        config, meta = bundle_header(path)
        verdict = None
        if D.is_main():  # one streaming pass over the file; the verdict goes to every rank
            try:
                with safe_open(str(path), framework="pt") as f:
                    check_bundle_tensors(path, LazyTensors(f), meta)
            except BundleError as e:
                verdict = str(e)
        verdict = D.broadcast_object(verdict)
        if verdict is not None:
            raise BundleError(verdict)
        try:
            cfg = bundle_net_config(config)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: bundle config has no usable 'model' ({e})") from None
        new_cfg = net_config(cfg) if net_config is not None else cfg
        rename = rename or (lambda sd: sd)
        with torch.device("meta"):
            added = tuple(sorted(set(WanDiT(new_cfg).state_dict()) - set(rename(WanDiT(cfg).state_dict()))))
        net = self._empty(new_cfg, trainable)
        if added:
            net.init_weights()  # on the shards: only the weights the bundle lacks keep these values
        load_into(net, [path], prefix="net.", rename=rename, allow_missing=added)
        with safe_open(str(path), framework="pt") as f:
            te = {k[len("text_encoder."):]: f.get_tensor(k) for k in f.keys() if k.startswith("text_encoder.")}
        b = Bundle.from_config(path, config, {"text_encoder": te}, net=net)
        b.text_encoder.to(self.device).eval().requires_grad_(False)
        return b

    @contextmanager
    def gathered(self, net: nn.Module, enabled: bool = True):
        """``net``'s blocks gathered once for a stretch of forwards without gradients: a rollout calls the
        generator tens of times on a few frames each, so one all-gather per block replaces one per call
        (at 14B on 64 GPUs the difference between being bound by compute and by InfiniBand). Costs one bf16
        copy of the blocks while it lasts; the root unit (embeddings, head) is still gathered per call."""
        units = [m for m in net.modules() if isinstance(m, FSDPModule) and m is not net] if enabled else []
        for m in units:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield net
        finally:
            for m in units:
                m.set_reshard_after_forward(True, recurse=False)
                m.reshard()

    @torch.no_grad()
    def replica(self, module: nn.Module) -> nn.Module:
        """A frozen copy of ``module`` placed like it (the EMA): rebuilt on the meta device, sharded alike,
        then each rank copies its own shards; no full copy is made."""
        with torch.device("meta"):
            copy = _rebuild(module)
        copy.eval().requires_grad_(False)
        parallelize(copy, self.cfg, self.device, self.mesh if D.is_sharded(module) else None, compile=False)
        copy.to_empty(device=self.device)
        src = module.state_dict(keep_vars=True)
        for k, v in copy.state_dict(keep_vars=True).items():
            D.local(v).copy_(D.local(src[k]))
        return copy

    # ----- outputs ----------------------------------------------------------------------------------
    def full_state_dict(self, module: nn.Module) -> dict:
        """The whole state dict on rank 0, on the CPU ({} on the other ranks); every rank must call it."""
        if not D.is_sharded(module):
            return {k: v.detach().cpu() for k, v in module.state_dict().items()} if D.is_main() else {}
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_bundle(self, bundle, path: str | Path, **extra) -> Path:
        """Write ``bundle`` (its network possibly sharded) as a bundle file from rank 0; a collective."""
        from ..stream.bundle import stored_modules

        tensors = {k: self.full_state_dict(m) for k, m in stored_modules(bundle.net, bundle.text_encoder).items()}
        if D.is_main():
            save_bundle(path, tensors, {**bundle.config(), **extra})
        D.barrier()
        return Path(path)


def dual_time(cfg: WanConfig) -> WanConfig:
    """MeanFlow's student: the network with a second time input r (METHOD.md §4)."""
    return dataclasses.replace(cfg, dual_time=True)
