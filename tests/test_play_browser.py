"""The play page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is
downloaded at run time): load it, start, hold keys, and check that the white agent moves the way the keys
say and that the page reports its key-to-photon latency.

The model is the shipped tiny Blobworld-agent c1-1 student (tests/assets/README.md says how it was made):
a random model would not follow the keys.
"""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from .play_helpers import PlayServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ASSET = Path(__file__).parent / "assets" / "blob-agent-c1-1.safetensors"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# CI sets CAUSAL_RCM_REQUIRE_BROWSER=1 (.ci/run): there a missing browser fails instead of skipping
REQUIRED = os.environ.get("CAUSAL_RCM_REQUIRE_BROWSER") == "1"
try:
    from playwright import sync_api
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("the browser test drives Chromium with playwright (pip install playwright; the browser itself is "
                "Debian's chromium package)", allow_module_level=True)
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    why = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=/path/to/chromium)"
    if REQUIRED:
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

# The agent's centroid on the canvas (the brightest pixels: the agent is white, balls are saturated colours)
CENTROID = """() => {
  const f = window.play.frames.model;
  if (!f) return null;
  const d = f.data.data; let sx = 0, sy = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 170 && d[i + 1] > 170 && d[i + 2] > 170) {
      const p = i / 4; sx += p % f.data.width; sy += Math.floor(p / f.data.width); n++;
    }
  }
  return n ? [sx / n, sy / n, f.index] : null;
}"""


@pytest.fixture(scope="module")
def server():
    s = PlayServer(ASSET, "--fps", "10", "--device", "cpu", "--threads", "1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1100, "height": 640})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server.url + "/")
        pg.wait_for_function("document.getElementById('status').textContent.startsWith('connected')", timeout=20000)
        yield pg
        browser.close()
        assert not errors, errors


def held(page, key: str, seconds: float) -> list:
    """Hold a key; the agent's centroid at the frames painted meanwhile (the first one before the key)."""
    out = [page.evaluate(CENTROID)]
    page.keyboard.down(key)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        page.wait_for_timeout(100)
        out.append(page.evaluate(CENTROID))
    page.keyboard.up(key)
    return [c for c in out if c is not None]


def test_the_agent_follows_the_keys_and_the_page_reports_latency(page):
    assert "world model" in page.inner_text("#views")
    keys = page.inner_text("#keys")
    assert all(k in keys for k in ("W", "A", "S", "D", "up", "left", "Enter"))
    page.select_option("#prompt", "no ball")  # only the agent on screen
    page.fill("#seed", "3")
    page.click("#start")
    page.wait_for_function("window.play.stats().frame >= 5", timeout=30000)
    moves = {}
    for key, axis, sign in (("ArrowLeft", 0, -1), ("ArrowRight", 0, 1), ("ArrowUp", 1, -1), ("ArrowDown", 1, 1)):
        track = held(page, key, 1.5)
        assert len(track) >= 5, f"{key}: the agent was visible in {len(track)} frames"
        moves[key] = sign * (track[-1][axis] - track[0][axis])
        other = abs(track[-1][1 - axis] - track[0][1 - axis])
        assert moves[key] > 2.0, f"{key} moved the agent {moves[key]:.1f} px the wrong way or not at all: {track}"
        assert other < moves[key], f"{key} moved the agent along the other axis ({other:.1f} px)"
    stats = page.evaluate("window.play.stats()")
    assert stats["latency_n"] >= 8 and 0 < stats["latency_p50"] <= stats["latency_p99"] < 2000, stats
    assert stats["fps"] > 5, stats
    shown = float(re.match(r"([\d.]+) ms", page.inner_text("#lat-p50")).group(1))
    assert abs(shown - stats["latency_p50"]) < 200  # what the page shows is what it measured
    server_fps = float(page.inner_text("#server-fps"))
    assert server_fps > 5
