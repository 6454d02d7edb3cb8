"""Score bundles on the Blobworld metrics in one table: every student at several step counts, teachers as
reference rows, and the data row. Writes JSON and a Markdown table (for docs/results/blobworld.md).

    python scripts/eval_table.py NAME=BUNDLE [NAME=BUNDLE ...] --steps 1,2,4 --out results/table.json

Students (few-step bundles) are sampled with each step count for the chunks after the first
(``--first`` steps for the first chunk; "same" uses the step count there too); teachers with their own
settings, and with --teachers-at-steps causal teachers also with those step counts (Euler with CFG,
the first chunk as the students': the undistilled baseline). Evaluation layout: --prompts prompts spread
over the world's list × --per-prompt samples.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from causal_rcm.eval.report import metrics_table  # noqa: E402
from causal_rcm.stages.common import EvalConfig  # noqa: E402
from causal_rcm.stages.report import score_bundle, score_data  # noqa: E402
from causal_rcm.stream.bundle import Bundle  # noqa: E402
from causal_rcm.stream.sampling import with_overrides  # noqa: E402
from causal_rcm.worlds.registry import make_world  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="NAME=PATH of a bundle")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--first", default="4", help="steps of the first chunk, or 'same'")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--per-prompt", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--teachers-at-steps", action="store_true",
                    help="also sample causal teachers with each step count (the no-distillation baseline)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="results/table.json")
    args = ap.parse_args()
    ev = EvalConfig(prompts=args.prompts, per_prompt=args.per_prompt, batch=args.batch)
    rows, world = [], None
    for item in args.bundles:
        if "=" not in item:
            sys.exit(f"give bundles as NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        b = Bundle.load(path, device=args.device)
        world = world or b.world
        method = b.sampling.method
        if method != "few_step":
            rows.append((name, score_bundle(name, b, ev)))
            if not (args.teachers_at_steps and method == "causal_euler"):
                continue
        for k in (int(s) for s in args.steps.split(",")):
            first = k if args.first == "same" else int(args.first)
            kind = " Euler" if method == "causal_euler" else ""
            label = f"{name}, {k}{kind} step{'s' if k > 1 else ''} ({b.sampling.pattern}, first chunk {first})"
            rows.append((label, score_bundle(label, b, ev, sampling=with_overrides(b.sampling, steps=k,
                                                                                  steps_first=first))))
    data = score_data(world, ev)
    table = [{"name": data.name, **data.metrics}] + [
        {"name": name, **s.metrics, **(s.latency or {})} for name, s in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2, default=float))
    md = metrics_table(table, make_world(world).higher_is_better, extra_cols=("ms/frame", "first frame ms"))
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
