"""Conditioning: text encoders (the interface and the built-in worlds' encoder) and actions (METHOD.md §7).

``TextEncoder`` is the interface the rest of the project uses: ``encode(prompts) -> [B, Lc, text_dim]``,
with the empty prompt as the unconditional input for CFG. ``WorldTextEncoder`` implements it for worlds
with a closed vocabulary (Blobworld): a word tokenizer, an embedding and a few pre-norm transformer
layers, trained together with the teacher. A frozen umT5 implements the same interface at Wan scale
(its padded positions are zero, as Wan pads its 512 context tokens with zeros; so are ours).

Actions: each latent frame k carries the actions of its pixel frames (a_{k−1} for a pixel world; the s
actions of a temporal stride s, concatenated), as multi-hot keys and optional continuous values; frame 0 and
dropped actions (CFG) carry "no action". ``Actions`` is that per-frame value; ``ActionEmbedding`` turns it
into the vector the DiT adds to each frame's time embedding, zero at initialisation so that an action-free
teacher's weights start an action-conditioned model unchanged.
"""
from __future__ import annotations

import re
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import numpy as np

import torch
import torch.nn as nn

from ..runtime import to_device


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab: tuple[str, ...] = ()
    max_len: int = 16
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4

    @classmethod
    def from_dict(cls, d: dict) -> "TextEncoderConfig":
        return cls(**{**d, "vocab": tuple(d.get("vocab", ()))})

    def to_dict(self) -> dict:
        return dict(vocab=list(self.vocab), max_len=self.max_len, dim=self.dim, num_layers=self.num_layers,
                    num_heads=self.num_heads)


def split_words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|,", prompt.lower())


class TextEncoder(nn.Module, metaclass=ABCMeta):
    """Interface: prompts -> context embeddings [B, Lc, text_dim]; '' is the unconditional prompt."""

    text_dim: int

    @abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Context embeddings [B, Lc, text_dim] of the prompts."""


class WorldTextEncoder(TextEncoder):
    PAD = "<pad>"

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if not cfg.vocab:
            raise ValueError("a world text encoder needs the world's vocabulary")
        self.cfg = cfg
        self.text_dim = cfg.dim
        self.index = {w: i + 1 for i, w in enumerate(cfg.vocab)}  # 0 is padding
        self.embed = nn.Embedding(len(cfg.vocab) + 1, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, 4 * cfg.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    @classmethod
    def for_prompts(cls, prompts: list[str], **kw) -> "WorldTextEncoder":
        vocab = sorted({w for p in prompts for w in split_words(p)})
        return cls(TextEncoderConfig(vocab=tuple(vocab), **kw))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.cfg.max_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = split_words(p)
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(f"prompt {p!r} has words outside this world's vocabulary: {unknown}; "
                                 f"known words: {sorted(self.index)}")
            if len(words) > self.cfg.max_len:
                raise ValueError(f"prompt {p!r} has {len(words)} tokens, more than max_len={self.cfg.max_len}")
            ids[i, :len(words)] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        # An all-padding row (the empty prompt) would make the key mask empty: let it attend to itself.
        key_pad = pad & ~pad.all(dim=1, keepdim=True)
        h = self.norm(self.layers(h, src_key_padding_mask=key_pad))
        return h * (~pad)[..., None].to(h.dtype)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts).to(self.pos.device))


# ----- actions --------------------------------------------------------------------------------------------
@dataclass
class Actions:
    """Per-latent-frame action input: ``features`` [B, F, K] (multi-hot keys, then continuous values) and
    ``valid`` [B, F] bool (False: "no action", the learned null embedding)."""

    features: torch.Tensor
    valid: torch.Tensor

    @property
    def frames(self) -> int:
        return self.features.shape[1]

    def frames_slice(self, start: int, end: int) -> "Actions":
        return Actions(self.features[:, start:end], self.valid[:, start:end])

    def to(self, device) -> "Actions":
        return Actions(to_device(self.features, device), to_device(self.valid, device))

    @staticmethod
    def cat(items: list["Actions"], dim: int = 0) -> "Actions":
        return Actions(torch.cat([a.features for a in items], dim), torch.cat([a.valid for a in items], dim))

    def dropped(self) -> "Actions":
        """Every frame "no action" (the unconditional branch of CFG)."""
        return Actions(torch.zeros_like(self.features), torch.zeros_like(self.valid))

    def drop(self, keep: torch.Tensor) -> "Actions":
        """Samples with ``keep`` [B] False lose their actions (CFG dropout in training)."""
        return Actions(self.features * keep[:, None, None].to(self.features.dtype), self.valid & keep[:, None])


def frame_action_ids(ids, frames: int, stride: int = 1) -> np.ndarray:
    """Integer actions of pixel frames → the actions each latent frame carries (METHOD.md §7).

    ``ids`` int [B, P − 1]: a_j moves pixel frame j to j + 1. Latent frame 0 carries none; latent frame
    k ≥ 1 stands for pixel frames 1 + s(k − 1) … s·k and carries a_{s(k−1)} … a_{sk−1}. Returns int64
    [B, frames, s] with −1 where there is no action (frame 0, and actions not received yet at the end).
    """
    a = np.asarray(ids)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"actions must be integers [B, frames − 1], got {a.dtype} {a.shape}")
    B, P1 = a.shape
    out = np.full((B, frames, stride), -1, dtype=np.int64)
    for k in range(1, frames):
        lo, hi = stride * (k - 1), stride * k
        if hi > P1:
            break
        out[:, k] = a[:, lo:hi]
    return out


def encode_actions(groups, num_actions: int, device=None) -> Actions:
    """Per-latent-frame action ids [B, F, s] (−1: none) → one-hot features [B, F, s·num_actions]; a frame is
    valid when all its s actions are known."""
    g = torch.as_tensor(np.asarray(groups), dtype=torch.long)
    if g.ndim != 3:
        raise ValueError(f"action groups must be [B, frames, stride], got shape {tuple(g.shape)}")
    if g.numel() and (int(g.max()) >= num_actions or int(g.min()) < -1):
        raise ValueError(f"actions must lie in 0..{num_actions - 1}, got {int(g.min())}..{int(g.max())}")
    B, F, s = g.shape
    onehot = torch.nn.functional.one_hot(g.clamp(min=0), num_actions).float() * (g >= 0)[..., None]
    if device is None:
        return Actions(onehot.reshape(B, F, s * num_actions), (g >= 0).all(-1))
    return Actions(to_device(onehot.reshape(B, F, s * num_actions), device), to_device((g >= 0).all(-1), device))


class ActionEmbedding(nn.Module):
    """e_a = MLP(features) on frames with actions, the learned null vector elsewhere; zero-initialised
    (last layer and null vector), so the model starts as the action-free network it came from."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        with torch.no_grad():
            self.null.zero_()

    def forward(self, actions: Actions) -> torch.Tensor:
        """[B, F, K] features, [B, F] valid → [B, F, D]."""
        dtype = self.mlp[0].weight.dtype
        e = self.mlp(actions.features.to(dtype))
        return torch.where(actions.valid[..., None], e, self.null.to(e.dtype))
