"""Files and the terminal: progress bars, JSONL logs, atomic writes and safetensors bundles.

Everything that writes a file the user keeps goes through ``atomic_write``: the bytes land in a temporary
file beside the target, are flushed to disk, then renamed over it, so a kill leaves the old file or the new
one, never half of one.

A *bundle* is one ``.safetensors`` file holding the weights of a few named modules (``net.*``,
``text_encoder.*``, ...) with its JSON config in the file's metadata (and in a ``.json`` beside it, for
people) and a sha256 over its tensors that ``load_bundle`` verifies. Bundles are what ``generate`` loads
and what ships in ``assets/``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm


class BundleError(ValueError):
    """A bundle file that cannot be used (missing, not safetensors, truncated, corrupt, NaN weights)."""


# ----- terminal -----------------------------------------------------------------------------------------
def progress(iterable=None, **kw):
    """tqdm that refreshes often on a terminal and rarely in a log file."""
    kw.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)


def say(message: str) -> None:
    """One line for the user that does not break a progress bar."""
    tqdm.write(message)


# ----- atomic files ---------------------------------------------------------------------------------------
def atomic_write(path: str | Path, data) -> Path:
    """Write ``data`` (bytes, str, or an iterable of byte chunks: never joined in memory) to ``path`` through a
    flushed temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    chunks = [data.encode()] if isinstance(data, str) else [data] if isinstance(data, (bytes, bytearray)) else data
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail before any work if the file ``path`` could not be written: an existing directory there, a file
    where a folder on the way should be, or a folder that refuses writes. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"cannot write {what} {path}: {base} is a file, not a folder")
    _probe(base, what, path)
    return path


def _probe(base: Path, what: str, path: Path) -> None:
    """Write and remove an empty file in ``base``: the only test that holds for root and for file systems
    that refuse writes whatever their permission bits say (/proc, read-only mounts). Leaves nothing."""
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: {base} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".causal-rcm-probe-")
    except OSError as e:
        raise ValueError(f"cannot write {what} {path}: {base} refuses new files ({e.strerror}); "
                         "choose another path") from None
    os.close(fd)
    os.unlink(probe)


def check_dir_writable(path: str | Path, what: str = "output folder") -> Path:
    """The folder ``path`` exists or could be made, and accepts files. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ValueError(f"cannot write {what} {path}: {base} is a file, not a folder")
    _probe(base, what, path)
    return path


# ----- JSONL logs -----------------------------------------------------------------------------------------
class JsonlLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run logs them again) and a torn last line."""
        if not self.path.is_file():
            return
        keep = [json.dumps(r) for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        atomic_write(self.path, "".join(line + "\n" for line in keep))


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# ----- safetensors groups and bundles --------------------------------------------------------------------
def flat_tensors(modules: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``{name: module or state dict}`` -> ``{"name.key": tensor}`` on the CPU, contiguous."""
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


def _raw_bytes(v: torch.Tensor) -> memoryview | bytes:
    """A contiguous CPU tensor's own bytes, without a copy."""
    return memoryview(v.reshape(-1).view(torch.uint8).numpy()) if v.numel() else b""


def _hash_tensor(h, k: str, v: torch.Tensor) -> None:
    v = v.contiguous()
    h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
    h.update(_raw_bytes(v))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        _hash_tensor(h, k, tensors[k])
    return h.hexdigest()


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                      ) -> Path:
    """``tensors`` as a .safetensors file (the format safetensors reads: an 8-byte header length, a JSON header
    of dtype, shape and byte range per tensor, the raw bytes in order), written tensor by tensor through a
    temporary file and a rename. Unlike ``safetensors.torch.save`` / ``save_file`` it never builds the file's
    bytes in memory, so saving a 14B network (28 GB in bf16) needs no second copy of it."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    names, offset = sorted(tensors), 0
    for k in names:
        v = tensors[k]
        if v.dtype not in _ST_DTYPES:
            raise ValueError(f"{k}: dtype {v.dtype} has no safetensors code")
        size = v.numel() * v.element_size()
        header[k] = {"dtype": _ST_DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data start 8-byte aligned, as safetensors writes them
    body = (_raw_bytes(tensors[k].detach().cpu().contiguous()) for k in names)  # one tensor at a time
    return atomic_write(path, itertools.chain([len(head).to_bytes(8, "little") + head], body))


def save_bundle(path: str | Path, modules: dict, config: dict, dtype: torch.dtype | None = None) -> Path:
    path = Path(path)
    tensors = flat_tensors(modules, dtype)
    meta = {"config": json.dumps(config), "tensors_sha256": tensors_sha256(tensors)}
    write_safetensors(path, tensors, meta)
    atomic_write(path.with_suffix(".json"), json.dumps(config, indent=2) + "\n")
    return path


def bundle_header(path: str | Path) -> tuple[dict, dict]:
    """(config, safetensors metadata) of a bundle, reading no tensor; ``BundleError`` when it is no bundle."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise BundleError(f"{path} is a directory; give the bundle's .safetensors file (e.g. {path}/model.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"no bundle at {path}")
    if path.suffix != ".safetensors":
        raise BundleError(f"{path}: expected a .safetensors bundle written by causal-rcm")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BundleError(f"{path} is not a readable safetensors file (truncated or corrupt: {e}); "
                          "re-export or re-download it") from None
    if "config" in meta:
        return json.loads(meta["config"]), meta
    if path.with_suffix(".json").is_file():
        return json.loads(path.with_suffix(".json").read_text()), meta
    raise BundleError(f"{path} carries no config (metadata 'config' or {path.with_suffix('.json').name})")


def check_bundle_tensors(path: str | Path, tensors, meta: dict) -> None:
    """The checksum written with the tensors, and finite weights; ``tensors`` may be a lazy mapping (one
    tensor read at a time)."""
    path = Path(path)
    h, bad, dtype = hashlib.sha256(), [], "fp32"
    for k in sorted(tensors):  # one pass: a lazy mapping reads each tensor once
        v = tensors[k]
        _hash_tensor(h, k, v)
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(k)
        dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(v.dtype, dtype)
    want = meta.get("tensors_sha256")
    if want is None:
        say(f"warning: {path} carries no checksum of its tensors (written before bundles had one), so damage to "
            f"them goes unnoticed; `causal-rcm export {path} --dtype {dtype} --out NEW.safetensors` writes one")
    elif h.hexdigest() != want:
        raise BundleError(f"{path}: its tensors do not match the checksum written with them (the file was "
                          "changed after it was saved); re-export or re-download it")
    if bad:
        raise BundleError(f"{path}: {len(bad)} tensors hold NaN or infinite weights (first: {bad[0]}); the run that "
                          "wrote it diverged: use an earlier checkpoint")


def load_bundle(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(tensor groups, config) of a bundle; ``BundleError`` with one line for every way the file can be bad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, meta = bundle_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BundleError(f"{path} is not a readable safetensors file (truncated or corrupt: {e}); "
                          "re-export or re-download it") from None
    check_bundle_tensors(path, tensors, meta)
    return split_prefixes(tensors), config


def finite_or_none(v):
    """JSON-friendly number: NaN and infinities become None."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
