"""Endless, resumable training batches rendered on the fly by DataLoader workers.

Batch ``step`` is rendered from the world stream ``seed`` at samples [step·B, (step + 1)·B), so a resumed
run sees exactly the batches it would have seen, whatever the number of workers.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..stages.common import WorldConfig


class WorldBatches(IterableDataset):
    def __init__(self, world: WorldConfig, batch: int, seed: int, start_step: int = 0):
        self.world, self.batch, self.seed, self.start = world, batch, seed, start_step

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start + wid
        while True:
            s = self.world.sample(self.batch, self.seed, start=step * self.batch)
            item = {"videos": torch.from_numpy(s["videos"]), "prompts": s["prompts"]}
            if "actions" in s:
                item["actions"] = torch.from_numpy(s["actions"])
            yield item
            step += nw


def world_loader(world: WorldConfig, batch: int, seed: int, start_step: int, num_workers: int):
    ds = WorldBatches(world, batch, seed, start_step)
    return iter(DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                           prefetch_factor=4 if num_workers > 0 else None))
