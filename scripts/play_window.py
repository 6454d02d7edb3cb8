"""Which KV window and sink keep an endless play stream healthy (docs/play.md): roll a Blobworld-agent
bundle out for many frames exactly as the play server does (``serve/session.Player``, sticky random keys),
cut the stream into clips of the trained length and score each clip with the world's metrics.

    python scripts/play_window.py --ckpt BLOB_AGENT_STUDENT.safetensors --frames 300 \\
        --policy 8:1 --policy 9:0 --policy 4:1 --out results/play_window_cpu.json

``--policy W:S`` is a window of W blocks with S sink blocks (repeatable). Prints, per policy, the metrics of
the first clip and of the clips after ``--late`` frames, averaged over ``--seeds`` streams (each stream's late
clips averaged first), with 95 % bootstrap intervals over the streams.
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


def roll_out(bundle, window: int, sink: int, frames: int, seed: int, prompt: str, start_rendered: bool = False):
    """(frames uint8 [T, H, W, 3], actions int64 [T − 1]) of one stream with sticky random keys."""
    from causal_rcm.serve.options import PlayOptions
    from causal_rcm.serve.protocol import Start
    from causal_rcm.serve.session import Game, Player
    from causal_rcm.worlds.blobworld import sticky_actions
    from PIL import Image
    import io

    game = Game(bundle, PlayOptions(window=window, sink=sink, start_rendered=start_rendered))
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


def _mean_ci(values: np.ndarray, n_boot: int = 1000) -> tuple[float, list[float]]:
    """The mean over streams (NaN where undefined skipped) and its 95 % percentile-bootstrap interval."""
    v = values[~np.isnan(values)]
    if not len(v):
        return float("nan"), [float("nan"), float("nan")]
    boot = v[np.random.default_rng(0).integers(0, len(v), (n_boot, len(v)))].mean(1)
    return float(v.mean()), [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--policy", action="append", default=[], help="W:S (window blocks : sink blocks)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--late", type=int, default=100, help="clips starting after this frame are 'late'")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--start-rendered", action="store_true", help="streams start from the rendered first frame")
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
        early, late = [], []  # per stream: the first clip's metrics, the mean of its late clips' metrics
        for seed in range(a.seeds):
            prompt = prompts[(7 * seed) % len(prompts)]
            video, acts = roll_out(bundle, w, s, a.frames, seed, prompt, a.start_rendered)
            clips = []
            for k in range(0, a.frames - T + 1, T):
                if k == 0 or k >= a.late:
                    ca = None if acts is None else acts[None, k:k + T - 1]
                    m = evaluate(video[None, k:k + T], [prompt], ca, variant)
                    clips.append([m[x] for x in metrics])
            early.append(clips[0])
            late.append(np.nanmean(clips[1:], axis=0) if len(clips) > 1 else [np.nan] * len(metrics))
        row = {"window": w, "sink": s}
        for when, per_stream in (("first", np.array(early, float)), ("late", np.array(late, float))):
            for i, x in enumerate(metrics):
                row[f"{when}_{x}"], row[f"{when}_{x}_ci95"] = _mean_ci(per_stream[:, i])
        rows.append(row)
        ci = lambda key: f"{row[key]:.2f} [{row[key + '_ci95'][0]:.2f}, {row[key + '_ci95'][1]:.2f}]"
        print(f"window {w} sink {s} (n = {a.seeds} streams, 95 % bootstrap over streams): " +
              ", ".join(f"{x} {ci('first_' + x)} -> {ci('late_' + x)}" for x in metrics), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"ckpt": a.ckpt, "frames": a.frames, "late": a.late, "seeds": a.seeds,
                                           "start_rendered": a.start_rendered,
                                           "rows": rows}, indent=2))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
