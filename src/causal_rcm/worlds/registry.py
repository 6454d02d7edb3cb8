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


def choose_prompts(world: World, n: int, prompt: str | None = None, per_prompt: int | None = None,
                   unconditional: bool = False) -> list[str]:
    """The prompts of ``n`` samples: "" for the unconditional model or a world without prompts, ``prompt``
    for all, ``per_prompt`` samples each of the world's evaluation prompts, or else its prompts in turn.
    A prompt the world does not know is refused with the list of valid ones."""
    if unconditional:
        return [""] * n
    if prompt is not None:
        prompts = [prompt] * n
    elif not world.prompts():
        return [""] * n
    elif per_prompt:
        prompts = [p for p in world.eval_prompts(max(1, n // per_prompt)) for _ in range(per_prompt)]
    else:
        prompts = [world.prompts()[i % len(world.prompts())] for i in range(n)]
    bad = sorted({p for p in prompts if p and p not in world.prompts()}) if world.prompts() else []
    if bad:
        raise ValueError(f"prompt {bad[0]!r} is not a {world.config.name} {world.config.variant} prompt; valid: "
                         + ", ".join(repr(x) for x in world.prompts()))
    return prompts
