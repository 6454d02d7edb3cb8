"""The built-in worlds by name: ``make_world(cfg)`` checks a ``WorldConfig`` and builds its world.

Each entry imports its world lazily (Atari needs the emulator, Blobworld does not), so asking for one world
never loads another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import World, WorldConfig


@dataclass(frozen=True)
class WorldEntry:
    """A registered world: ``build(cfg) -> World`` and ``check(cfg)`` (raises ValueError naming the fix)."""

    build: Callable[[WorldConfig], World]
    check: Callable[[WorldConfig], None]


def _blobworld_build(cfg: WorldConfig) -> World:
    from .blob import Blobworld

    return Blobworld(cfg)


def _blobworld_check(cfg: WorldConfig) -> None:
    from .blobworld import VARIANTS

    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown Blobworld variant {cfg.variant!r}; choose one of {VARIANTS}")


def _atari_build(cfg: WorldConfig) -> World:
    from .atari import build

    return build(cfg)


def _atari_check(cfg: WorldConfig) -> None:
    from .atari import check

    check(cfg)


WORLDS: dict[str, WorldEntry] = {"blobworld": WorldEntry(_blobworld_build, _blobworld_check),
                                 "atari": WorldEntry(_atari_build, _atari_check)}


def check_world(cfg: WorldConfig) -> WorldConfig:
    if cfg.name not in WORLDS:
        raise ValueError(f"unknown world {cfg.name!r}; built-in worlds: {sorted(WORLDS)}")
    WORLDS[cfg.name].check(cfg)
    return cfg


def make_world(cfg: WorldConfig | dict) -> World:
    if isinstance(cfg, dict):
        cfg = WorldConfig.from_dict(cfg)
    return WORLDS[check_world(cfg).name].build(cfg)
