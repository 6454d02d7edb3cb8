"""Which KV window and sink keep an endless play stream healthy (docs/play.md): roll a Blobworld-agent
bundle out for many frames exactly as the play server does (``serve/session.Player``, sticky random keys),
cut the stream into clips of the trained length and score each clip with the world's metrics.

    python scripts/play_window.py --ckpt BLOB_AGENT_STUDENT.safetensors --frames 300 \\
        --policy 8:1 --policy 9:0 --policy 4:1 --out results/play_window_cpu.json

``--policy W:S`` is a window of W blocks with S sink blocks (repeatable). Prints, per policy, the metrics of
the first clip and of the clips after ``--late`` frames, averaged over ``--seeds`` streams.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

METRICS = {"agent": ("prompt_accuracy", "persistence", "artifact_rate", "action_accuracy", "agent_still", "action_drift"),
           "t2v": ("prompt_accuracy", "persistence", "artifact_rate", "size_stability", "motion_error")}


def roll_out(bundle, window: int, sink: int, frames: int, seed: int, prompt: str):
    """(frames uint8 [T, H, W, 3], actions int64 [T − 1]) of one stream with sticky random keys."""
    from causal_rcm.serve.options import PlayOptions
    from causal_rcm.serve.protocol import Start
    from causal_rcm.serve.session import Game, Player
    from causal_rcm.worlds.blobworld import sticky_actions
    from PIL import Image
    import io

    game = Game(bundle, PlayOptions(window=window, sink=sink))
    out, acts = [], []
    p = Player(game, lambda fs, ms: out.extend(fs), lambda msg: None)
    p.request_start(Start(seed, prompt))
    p.begin()
    rng = np.random.default_rng(seed)
    keys = sticky_actions(rng.integers(5, size=1), rng.random((1, frames)) < 0.9, rng.integers(5, size=(1, frames)))[0]
    while len(out) < frames:
        if game.n_actions:
            p.hold(int(keys[len(out)]), -1.0)
        p.advance()
    video = np.stack([np.asarray(Image.open(io.BytesIO(f.png)).convert("RGB")) for f in out[:frames]])
    acts = np.array([max(f.action, 0) for f in out[1:frames]], np.int64) if game.n_actions else None
    return video, acts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--policy", action="append", default=[], help="W:S (window blocks : sink blocks)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--late", type=int, default=100, help="clips starting after this frame are 'late'")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.worlds.blobworld_metrics import evaluate
    from causal_rcm.worlds.registry import make_world

    bundle = Bundle.load(a.ckpt, device="cpu")
    world = make_world(bundle.world_or_raise())
    T = world.config.frames
    prompts = [p for p in world.prompts() if p != "no ball"]
    variant = world.config.variant
    metrics = METRICS[variant]
    rows = []
    for spec in a.policy or ["8:1", "9:0"]:
        w, s = (int(x) for x in spec.split(":"))
        early, late = [], []
        for seed in range(a.seeds):
            prompt = prompts[(7 * seed) % len(prompts)]
            video, acts = roll_out(bundle, w, s, a.frames, seed, prompt)
            starts = range(0, a.frames - T + 1, T)
            for k in starts:
                ca = None if acts is None else acts[None, k:k + T - 1]
                m = evaluate(video[None, k:k + T], [prompt], ca, variant)
                (early if k == 0 else late if k >= a.late else []).append([m[x] for x in metrics])
        row = {"window": w, "sink": s, **{f"first_{x}": float(np.nanmean([e[i] for e in early]))
                                          for i, x in enumerate(metrics)},
               **{f"late_{x}": float(np.nanmean([e[i] for e in late])) for i, x in enumerate(metrics)}}
        rows.append(row)
        print(f"window {w} sink {s}: " + ", ".join(f"{x} {row['first_' + x]:.2f} -> {row['late_' + x]:.2f}"
                                                  for x in metrics), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"ckpt": a.ckpt, "frames": a.frames, "late": a.late, "seeds": a.seeds,
                                           "rows": rows}, indent=2))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
