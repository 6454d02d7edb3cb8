"""Bit-identity of the shipped blob-s models across refactorings: sample the same videos as before and compare
their SHA-256 with the values recorded from the code before the restructuring of issue 11 (commit 17febaf's
``Generator.sample``, CPU, torch 2.13, 2 threads). A different CPU or torch build may round differently: the
check is for the machine the hashes came from, so a mismatch elsewhere is a lead, not a verdict.

    python scripts/golden_check.py [--assets assets/blob-s]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# (bundle, sampling overrides) -> sha256[:16] of the uint8 videos for prompts 0, 7, 20, 40 and seed 123
RECORDED = {
    ("teacher", (("steps", 12),)): "5316ea7295134c2a",
    ("tf_scm_c3-3", ()): "d797e30df7de00d9",
    ("sf_dmd_c3-3", ()): "1bb5c2e65ca771d7",
    ("sf_dmd_c3-3", (("steps", 1), ("steps_first", 1))): "e8c7bfd631e19d11",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default="assets/blob-s")
    a = ap.parse_args()
    import torch

    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.stream.sample import sample_videos
    from causal_rcm.stream.sampling import with_overrides
    from causal_rcm.worlds.registry import make_world

    torch.set_num_threads(2)
    same = True
    for (name, kw), want in RECORDED.items():
        b = Bundle.load(Path(a.assets) / f"{name}.safetensors", device="cpu")
        prompts = [make_world(b.world).prompts()[i] for i in (0, 7, 20, 40)]
        sampling = with_overrides(b.sampling, **dict(kw)) if kw else None
        v = sample_videos(b, prompts, seed=123, sampling=sampling, show_progress=False)
        got = hashlib.sha256(v.tobytes()).hexdigest()[:16]
        same &= got == want
        print(f"{name:12s} {dict(kw)!s:32s} {got} {'identical' if got == want else 'DIFFERENT from ' + want}")
    print("all identical" if same else "MISMATCH")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
