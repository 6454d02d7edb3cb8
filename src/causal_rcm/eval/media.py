"""Video grids as GIF / MP4 / PNG filmstrips, for people to look at samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def grid(videos: np.ndarray, cols: int = 8, scale: int = 4, pad: int = 2) -> np.ndarray:
    """uint8 [N, T, H, W, 3] -> [T, rows·(H·s + pad), cols·(W·s + pad), 3], nearest-neighbour upscaled."""
    n, T, H, W, _ = videos.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    big = videos.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = H * scale + pad, W * scale + pad
    out = np.full((T, rows * h + pad, cols * w + pad, 3), 40, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[:, pad + r * h:pad + r * h + H * scale, pad + c * w:pad + c * w + W * scale] = big[i]
    return out


def filmstrip(videos: np.ndarray, frames: int = 7, scale: int = 3, pad: int = 2) -> np.ndarray:
    """One row per video, ``frames`` evenly spaced frames per row: [rows, cols, 3] image."""
    n, T = videos.shape[:2]
    idx = np.linspace(0, T - 1, min(frames, T)).round().astype(int)
    strip = videos[:, idx]  # [n, f, H, W, 3]
    as_grid = grid(strip.reshape(n * len(idx), 1, *videos.shape[2:]), cols=len(idx), scale=scale, pad=pad)
    return as_grid[0]


def write_media(videos: np.ndarray, stem: str | Path, cols: int = 8, fps: int = 8) -> list[Path]:
    """Write ``stem.gif``, ``stem.mp4`` (grid of all videos) and ``stem.png`` (filmstrip)."""
    import imageio.v3 as iio

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    g = grid(videos, cols=cols)
    paths = [stem.with_suffix(".gif"), stem.with_suffix(".png")]
    iio.imwrite(paths[0], g, duration=1000 / fps, loop=0)
    iio.imwrite(paths[1], filmstrip(videos[:16]))
    try:
        mp4 = stem.with_suffix(".mp4")
        # H.264 in yuv420p wants even sides (the encoder crops its 16-pixel macro blocks itself): pad an odd
        # side with the grid's border colour instead of letting the writer resize, so the MP4 is the GIF's size
        ph, pw = g.shape[1] % 2, g.shape[2] % 2
        padded = np.pad(g, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=40)
        iio.imwrite(mp4, padded, fps=fps, codec="libx264", macro_block_size=2)
        paths.append(mp4)
    except Exception as e:  # ffmpeg missing or refused: the GIF and PNG still carry the samples
        print(f"note: could not write {stem.with_suffix('.mp4')} ({e}); wrote GIF and PNG")
    return paths
