"""Real video clips with captions, read for training on real data (``stages/encode.py`` turns them into latents).

A clip folder holds ``NAME.mp4`` (or .webm / .mov / .mkv / .gif) with its caption in ``NAME.txt`` beside it,
the layout most captioned video collections ship in. ``read_clip`` gives a clip's first ``frames`` frames as
uint8 [frames, height, width, 3]: scaled so it covers the target size (aspect kept, bilinear with
antialiasing), then centre-cropped; a clip with too few frames is an error naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")


def list_clips(folder: str | Path) -> list[tuple[Path, str]]:
    """(clip, caption) of every clip in the folder, sorted by name; FileNotFoundError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no clip folder at {folder}")
    clips = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise FileNotFoundError(f"{folder} holds no video clips ({', '.join(VIDEO_SUFFIXES)})")
    uncaptioned = [p.name for p in clips if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise FileNotFoundError(f"{len(uncaptioned)} clips have no caption file beside them (NAME.txt): "
                                f"{uncaptioned[:5]}")
    return [(p, " ".join(p.with_suffix(".txt").read_text().split())) for p in clips]


def fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, h, w, 3] → [T, height, width, 3]: scaled to cover, centre-cropped."""
    T, h, w, _ = frames.shape
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clip(path: str | Path, frames: int, height: int, width: int) -> np.ndarray:
    """The clip's first ``frames`` frames, fitted to height × width: uint8 [frames, height, width, 3]."""
    import imageio.v3 as iio

    out = []
    try:
        for f in iio.imiter(str(path)):
            out.append(np.asarray(f)[..., :3])
            if len(out) == frames:
                break
    except Exception as e:  # a broken or unsupported file: name it
        raise ValueError(f"{path}: cannot read it as a video ({type(e).__name__}: {e})") from None
    if len(out) < frames:
        raise ValueError(f"{path} has {len(out)} frames; the model's videos have {frames}")
    return fit(np.stack(out), height, width)
