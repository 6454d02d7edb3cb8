"""Stage 0 of the Wan2.1 recipe: the bidirectional Wan2.1 teacher as a bundle, from the weights the user gives.

    causal-rcm train wan_teacher --preset wan2.1-1.3b root=/models/Wan2.1-T2V-1.3B-Diffusers --out RUN/teacher

Nothing is trained and nothing is downloaded: the DiT's tensors are read (official or diffusers names, one
file or a folder of shards) and written as our bundle in the checkpoint's own dtype; the umT5 text encoder and the Wan VAE stay
where they are and the bundle refers to them by path (``stream/bundle.py``). The parts come from

- ``root``: a diffusers Wan2.1 folder (``transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``, as
  Wan-AI/Wan2.1-T2V-1.3B-Diffusers), or Wan's official folder (``diffusion_pytorch_model*.safetensors``,
  ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``), whose ``Wan2.1_VAE.pth`` is not diffusers' VAE
  format: give ``vae=`` (a diffusers ``AutoencoderKLWan`` folder) with it;
- or each part alone (``dit``, ``text_encoder``, ``tokenizer``, ``vae``), which also override ``root``'s.

The bundle samples as Wan2.1 does by default (Euler on the flow ODE, 50 steps, CFG 5, shift 5) at the
video size of the config (81 frames of 832×480); the checks that the parts fit together (the DiT's text width
is umT5's, its channels the VAE's, the size a multiple of the VAE's and the patch's strides) run before any
file is written. Writes RUN/teacher.safetensors (+ .json) and RUN/config.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import apply_overrides
from ..io import check_dir_writable, save_bundle, write_json
from ..models.loading import load_into, to_wan_names, wan_files_config
from ..models.wan import WanDiT
from ..stream.bundle import VideoSize
from ..stream.sampling import Euler, to_dict
from ..train import distributed as D
from ..train.parallelize import ParallelConfig
from .common import config_dict

OFFICIAL_UMT5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"


@dataclass(frozen=True)
class WanTeacherConfig:
    root: str = ""
    dit: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    vae: str = ""
    video: VideoSize = field(default_factory=lambda: VideoSize(81, 480, 832))
    sample: Euler = field(default_factory=lambda: Euler(steps=50, cfg=5.0, shift=5.0))
    max_len: int = 512            # umT5 context length (Wan: 512)
    text_dtype: str = "bf16"      # the umT5 encoder's dtype (bf16 as Wan; fp32 for tiny CPU tests)
    vae_dtype: str = "bfloat16"   # the VAE's
    clean: str = "wan"            # prompt cleaning (models/text/umt5.py): wan | whitespace | none
    num_heads: int = 0            # 0: from the checkpoint's config.json, else dim / 128 (Wan2.1)


WAN_PRESETS = ("wan2.1-1.3b", "wan2.1-14b", "wan-tiny")


def wan_parallel(name: str, ac: str = "selective") -> ParallelConfig:
    """How the Wan presets' networks run: FSDP2 over the processes, checkpointed and compiled blocks, the
    teacher-forcing mask as dense cuDNN attention pieces (the fastest measured, docs/benchmarks.md).
    Selective checkpointing needs a 141 GB card for one TF iteration of 1.3B at 480p on one GPU; on 80 GB
    cards set parallel.ac=full. The tiny CPU preset runs plainly."""
    if name == "wan-tiny":
        return ParallelConfig()
    return ParallelConfig(ac=ac, compile=True, attention="split", sdpa="cudnn")


def wan_teacher_preset(name: str) -> WanTeacherConfig:
    if name in ("wan2.1-1.3b", "wan2.1-14b"):
        return WanTeacherConfig()
    if name == "wan-tiny":  # the CPU test of the pipeline: tiny random parts of the same classes
        return WanTeacherConfig(video=VideoSize(17, 32, 48), sample=Euler(steps=4, cfg=5.0, shift=5.0), max_len=24,
                                text_dtype="fp32", vae_dtype="float32", clean="whitespace")
    raise ValueError(f"unknown wan_teacher preset {name!r}; choose wan2.1-1.3b, wan2.1-14b or wan-tiny")


def resolve(preset_name: str, overrides: list[str]) -> WanTeacherConfig:
    return apply_overrides(wan_teacher_preset(preset_name), overrides)


def wan_parts(cfg: WanTeacherConfig) -> dict[str, Path]:
    """The four parts' paths (``dit``, ``text_encoder``, ``tokenizer``, ``vae``) from ``root`` and the
    parts given alone; FileNotFoundError naming what is missing and where it was looked for."""
    parts: dict[str, str] = {}
    if cfg.root:
        root = Path(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"root={root}: no such folder (a diffusers or official Wan2.1 folder)")
        if (root / "transformer").is_dir():  # diffusers
            parts = {k: str(root / k) for k in ("text_encoder", "tokenizer", "vae")}
            parts["dit"] = str(root / "transformer")
        elif (root / OFFICIAL_UMT5).is_file():
            parts = {"dit": str(root), "text_encoder": str(root / OFFICIAL_UMT5),
                     "tokenizer": str(root / OFFICIAL_TOKENIZER)}
        else:
            raise FileNotFoundError(f"root={root} holds neither diffusers' transformer/ folder nor Wan's official "
                                    f"{OFFICIAL_UMT5}: not a Wan2.1 folder")
    for k in ("dit", "text_encoder", "tokenizer", "vae"):
        if getattr(cfg, k):
            parts[k] = getattr(cfg, k)
    missing = [k for k in ("dit", "text_encoder", "tokenizer", "vae") if k not in parts]
    if missing:
        hint = (" (Wan's official Wan2.1_VAE.pth is not diffusers' format: give vae= the vae/ folder of "
                "Wan-AI/Wan2.1-T2V-1.3B-Diffusers)" if "vae" in missing and cfg.root else "")
        raise FileNotFoundError(f"the Wan2.1 teacher needs {missing}: give root= or each part{hint}")
    for k, p in parts.items():
        if not Path(p).exists():
            raise FileNotFoundError(f"{k}: nothing at {p}")
    return {k: Path(v) for k, v in parts.items()}


def _vae_config(path: Path) -> dict:
    import json

    f = path / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"vae={path} is not a diffusers AutoencoderKLWan folder (no config.json)")
    c = json.loads(f.read_text())
    if c.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise ValueError(f"vae={path} holds a {c['_class_name']}, not an AutoencoderKLWan")
    return c


def _umt5_width(path: Path) -> int:
    """d_model of the umT5 weights (their embedding's width), read without building the encoder."""
    from ..models.text.umt5 import EMBED, read_weights

    sd, _ = read_weights(path)
    return int(sd[EMBED].shape[1])


def _checkpoint_dtype(files) -> torch.dtype:
    """The floating dtype of a safetensors checkpoint's tensors (Wan2.1-1.3B: fp32; 14B: bf16)."""
    from safetensors import safe_open

    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    with safe_open(str(files[0]), framework="pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys()}
    floats = [names[k] for k in ("F32", "BF16", "F16") if k in kinds]
    return floats[0] if floats else torch.float32


def import_wan_teacher(cfg: WanTeacherConfig, run_dir: str | Path) -> Path:
    """Check the parts fit, write RUN/teacher.safetensors (the DiT's tensors, the rest by reference)."""
    parts = wan_parts(cfg)
    net_cfg, files = wan_files_config(parts["dit"], cfg.num_heads or None)
    vae = _vae_config(parts["vae"])
    z_dim = int(vae.get("z_dim", 16))
    if net_cfg.in_dim != z_dim or net_cfg.out_dim != z_dim:
        raise ValueError(f"the DiT takes {net_cfg.in_dim} channels, the VAE at {parts['vae']} makes {z_dim}")
    width = _umt5_width(parts["text_encoder"])
    if width != net_cfg.text_dim:
        raise ValueError(f"the DiT's text input is {net_cfg.text_dim} wide, the umT5 encoder at "
                         f"{parts['text_encoder']} gives {width}")
    v, (pt, ph, pw) = cfg.video, net_cfg.patch_size
    if (v.frames - 1) % 4 or v.height % (8 * ph) or v.width % (8 * pw):
        raise ValueError(f"video {v.frames}x{v.height}x{v.width}: Wan2.1 needs 1 + 4k frames and a height and "
                         f"width divisible by {8 * ph} and {8 * pw} (the VAE's 8x and the patch's strides)")
    run_dir = Path(run_dir)
    check_dir_writable(run_dir, "run folder")
    with torch.device("meta"):
        net = WanDiT(net_cfg)
    net = net.to_empty(device="cpu").to(_checkpoint_dtype(files))  # as stored: no rounding, no wider copy
    load_into(net, files, rename=to_wan_names)
    te = {"kind": "umt5", "path": str(parts["text_encoder"].resolve()), "tokenizer": str(parts["tokenizer"].resolve()),
          "max_len": cfg.max_len, "dtype": cfg.text_dtype, "clean": cfg.clean}
    config = {"kind": "teacher", "model": net_cfg.to_dict(), "text_encoder": te, "world": None,
              "video": dataclasses.asdict(cfg.video), "sampling": to_dict(cfg.sample),
              "codec": {"kind": "wan_vae", "path": str(parts["vae"].resolve()), "dtype": cfg.vae_dtype},
              "source": {k: str(p) for k, p in parts.items()}}
    write_json(run_dir / "config.json", {"stage": "wan_teacher", **config_dict(cfg)})
    return save_bundle(run_dir / "teacher.safetensors", {"net": net}, config)


def run_wan_teacher(cfg: WanTeacherConfig, run_dir: str | Path) -> Path:
    """``import_wan_teacher`` on rank 0 (every process returns the bundle's path once it is written)."""
    path = Path(run_dir) / "teacher.safetensors"
    return D.on_main(lambda: path if path.is_file() else import_wan_teacher(cfg, run_dir))
