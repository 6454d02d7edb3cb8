"""A screenshot of the play page mid-game (docs/play.png): serve a bundle, open the page in headless
Chromium, start, hold a few keys, save the page.

    python scripts/play_screenshot.py --ckpt BLOB_AGENT_STUDENT.safetensors --out docs/play.png
    python scripts/play_screenshot.py --ckpt PONG.safetensors --side-by-side --keys ArrowUp,ArrowDown --out ...

Uses Debian's chromium through playwright (never `playwright install`).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", default="docs/play.png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fps", default="15")
    ap.add_argument("--seed", default="3")
    ap.add_argument("--prompt", default=None, help="a prompt of the world (the page's first one by default)")
    ap.add_argument("--keys", default="ArrowRight,ArrowDown,ArrowLeft", help="keys held one after another")
    ap.add_argument("--hold", type=float, default=1.2, help="seconds each key is held")
    ap.add_argument("--side-by-side", action="store_true")
    ap.add_argument("--start-rendered", action="store_true", help="Blobworld: start from the rendered first frame")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-u", "-m", "causal_rcm.cli", "play", "--ckpt", a.ckpt, "--port", "0",
           "--device", a.device, "--fps", a.fps] + (["--side-by-side"] if a.side_by_side else []) + (
           ["--start-rendered"] if a.start_rendered else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in server.stdout:
            m = re.search(r"open http://[^:]+:(\d+)/", line)
            if m:
                url = f"http://127.0.0.1:{m.group(1)}/"
                break
        else:
            sys.exit("causal-rcm play did not start")
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "health").read()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1180, "height": 660}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_function("document.getElementById('status').textContent.startsWith('connected')")
            if a.prompt:
                page.select_option("#prompt", a.prompt)
            page.fill("#seed", a.seed)
            page.click("#start")
            page.wait_for_function("window.play.stats().frame >= 3", timeout=30000)
            for key in a.keys.split(","):
                page.keyboard.down(key)
                page.wait_for_timeout(int(1000 * a.hold))
                page.keyboard.up(key)
            page.keyboard.down(a.keys.split(",")[0])  # mid-move: the key map shows it held
            page.wait_for_timeout(600)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=a.out)
            print(f"wrote {a.out}; page stats {page.evaluate('window.play.stats()')}")
            browser.close()
    finally:
        server.send_signal(2)
        server.wait(30)


if __name__ == "__main__":
    main()
