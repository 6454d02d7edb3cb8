"""Attention masks over latent frames (METHOD.md §2).

Every mask here is frame-granular: all tokens of a frame share one visibility row, so a mask is fully
described by a rule ``visible(query_frame, key_frame)`` on frame indices. The same rule drives
``frame_mask`` (tests, CPU path), FlexAttention's ``mask_mod`` (GPU path) and the Triton JVP kernel, which
re-states it with integer arithmetic (``kernel_args``).

Frame indices count the frames of the sequence the mask applies to. ``num_frames`` is always the number
of frames of the *video* (T): for the teacher-forcing layout the sequence holds 2T frames
([clean T | noisy T]) and ``dense`` returns a [2·T·N, 2·T·N] matrix.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from .kv_policy import KVPolicy

# Integer codes shared with the Triton kernel (constexpr MASK_KIND); NO_MASK is plain dense attention.
NO_MASK, BLOCK_CAUSAL, TEACHER_FORCING = 0, 1, 2


@dataclass(frozen=True)
class ChunkPattern:
    """Block 0 holds ``first`` frames, every later block ``chunk`` frames (named ``c{first}-{chunk}``)."""

    first: int
    chunk: int

    def __post_init__(self):
        if self.first < 1 or self.chunk < 1:
            raise ValueError(f"ChunkPattern needs first >= 1 and chunk >= 1, got ({self.first}, {self.chunk})")

    @classmethod
    def parse(cls, name: str | "ChunkPattern") -> "ChunkPattern":
        if isinstance(name, ChunkPattern):
            return name
        m = re.fullmatch(r"c(\d+)-(\d+)", str(name).strip())
        if not m:
            raise ValueError(f"chunk pattern {name!r} is not of the form 'c<first>-<chunk>' (e.g. c1-1, c3-3, c1-4)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def name(self) -> str:
        return f"c{self.first}-{self.chunk}"

    def check(self, num_frames: int) -> None:
        if num_frames < self.first or (num_frames - self.first) % self.chunk:
            raise ValueError(
                f"{num_frames} frames do not split into chunk pattern {self.name}: "
                f"need first={self.first} frames plus a multiple of {self.chunk}")

    def num_blocks(self, num_frames: int) -> int:
        self.check(num_frames)
        return 1 + (num_frames - self.first) // self.chunk

    def block_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Block index of each frame index (works on tensors inside FlexAttention's mask_mod too)."""
        later = (frames - self.first).div(self.chunk, rounding_mode="floor") + 1
        return torch.where(frames < self.first, torch.zeros_like(frames), later)

    def block_bounds(self, b: int) -> tuple[int, int]:
        """[start, end) frame range of block b."""
        if b == 0:
            return 0, self.first
        start = self.first + (b - 1) * self.chunk
        return start, start + self.chunk

    def blocks(self, num_frames: int) -> list[tuple[int, int]]:
        return [self.block_bounds(b) for b in range(self.num_blocks(num_frames))]


C1_1, C3_3, C1_4 = ChunkPattern(1, 1), ChunkPattern(3, 3), ChunkPattern(1, 4)


