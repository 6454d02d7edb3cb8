"""Jobs the multi-process tests run on every rank under ``torchrun`` (CPU, gloo): ``python -m
torch.distributed.run --nproc-per-node 2 tests/distributed_jobs.py JOB ASSETS OUT [SINGLE]``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from distributed_setup import RUNS, SHARDED_ONLY, stage_config, train


def runs(assets: Path, out: Path) -> None:
    """The TF (2 micro-batches per rank, clipped), TF-sCM (with an evaluation) and SF-DMD stages, 3 steps
    each, FSDP2 over the ranks."""
    for stage, overrides in RUNS.items():
        train(stage, stage_config(stage, assets, *overrides, *SHARDED_ONLY.get(stage, [])), out / stage)


def units(assets: Path, out: Path) -> None:
    """FSDP2 against the whole network on every rank: forward, forward_jvp, gradients (plain and checkpointed),
    sharded loading; rank 0 writes the largest differences to OUT/units.json."""
    import torch
    from torch.distributed.tensor import DTensor

    from causal_rcm.masks import ChunkPattern, teacher_forcing
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.train import distributed as D
    from causal_rcm.train.parallelize import ParallelConfig
    from causal_rcm.train.placement import Placement

    from safetensors.torch import save_file

    D.init_from_env(torch.device("cpu"))
    path = assets / "causal.safetensors"
    whole = Bundle.load(path, trainable=True).net
    if D.is_main():  # the same weights as an official-layout checkpoint in two shard files
        sd = {k: v.contiguous() for k, v in whole.state_dict().items()}
        keys = sorted(sd)
        (out / "wan").mkdir()
        for i, part in enumerate((keys[::2], keys[1::2])):
            save_file({k: sd[k] for k in part}, str(out / "wan" / f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"))
        (out / "wan" / "config.json").write_text(json.dumps({"num_attention_heads": whole.cfg.num_heads}))
    D.barrier()
    report = {}
    for ac in ("none", "full", "selective"):
        place = Placement(ParallelConfig(ac=ac), torch.device("cpu"))
        net = place.load_bundle(str(path), "init", trainable=True).net
        if ac == "none":  # sharded loading: every tensor equals the file's (a bundle; Wan files in two shards)
            full = place.full_state_dict(net)
            ref = whole.state_dict()
            wan = place.full_state_dict(place.load_wan(out / "wan"))
            if D.is_main():
                report["load"] = max((full[k] - ref[k]).abs().max().item() for k in ref)
                report["load_wan"] = max((wan[k] - ref[k]).abs().max().item() for k in ref)
        g = torch.Generator().manual_seed(D.rank())  # different data per rank: gradients are averaged
        x = torch.randn(2, 3, 10, 16, 16, generator=g)
        t = torch.rand(2, 10, generator=g)
        ctx = torch.randn(2, 4, whole.cfg.text_dim, generator=g)
        mask = teacher_forcing(ChunkPattern.parse("c1-4"))
        xs, ts = x[:, :, :5].repeat(1, 1, 2, 1, 1), torch.cat([torch.zeros(2, 5), t[:, 5:]], 1)
        loss = net(xs, ts, ctx, mask=mask).square().mean()
        loss.backward()
        ref_loss = whole(xs, ts, ctx, mask=mask).square().mean()
        whole.zero_grad()
        ref_loss.backward()
        grads = {k: p.grad.clone() for k, p in whole.named_parameters()}
        for k in grads:  # the gradient FSDP2 averages over the ranks
            torch.distributed.all_reduce(grads[k])
            grads[k] /= D.world_size()
        mine = {k: p.grad.full_tensor() for k, p in net.named_parameters()}
        report[f"grad_{ac}"] = max((mine[k] - grads[k]).abs().max().item() / (grads[k].abs().max().item() + 1e-30)
                                   for k in grads)
        report[f"loss_{ac}"] = abs(loss.item() - ref_loss.item())
        if ac == "none":
            with torch.no_grad(), place.gathered(net):  # blocks stay gathered across calls, then reshard
                net(xs, ts, ctx, mask=mask)
                report["gathered"] = not any(isinstance(p, DTensor) for p in net.blocks.parameters())
            report["resharded"] = all(isinstance(p, DTensor) for p in net.parameters())
            x_dot = torch.randn(2, 3, 5, 16, 16, generator=g)
            with torch.no_grad():
                v, v_dot = net.forward_jvp(xs, ts, ctx, x_dot, torch.ones(2, 5), mask=mask,
                                           tangent_from=5)
                v0, v0_dot = whole.forward_jvp(xs, ts, ctx, x_dot, torch.ones(2, 5), mask=mask,
                                               tangent_from=5)
            report["jvp"] = max((v - v0).abs().max().item(), (v_dot - v0_dot).abs().max().item())
    if D.is_main():
        (out / "units.json").write_text(json.dumps(report))


def resume(assets: Path, out: Path, single: Path) -> None:
    """A one-process (safetensors) SF-DMD checkpoint at step 2 resumed on the ranks: OUT/resumed_sf_dmd."""
    import shutil

    from causal_rcm.train import distributed as D

    run = out / "resumed_sf_dmd"
    if D.is_main():
        shutil.copytree(single / "sf_dmd", run)
        shutil.rmtree(run / "checkpoints" / f"step_{3:08d}")
        (run / "model.safetensors").unlink()
    D.barrier()
    train("sf_dmd", stage_config("sf_dmd", assets, *RUNS["sf_dmd"]), run)


def all_jobs(assets: Path, out: Path, single: Path) -> None:
    units(assets, out)
    runs(assets, out)
    resume(assets, out, single)


JOBS = {"runs": runs, "units": units, "resume": resume, "all": all_jobs}

if __name__ == "__main__":
    import torch

    from causal_rcm.train import distributed as D

    D.init_from_env(torch.device("cpu"))
    JOBS[sys.argv[1]](*map(Path, sys.argv[2:]))
