"""Text conditioning for built-in worlds.

``TextEncoder`` is the interface the rest of the project uses: ``encode(prompts) -> [B, Lc, text_dim]``,
with the empty prompt as the unconditional input for CFG. ``WorldTextEncoder`` implements it for worlds
with a closed vocabulary (Blobworld): a word tokenizer, an embedding and a few pre-norm transformer
layers, trained together with the teacher. A frozen umT5 implements the same interface at Wan scale
(its padded positions are zero, as Wan pads its 512 context tokens with zeros; so are ours).
"""
from __future__ import annotations

import re
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn as nn


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
