"""Bit-identity of the shipped blob-s models across the restructuring of issue 11: the current code and the code
before it (commit 17febaf's ``Generator.sample``) sample the same videos for the same seeds, compared as
SHA-256 of the uint8 videos for prompts 0, 7, 20, 40 and seed 123, both computed here, on this machine's CPU
(different CPUs or torch builds round differently, so hashes from elsewhere prove nothing).

    python scripts/golden_check.py [--assets assets/blob-s] [--against 17febaf]

The old code runs from a temporary ``git worktree`` of ``--against`` in a subprocess.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT_IDS = (0, 7, 20, 40)
SEED = 123
# (bundle, sampling overrides)
CASES = [("teacher", {"steps": 12}), ("tf_scm_c3-3", {}), ("sf_dmd_c3-3", {}),
         ("sf_dmd_c3-3", {"steps": 1, "steps_first": 1})]

OLD = """
import hashlib, json, sys, torch
sys.path.insert(0, sys.argv[1] + "/src")
from causal_rcm.generate import Generator
from causal_rcm.data.blobworld import T2V_PROMPTS
torch.set_num_threads(2)
out = []
for name, kw in json.loads(sys.argv[3]):
    g = Generator.load(f"{sys.argv[2]}/{name}.safetensors", device="cpu")
    v = g.sample([T2V_PROMPTS[i] for i in %r], seed=%d, show_progress=False, **kw)
    out.append(hashlib.sha256(v.tobytes()).hexdigest()[:16])
print(json.dumps(out))
""" % (PROMPT_IDS, SEED)


def current(assets: Path) -> list[str]:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.stream.sample import sample_videos
    from causal_rcm.stream.sampling import with_overrides
    from causal_rcm.worlds.registry import make_world

    torch.set_num_threads(2)
    out = []
    for name, kw in CASES:
        b = Bundle.load(assets / f"{name}.safetensors", device="cpu")
        prompts = [make_world(b.world).prompts()[i] for i in PROMPT_IDS]
        v = sample_videos(b, prompts, seed=SEED, sampling=with_overrides(b.sampling, **kw) if kw else None,
                          show_progress=False)
        out.append(hashlib.sha256(v.tobytes()).hexdigest()[:16])
    return out


def old(assets: Path, commit: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit], check=True)
        try:
            res = subprocess.run([sys.executable, "-c", OLD, str(tree), str(assets.resolve()), json.dumps(CASES)],
                                 capture_output=True, text=True, cwd=tmp)
            if res.returncode:
                sys.exit(f"the code at {commit} failed to sample:\n{res.stderr[-2000:]}")
            return json.loads(res.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=str(ROOT / "assets" / "blob-s"))
    ap.add_argument("--against", default="17febaf", help="the commit whose code is the reference")
    a = ap.parse_args()
    assets = Path(a.assets)
    want, got = old(assets, a.against), current(assets)
    for (name, kw), w, g in zip(CASES, want, got):
        print(f"{name:12s} {kw!s:32s} now {g}  at {a.against} {w}  {'identical' if g == w else 'DIFFERENT'}")
    same = want == got
    print("all identical" if same else "MISMATCH")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
