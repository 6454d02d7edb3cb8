"""What the GPU benchmarks share: CUDA-event timing and the JSON + printed table they end with.

Importing this module also puts the repository's ``src`` on the path, so the scripts run from a checkout
without an install (``python benchmarks/NAME.py``).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def time_ms(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` calls after ``warmup`` calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def write_result(out: str | Path, rows: list[dict], columns: list[tuple[str, str, int, str]], show: bool = True,
                 **meta) -> None:
    """Write {device, torch, **meta, rows} to ``out`` as JSON and print the rows as a table (``show``).
    ``columns``: (row key, header, width, format spec); text columns align left, numbers right. Benchmarks
    call it with ``show=False`` after each row too, so a run cut short still leaves the rows it measured."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"  # CPU rows name it in meta
    result = dict(device=device, torch=torch.__version__, **meta, rows=rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if not show:
        return

    def cell(text, width, spec):
        return f"{text:{'<' if spec == 's' else '>'}{width}s}"

    print("\n" + " ".join(cell(head, w, spec) for _, head, w, spec in columns))
    for r in rows:
        print(" ".join(cell(format(r[key], spec), w, spec) for key, _, w, spec in columns))
    print(f"wrote {out}")
