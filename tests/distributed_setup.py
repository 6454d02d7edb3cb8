"""What the multi-process tests share with the jobs they start under torchrun (``distributed_jobs.py``):
the tiny bundles and dataset, and the cut-down stage configs (3 steps, a log record and checkpoints along)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# the stages both sides train, with their overrides (TF-sCM: a 2-block student of the 3-block init, and an
# evaluation of the EMA); ``SHARDED_ONLY`` applies under torchrun alone (one process takes the whole batch in
# one pass: the same global batch either way)
RUNS = {"tf": ["train.grad_clip=1e-3"],
        "tf_scm": ["student_layers=[0,2]", "train.eval_every=3", "eval.prompts=1", "eval.per_prompt=2", "eval.batch=2"],
        "sf_dmd": []}
SHARDED_ONLY = {"tf": ["parallel.grad_accum=2"]}


def make_assets(root: Path) -> Path:
    """Blob-tiny teacher, causal teacher and student bundles (random weights, non-zero head) and an 8-video
    synthetic dataset drawn from the teacher."""
    from causal_rcm.stages.synth import SynthConfig, run_synth
    from causal_rcm.stages.teacher import build_teacher, teacher_preset
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.stream.sampling import Euler, EulerCFG, FewStep

    cfg = teacher_preset("blob-tiny")
    kinds = {"teacher": (Euler(steps=2), "teacher"), "causal": (EulerCFG("c1-4", 2), "causal_teacher"),
             "student": (FewStep("c1-4", 2, 2), "student")}
    for seed, (name, (sampling, kind)) in enumerate(kinds.items()):
        torch.manual_seed(seed)
        net, text = build_teacher(cfg)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        Bundle(net, text, sampling, cfg.world, kind).save(root / f"{name}.safetensors")
    run_synth(SynthConfig(teacher=str(root / "teacher.safetensors"), n=8, steps=2, batch=8), root / "synth",
              device="cpu", progress=False)
    return root


def stage_config(stage: str, assets: Path, *overrides: str):
    """The cut-down config of ``stage`` (tf, tf_scm, sf_dmd) on the tiny assets."""
    common = [f"train.steps={STEPS}", "train.batch=4", "train.log_every=1", "train.ckpt_every=2",
              "train.eval_every=0", "train.warmup=1", *overrides]
    if stage == "sf_dmd":
        from causal_rcm.stages.sf_dmd import resolve

        return resolve("blob-tiny", [f"init={assets / 'student.safetensors'}", f"teacher={assets / 'teacher.safetensors'}",
                                     "critic_ratio=1", *common])
    from causal_rcm.stages.tf import resolve

    init = assets / ("teacher.safetensors" if stage == "tf" else "causal.safetensors")
    return resolve("blob-tiny", stage, [f"data={assets / 'synth'}", f"init={init}",
                                        f"teacher={assets / 'causal.safetensors'}", *common])


def train(stage: str, cfg, out: Path) -> Path:
    if stage == "sf_dmd":
        from causal_rcm.stages.sf_dmd import train_sf_dmd

        return train_sf_dmd(cfg, out, device="cpu")
    from causal_rcm.stages.tf import train_tf

    return train_tf(cfg, out, device="cpu")


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> str:
    """``torchrun --nproc-per-node nproc ARGS`` on the CPU (gloo), the source tree on the path; its output.
    It runs in its own process group, so a hang or a timeout takes its workers down with it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun {' '.join(args)} ran past {timeout} s:\n{out[-6000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed ({proc.returncode}):\n{out[-8000:]}")
    return out
