"""How tests/assets/blob-agent-c1-1.safetensors was made: the browser test's model, a Blobworld-agent world
model (16×16, 9-frame videos, the blob-tiny architecture) whose c1-1 student moves the white agent the way
the keys say.

    python tests/assets/make_blob_agent.py --out runs/blob-agent-c1-1 --device cuda \\
        [--teacher runs/blob-agent-tiny/teacher/teacher.safetensors]

1. teacher: the blob-agent-tiny recipe's first stage (`causal-rcm train teacher --preset blob-tiny
   world.variant=agent`), unless --teacher gives one. It is the starting point (weights, the trained
   prompt encoder and action embedding) only: its own samples follow actions poorly at this size.
2. data: the world's own videos (``--n`` of them, the world's sticky actions) written in the synthetic
   dataset format, so teacher forcing learns the agent's true dynamics instead of the tiny teacher's.
3. causal teacher: `causal-rcm train tf --preset blob-tiny pattern=c1-1 data=DATA init=TEACHER`.
4. student: `causal-rcm train tf_scm --preset blob-tiny pattern=c1-1 data=DATA init=TF teacher=TF`.
5. `causal-rcm export STUDENT --dtype bf16 --out tests/assets/blob-agent-c1-1.safetensors` (with --asset).

Every step is a `causal-rcm` command run in a subprocess; the data step is the only code of its own.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def cli(*args: str) -> None:
    print("$ causal-rcm " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "causal_rcm.cli", *args], check=True,
                   env={"PYTHONPATH": str(ROOT / "src"), **__import__("os").environ})


def write_world_data(out: Path, n: int, seed: int) -> Path:
    """The world's own videos as a synthetic dataset (``data/synthetic.write_synthetic``)."""
    import numpy as np

    from causal_rcm.data.synthetic import MANIFEST, write_synthetic
    from causal_rcm.worlds.base import WorldConfig
    from causal_rcm.worlds.registry import make_world

    world = make_world(WorldConfig("blobworld", "agent", 16, 9))
    if (out / MANIFEST).is_file():
        return out
    config = {"teacher": {"path": "world:blobworld/agent", "weights_sha256": ""}, "seed": seed,
              "world": asdict(world.config), "video_shape": [3, 9, 16, 16], "sampling": {"method": "world"},
              "prompts": {"source": "world"}, "actions": True, "ode_times": None, "ode_grid_times": None}

    def make_shard(lo: int, hi: int) -> dict:
        s = world.sample(hi - lo, seed, start=lo)
        return {"videos": s["videos"], "prompts": np.array(s["prompts"], dtype=str), "actions": s["actions"]}

    return write_synthetic(out, n, 1024, config, make_shard)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tf-steps", type=int, default=3000)
    ap.add_argument("--scm-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds per training stage (0: none)")
    ap.add_argument("--asset", default=None, help="also export the student in bf16 here")
    a = ap.parse_args()
    out = Path(a.out)
    dev = ["--device", a.device] if a.device else []
    teacher = a.teacher
    if teacher is None:
        cli("train", "teacher", "--preset", "blob-tiny", "world.variant=agent", "--out", str(out / "teacher"), *dev)
        teacher = str(out / "teacher" / "teacher.safetensors")
    data = write_world_data(out / "data", a.n, seed=0)
    common = ["--preset", "blob-tiny", "pattern=c1-1", f"data={data}", f"train.batch={a.batch}",
              f"train.time_limit={a.time_limit}"]
    cli("train", "tf", *common, f"init={teacher}", f"train.steps={a.tf_steps}", f"train.ckpt_every={a.tf_steps}",
        "--out", str(out / "tf"), *dev)
    tf = out / "tf" / "model.safetensors"
    cli("train", "tf_scm", *common, f"init={tf}", f"teacher={tf}", f"train.steps={a.scm_steps}",
        f"train.ckpt_every={a.scm_steps}", "--out", str(out / "tf_scm"), *dev)
    if a.asset:
        cli("export", str(out / "tf_scm" / "model.safetensors"), "--dtype", "bf16", "--out", a.asset)


if __name__ == "__main__":
    main()
