from .base import World, WorldConfig
from .registry import make_world
from .samples import load_samples, save_samples

__all__ = ["World", "WorldConfig", "make_world", "load_samples", "save_samples"]
