"""Loading Wan2.1 weights: official layout (our names), diffusers' ``WanTransformer3DModel`` layout, files.

The config is inferred from tensor shapes. The one thing shapes cannot tell is the head count: Wan2.1
always uses 128-dim heads, so ``num_heads = dim / 128`` unless the caller, a diffusers model / folder or
our own ``config.json`` says otherwise.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import WanConfig

PREFIXES = ("model.", "net.", "generator.", "module.", "_orig_mod.")

# diffusers name -> official name (regex on the whole key)
_DIFFUSERS_TO_WAN = [
    (r"condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time_projection.1."),
    (r"condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.self_attn.q."),
    (r"blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.self_attn.k."),
    (r"blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.self_attn.v."),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"blocks\.(\d+)\.attn1\.norm_(q|k)\.", r"blocks.\1.self_attn.norm_\2."),
    (r"blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"blocks\.(\d+)\.attn2\.to_k\.", r"blocks.\1.cross_attn.k."),
    (r"blocks\.(\d+)\.attn2\.to_v\.", r"blocks.\1.cross_attn.v."),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"blocks\.(\d+)\.attn2\.norm_(q|k)\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # diffusers' norm2 is the cross-attention norm
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` file or a diffusers folder, plus any config found
    beside them (our ``config.json`` or a diffusers ``config.json``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if not files:
            raise FileNotFoundError(f"no .safetensors or .pth files in {path}")
        sd = {}
        for f in files:
            sd.update(read_state_dict(f)[0])
        return sd, _read_config(path / "config.json")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif path.suffix in (".pth", ".pt", ".bin"):
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "net", "generator_ema", "generator"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    else:
        raise ValueError(f"unsupported checkpoint format {path.suffix!r} (use .safetensors or .pth)")
    return sd, _read_config(path.with_suffix(".json")) or _read_config(path.parent / "config.json")


def _read_config(p: Path) -> dict | None:
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)


def to_wan_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and map diffusers names onto the official Wan names."""
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        for pattern, repl in _DIFFUSERS_TO_WAN:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def infer_config(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> WanConfig:
    """WanConfig from official-name tensor shapes."""
    need = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight",
            "blocks.0.ffn.0.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise KeyError(f"not a Wan2.1 T2V state dict: missing {missing}")
    pe = sd["patch_embedding.weight"]
    dim, in_dim, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
    num_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if num_heads is None:
        if dim % 128:
            raise ValueError(f"cannot infer the head count of a dim={dim} model from shapes (Wan2.1 uses "
                             f"128-dim heads); pass num_heads=...")
        num_heads = dim // 128
    return WanConfig(
        in_dim=in_dim, out_dim=sd["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2]), dim=dim,
        ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0], freq_dim=sd["time_embedding.0.weight"].shape[1],
        text_dim=sd["text_embedding.0.weight"].shape[1], num_heads=num_heads, num_layers=num_layers,
        patch_size=patch, qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd, dual_time="r_embedding.0.weight" in sd,
        action_dim=sd["action_embedding.mlp.0.weight"].shape[1] if "action_embedding.mlp.0.weight" in sd else 0)


def _heads_from_config(cfg: dict | None) -> int | None:
    if not cfg:
        return None
    if "num_attention_heads" in cfg:  # diffusers
        return int(cfg["num_attention_heads"])
    model = cfg.get("model", cfg)  # ours: {"model": {...WanConfig...}} or a bare WanConfig dict
    return int(model["num_heads"]) if isinstance(model, dict) and "num_heads" in model else None


def load_wan(cls, source, num_heads: int | None = None, **overrides):
    """Build ``cls`` (WanDiT) from a state dict, a diffusers model, a module, or a checkpoint path."""
    file_cfg = None
    if isinstance(source, (str, Path)):
        source, file_cfg = read_state_dict(source)
    elif isinstance(source, torch.nn.Module):
        diff_cfg = getattr(source, "config", None)
        if num_heads is None and diff_cfg is not None and "num_attention_heads" in diff_cfg:
            num_heads = int(diff_cfg["num_attention_heads"])
        source = source.state_dict()
    num_heads = num_heads or _heads_from_config(file_cfg)
    sd = to_wan_names(source)
    cfg = infer_config(sd, num_heads)
    if overrides:
        cfg = WanConfig.from_dict({**cfg.to_dict(), **overrides})
    with torch.device("meta"):
        model = cls(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unknown = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unknown or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unknown:
            parts.append(f"unknown keys ({len(unknown)}): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}")
        if wrong:
            parts.append("shape mismatches: " + ", ".join(
                f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:10]))
        raise KeyError("state dict does not fit WanDiT(" + f"dim={cfg.dim}, layers={cfg.num_layers}): " +
                       "; ".join(parts))
    dtype = next(iter(sd.values())).dtype
    model = model.to_empty(device="cpu").to(dtype)
    model.load_state_dict(sd, strict=True)
    return model


def wan_files_config(source: str | Path, num_heads: int | None = None) -> tuple[WanConfig, list[Path]]:
    """(config, files) of official or diffusers Wan2.1 safetensors (one file, or a folder of shards such as
    ``diffusion_pytorch_model-0000N-of-0000M.safetensors``), read from the headers alone: no tensor is
    loaded, so a 14B checkpoint can then go straight into shards (``load_into``)."""
    from safetensors import safe_open

    source = Path(source)
    files = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    if not files or not all(f.is_file() and f.suffix == ".safetensors" for f in files):
        raise FileNotFoundError(f"no .safetensors checkpoint at {source}")
    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                shapes[k] = torch.empty(h.get_slice(k).get_shape(), device="meta")
    config = _read_config(source / "config.json") if source.is_dir() else (
        _read_config(source.with_suffix(".json")) or _read_config(source.parent / "config.json"))
    return infer_config(to_wan_names(shapes), num_heads or _heads_from_config(config)), files


def load_into(model: torch.nn.Module, files, prefix: str = "", rename=None, allow_missing: tuple[str, ...] = ()
              ) -> list[str]:
    """Fill ``model``'s (possibly FSDP-sharded, possibly just materialised from the meta device) parameters
    and buffers in place from safetensors files, one tensor at a time, reading for a parameter sharded along
    dim 0 only the rows this rank holds: no rank ever holds the whole model, on the CPU or elsewhere.

    File keys are ``prefix`` + the model's names, or what ``rename`` makes of them: a map of whole state
    dicts such as ``to_wan_names``, called on ``{file key: file key}`` and returning ``{model key: file
    key}`` (it may leave keys out: a student of fewer blocks). Returns the model keys no file has; each
    must start with one of ``allow_missing`` (e.g. MeanFlow's new ``r_embedding``), else KeyError."""
    from contextlib import ExitStack

    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, Replicate, Shard

    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        where = {}
        for h in handles:
            keys = {k[len(prefix):]: k[len(prefix):] for k in h.keys() if k.startswith(prefix)}
            for name, key in (rename(keys) if rename is not None else keys).items():
                where[name] = (h, prefix + key)
        targets = model.state_dict(keep_vars=True)
        missing = [k for k in targets if k not in where]
        bad = [k for k in missing if not k.startswith(allow_missing)] if allow_missing else missing
        if bad:
            raise KeyError(f"checkpoint {', '.join(map(str, files))} lacks {len(bad)} tensors the model has: {bad[:10]}")
        with torch.no_grad():
            for name, p in targets.items():
                if name not in where:
                    continue
                h, key = where[name]
                sl = h.get_slice(key)
                if tuple(sl.get_shape()) != tuple(p.shape):
                    raise KeyError(f"{key}: checkpoint shape {tuple(sl.get_shape())}, model {tuple(p.shape)}")
                if isinstance(p, DTensor):
                    local = p.to_local()
                    if p.device_mesh.ndim != 1 or not isinstance(p.placements[0], (Shard, Replicate)):
                        raise ValueError(f"{name}: only 1-D meshes with dim-0 shards load here, got {p.placements}")
                    if isinstance(p.placements[0], Shard) and p.placements[0].dim == 0:
                        # torch.chunk's split (FSDP2's): chunks of ceil(n / world) rows, the last ones shorter
                        chunk = -(-p.shape[0] // p.device_mesh.size())
                        start = chunk * p.device_mesh.get_local_rank()
                        if local.shape[0]:
                            local.copy_(sl[start:start + local.shape[0]])
                        continue
                    if isinstance(p.placements[0], Shard):
                        raise ValueError(f"{name}: only dim-0 shards load here, got {p.placements}")
                    local.copy_(sl[:])
                else:
                    p.copy_(sl[:] if p.ndim else h.get_tensor(key))
    return missing
