"""Live play from a client's seat (shared/specs/play.md): key-to-photon latency and sustained frame rate.

A WebSocket client plays like a person: it holds an action, and every 0.2–0.5 s switches to another, stamping
each switch with ``t_client``. Latency is the time from sending the action to having decoded the first frame
whose header echoes that ``t_client`` (the frame that shows the key's effect; a browser would paint it at
the next vsync, docs/play.md). Sustained FPS counts every frame received over the measured seconds.

    python benchmarks/play_latency.py --ckpt BUNDLE [--ckpt BUNDLE ...] --device cpu --threads 2 \\
        --fps 30 --seconds 20 --out results/play_latency_cpu.json
    python benchmarks/play_latency.py --url http://127.0.0.1:8765 --label atari-c1-1 ...   # a running server

With ``--ckpt`` each bundle is served by ``causal-rcm play`` in a subprocess on a free port (the real
server: uvicorn, its model worker process, the outbox); ``--fps`` is the server's target rate (a higher
target measures how fast the model can go). Prints a table and writes JSON (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import write_result

from causal_rcm.serve.protocol import unpack_frame  # (common puts src on the path)

SRC = Path(__file__).resolve().parents[1] / "src"


def serve(ckpt: str, device: str, fps: float, threads: int | None, extra: list[str]):
    """``causal-rcm play`` on a free port: (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-u", "-m", "causal_rcm.cli", "play", "--ckpt", ckpt, "--port", "0", "--device", device,
           "--fps", str(fps), *(["--threads", str(threads)] if threads else []), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        m = re.search(r"open http://[^:]+:(\d+)/", line)
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).read()
                    return proc, url
                except OSError:
                    time.sleep(0.1)
        print("  server:", line.rstrip())
    raise SystemExit(f"causal-rcm play did not start for {ckpt} (exit code {proc.wait()})")


async def play(url: str, seconds: float, warmup: float, seed: int) -> dict:
    import websockets
    from PIL import Image

    health = json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())
    n_actions = len(health["actions"])
    rng = random.Random(seed)
    latencies, frames, gen = [], 0, []
    async with websockets.connect(url.replace("http", "ws", 1) + "/ws", max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "seed": seed}))
        t0 = time.perf_counter()
        measuring = False
        action, next_switch = 0, (t0 + warmup if n_actions else float("inf"))
        end = t0 + warmup + seconds
        while (now := time.perf_counter()) < end:
            if n_actions and now >= next_switch:
                action = (action + 1 + rng.randrange(n_actions - 1)) % n_actions if n_actions > 1 else 0
                await ws.send(json.dumps({"type": "action", "action": action, "t_client": 1000 * time.perf_counter()}))
                next_switch = now + rng.uniform(0.2, 0.5)
            if not measuring and now >= t0 + warmup:
                measuring, frames, t_measure = True, 0, now
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.001, min(next_switch, end) - now))
            except asyncio.TimeoutError:
                continue
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "stats" and measuring:
                    gen.append((m["gen_ms_p50"], m["gen_ms_p99"]))
                elif m["type"] == "error":
                    raise SystemExit(f"server error: {m['message']}")
                continue
            f = unpack_frame(msg)
            if f.emulator:
                continue
            Image.open(io.BytesIO(f.png)).load()  # "displayed": decoded, ready to paint
            if measuring:
                frames += 1
                if f.t_client >= 0:
                    latencies.append(1000 * time.perf_counter() - f.t_client)
        await ws.send(json.dumps({"type": "stop"}))
    elapsed = time.perf_counter() - t_measure
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    return {"model": health["model"], "world": health["world"], "pattern": health["pattern"],
            "server_device": health.get("device", "?"), "fps_target": health["fps_target"],
            "fps": frames / elapsed, "latency_p50": q[49], "latency_p99": q[98], "latency_n": len(latencies),
            "gen_ms_p50": gen[-1][0] if gen else float("nan"), "gen_ms_p99": gen[-1][1] if gen else float("nan"),
            "window": health["window"], "sink": health["sink"], "seconds": elapsed}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", default=[], help="a bundle to serve and measure (repeatable)")
    ap.add_argument("--url", action="append", default=[], help="a running play server to measure (repeatable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of the server's model worker")
    ap.add_argument("--fps", type=float, default=30.0, help="the server's target frame rate")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="a note stored with the rows (e.g. the hardware limit)")
    ap.add_argument("--server-arg", action="append", default=[], help="passed to causal-rcm play, e.g. --sink=0")
    ap.add_argument("--out", default="results/play_latency.json")
    a = ap.parse_args()
    if not a.ckpt and not a.url:
        ap.error("give --ckpt BUNDLE or --url http://HOST:PORT")
    cols = [("model", "model", 28, "s"), ("world", "world", 16, "s"), ("pattern", "pattern", 7, "s"),
            ("server_device", "device", 7, "s"), ("fps_target", "target", 6, ".0f"), ("fps", "FPS", 6, ".1f"),
            ("latency_p50", "k2p p50 ms", 10, ".1f"), ("latency_p99", "k2p p99 ms", 10, ".1f"),
            ("latency_n", "presses", 7, "d"), ("gen_ms_p50", "gen p50 ms", 10, ".1f")]
    meta = dict(hardware=cpu_name(), cpu_cores=os.cpu_count(), threads=a.threads, seconds=a.seconds,
                command=" ".join(sys.argv))
    rows = []
    for target in a.ckpt + a.url:
        proc = None
        url = target
        if target in a.ckpt:
            proc, url = serve(target, a.device, a.fps, a.threads, a.server_arg)
        try:
            r = asyncio.run(play(url, a.seconds, a.warmup, a.seed))
        finally:
            if proc is not None:
                proc.send_signal(2)
                proc.wait(30)
        rows.append({**r, "label": a.label})
        print(f"  {r['model']}: {r['fps']:.1f} fps, key-to-photon p50 {r['latency_p50']:.1f} ms, "
              f"p99 {r['latency_p99']:.1f} ms ({r['latency_n']} presses), gen p50 {r['gen_ms_p50']:.1f} ms",
              flush=True)
        write_result(a.out, rows, cols, show=False, **meta)  # a run cut short keeps what it measured
    write_result(a.out, rows, cols, **meta)


if __name__ == "__main__":
    main()