class Mask(ABC):
    """A frame-granular attention mask. Subclasses state ``visible`` (and ``copies`` for packed layouts)."""

    pattern: ChunkPattern
    kind: ClassVar[int]
    copies: ClassVar[int] = 1  # copies of the video packed along the frame axis (2 for teacher forcing)

    def seq_frames(self, num_frames: int) -> int:
        """Frames in the attended sequence for a video of ``num_frames`` frames."""
        self.pattern.check(num_frames)
        return self.copies * num_frames

    def video_frames(self, seq_frames: int) -> int:
        """Inverse of ``seq_frames``: the video's frame count T for a sequence of ``seq_frames`` frames."""
        if seq_frames % self.copies:
            raise ValueError(f"{type(self).__name__} needs a multiple of {self.copies} frames, got {seq_frames}")
        T = seq_frames // self.copies
        self.pattern.check(T)
        return T

    def frame_positions(self, num_frames: int, device=None) -> torch.Tensor:
        """Temporal RoPE position of each sequence frame: every packed copy restarts at 0."""
        return torch.arange(num_frames, device=device).repeat(self.copies)

    @abstractmethod
    def visible(self, qf: torch.Tensor, kf: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Bool: may query frame ``qf`` attend to key frame ``kf`` (broadcasting frame-index tensors)."""

    def frame_mask(self, num_frames: int, device=None) -> torch.Tensor:
        """Bool [F, F] over the frames of the sequence (F = seq_frames(num_frames))."""
        f = torch.arange(self.seq_frames(num_frames), device=device)
        return self.visible(f[:, None], f[None, :], num_frames)

    def dense(self, frame_tokens: int, num_frames: int, device=None) -> torch.Tensor:
        """Bool [Lq, Lk] token mask (True = may attend), L = seq_frames · frame_tokens."""
        fm = self.frame_mask(num_frames, device)
        return fm.repeat_interleave(frame_tokens, 0).repeat_interleave(frame_tokens, 1)

    def mask_mod(self, frame_tokens: int, num_frames: int, q_offset: int = 0):
        """FlexAttention mask_mod on token indices; ``q_offset`` tokens of cached keys precede the queries."""

        def mod(b, h, q_idx, kv_idx):
            return self.visible((q_idx + q_offset) // frame_tokens, kv_idx // frame_tokens, num_frames)

        return mod

    def kernel_args(self, num_frames: int) -> dict:
        """Integer description for the Triton kernel: it re-states ``visible`` with these numbers."""
        return dict(MASK_KIND=self.kind, FIRST=self.pattern.first, CHUNK=self.pattern.chunk,
                    NUM_FRAMES=num_frames, WINDOW=0, SINK=0)


@dataclass(frozen=True)
class BlockCausal(Mask):
    """Query block b sees the key blocks its KV policy allows: j <= b; with a window W only j > b − W, plus
    the sink blocks j < S (``kv_policy.py``, shared with the KV cache)."""

    pattern: ChunkPattern
    policy: KVPolicy = KVPolicy()
    kind: ClassVar[int] = BLOCK_CAUSAL

    def visible(self, qf, kf, num_frames):
        return self.policy.sees(self.pattern.block_of(qf), self.pattern.block_of(kf))

    def kernel_args(self, num_frames):
        args = super().kernel_args(num_frames)
        args.update(WINDOW=self.policy.window or 0, SINK=self.policy.sink)
        return args


@dataclass(frozen=True)
class TeacherForcing(Mask):
    """Packed [clean T | noisy T]: clean block i sees clean blocks <= i; noisy block i sees clean
    blocks < i and its own noisy block."""

    pattern: ChunkPattern
    kind: ClassVar[int] = TEACHER_FORCING
    copies: ClassVar[int] = 2

    def visible(self, qf, kf, num_frames):
        T = num_frames
        q_noisy, k_noisy = qf >= T, kf >= T
        bq = self.pattern.block_of(torch.where(q_noisy, qf - T, qf))
        bk = self.pattern.block_of(torch.where(k_noisy, kf - T, kf))
        clean_q = ~q_noisy & ~k_noisy & (bk <= bq)
        noisy_q = q_noisy & ((~k_noisy & (bk < bq)) | (k_noisy & (bk == bq)))
        return clean_q | noisy_q


def from_kernel_args(MASK_KIND: int, FIRST: int, CHUNK: int, WINDOW: int = 0, SINK: int = 0, **_) -> Mask:
    """The mask an integer description (``Mask.kernel_args``) stands for: its inverse."""
    pattern = ChunkPattern(FIRST, CHUNK)
    if MASK_KIND == BLOCK_CAUSAL:
        return BlockCausal(pattern, KVPolicy(WINDOW or None, SINK))
    if MASK_KIND == TEACHER_FORCING:
        return TeacherForcing(pattern)
    raise ValueError(f"no frame mask has kind {MASK_KIND}")


def block_causal(pattern, window: int | None = None, sink: int = 0) -> BlockCausal:
    return BlockCausal(ChunkPattern.parse(pattern), KVPolicy(window, sink))


def teacher_forcing(pattern) -> TeacherForcing:
    return TeacherForcing(ChunkPattern.parse(pattern))
