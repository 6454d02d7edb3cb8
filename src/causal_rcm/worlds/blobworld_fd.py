"""Blob-FD (method review, M2): a Fréchet distance between per-video state features of two sets of Blobworld
videos, fidelity and diversity in one number with no pretrained network.

Per video and colour (the palette, plus the agent's white in the agent variant), from the frame statistics
of spec §4: the fraction of frames the colour is present, its mean radius, its mean speed (px / frame), the
unit vector of its mean displacement (cos, sin) and its number of bounces (sign flips of a velocity
component). A colour never present contributes zeros. FD(a, b) = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½).
"""
from __future__ import annotations

import warnings

import numpy as np

FEATURES = 6  # per colour: presence, radius, speed, cos, sin, bounces


def video_features(st) -> np.ndarray:
    """[N, C · 6] features from ``FrameStats`` (blobworld_metrics.frame_stats)."""
    present = st.present                                   # [N, T, C]
    frac = present.mean(axis=1)
    c = st.centroid                                        # [N, T, C, 2]
    both = present[:, 1:] & present[:, :-1]
    step = np.where(both[..., None], c[:, 1:] - c[:, :-1], np.nan)
    with warnings.catch_warnings():  # a colour that never shows has no mean: it becomes zeros below
        warnings.simplefilter("ignore", RuntimeWarning)
        radius = np.nanmean(np.where(present, st.radius, np.nan), axis=1)
        speed = np.nanmean(np.linalg.norm(step, axis=-1), axis=1)
        mean_step = np.nanmean(step, axis=1)               # [N, C, 2]
    norm = np.linalg.norm(mean_step, axis=-1, keepdims=True)
    unit = np.divide(mean_step, norm, out=np.zeros_like(mean_step), where=norm > 1e-6)
    s = np.sign(np.nan_to_num(step))
    flips = ((s[:, 1:] * s[:, :-1]) < 0).sum(axis=(1, 3)).astype(np.float64)   # [N, C]
    feats = np.stack([frac, radius, speed, unit[..., 0], unit[..., 1], flips], axis=-1)   # [N, C, 6]
    return np.nan_to_num(feats).reshape(len(feats), -1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FD between the Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    # a tiny ridge: features of colours a prompt set never shows are constant (zero variance)
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    # tr sqrt(A B) = Σ sqrt(eig(A^½ B A^½)), a symmetric PSD matrix: eigh only (no sqrtm of a non-symmetric
    # product, whose options differ between SciPy versions)
    w, U = np.linalg.eigh(cov_a)
    half = (U * np.sqrt(np.clip(w, 0, None))) @ U.T
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh(half @ cov_b @ half), 0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_root)
