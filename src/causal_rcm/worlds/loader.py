"""Endless, resumable training batches rendered on the fly by DataLoader workers.

Batch ``step`` holds samples [step·B, (step + 1)·B) of the world stream ``seed``; a process of a
distributed run renders its share ``ids`` of them. A resumed run sees exactly the batches it would have
seen, whatever the number of workers or processes.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .base import WorldConfig
from .registry import make_world


class WorldBatches(IterableDataset):
    def __init__(self, world: WorldConfig, batch: int, seed: int, start_step: int = 0, ids: range | None = None):
        self.world, self.batch, self.seed, self.start = world, batch, seed, start_step
        self.ids = ids if ids is not None else range(batch)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        world = make_world(self.world)
        step = self.start + wid
        while True:
            s = world.sample(len(self.ids), self.seed, start=step * self.batch + self.ids.start)
            item = {"step": step, "videos": torch.from_numpy(s["videos"]), "prompts": s["prompts"]}
            if "actions" in s:
                item["actions"] = torch.from_numpy(s["actions"])
            yield item
            step += nw


def world_loader(world: WorldConfig, batch: int, seed: int, start_step: int, num_workers: int,
                 ids: range | None = None):
    ds = WorldBatches(world, batch, seed, start_step, ids)
    return iter(DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                           prefetch_factor=4 if num_workers > 0 else None))
