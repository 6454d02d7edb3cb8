"""Random-weight world models of the shipped architectures, for the live-play latency benchmark: latency does
not depend on the weights, only on the architecture, the chunk pattern and the number of steps.

    python benchmarks/play_bundles.py --out /tmp/play_bundles
writes atari-c1-1 (the `atari` preset, Pong 64×64, 1 step per frame), atari-c3-3 (2 steps per chunk of 3,
4 on the first), blob-agent-c1-1 and blob-agent-c3-3 (the `blob-s` preset, Blobworld-agent 32×32).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

import common  # noqa: F401  (puts src on the path)

from causal_rcm.config import preset
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import FewStep
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

WORLDS = {"atari": ("atari", WorldConfig("atari", "Pong", 64, 21)),
          "blob-agent": ("blob-s", WorldConfig("blobworld", "agent", 32, 21))}
SAMPLING = {"c1-1": FewStep("c1-1", 1, 1), "c3-3": FewStep("c3-3", 4, 2)}


def make(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (arch, world) in WORLDS.items():
        w = make_world(world)
        prompts = list(w.prompts()) or ["no prompt"]
        for pattern, sampling in SAMPLING.items():
            torch.manual_seed(0)
            cfg = preset(arch)
            net = WanDiT(dataclasses.replace(cfg, action_dim=len(w.action_names)))
            with torch.no_grad():
                net.head.head.weight.normal_(std=0.02)  # Wan zero-initialises the head
            text = WorldTextEncoder.for_prompts(prompts, dim=cfg.text_dim, num_layers=2, num_heads=4)
            paths.append(Bundle(net, text, sampling, world, "student").save(out / f"{name}-{pattern}.safetensors"))
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/play_bundles")
    for p in make(Path(ap.parse_args().out)):
        print(p)
