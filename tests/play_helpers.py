"""What the live-play tests share: tiny bundles, a `causal-rcm play` server in a subprocess, a client."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from causal_rcm.config import preset
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.serve.protocol import unpack_frame
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import FewStep
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

SRC = Path(__file__).resolve().parents[1] / "src"


def random_bundle(path: Path, world: WorldConfig, pattern: str = "c1-1", patch: int = 4) -> Path:
    """A random-init action-conditioned student (protocol tests do not need a model that has learnt)."""
    torch.manual_seed(0)
    prompts = list(make_world(world).prompts()) + ["no ball"]
    text = WorldTextEncoder.for_prompts(prompts, dim=16, num_layers=1, num_heads=2)
    n_actions = len(make_world(world).action_names)
    cfg = dataclasses.replace(preset("blob-tiny"), text_dim=16, action_dim=n_actions, num_layers=2,
                              patch_size=(1, patch, patch))
    net = randomize_(WanDiT(cfg))
    return Bundle(net, text, FewStep(pattern, 1, 1), world, "student").save(path)


class PlayServer:
    """``causal-rcm play`` on a free port in a subprocess (the real CLI, uvicorn and signals)."""

    def __init__(self, ckpt: Path, *args: str, timeout: float = 60.0):
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONUNBUFFERED": "1"}
        # conftest runs Triton kernels under the interpreter on CPU machines; a server must not inherit that
        # (the attention dispatch would take the interpreted kernel and be a hundred times slower)
        env.pop("TRITON_INTERPRET", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "causal_rcm.cli", "play", "--ckpt", str(ckpt),
                                      "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("causal-rcm play exited before serving:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"open http://[^:]+:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("causal-rcm play did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        while True:  # the socket is bound before uvicorn listens on it
            try:
                self.health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user would: (exit code, everything it printed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, "".join(self.lines) + self.proc.stdout.read()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Client:
    """A blocking WebSocket client that sorts what it receives into frames, emulator frames and JSON."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=2**22, open_timeout=10)
        self.frames, self.emulator, self.messages = [], [], []

    def send(self, msg) -> None:
        self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    def _take(self, timeout: float) -> None:
        m = self.ws.recv(timeout=timeout)
        if isinstance(m, str):
            self.messages.append(json.loads(m))
        else:
            f = unpack_frame(m)
            (self.emulator if f.emulator else self.frames).append((time.monotonic(), f))

    def until(self, pred, timeout: float = 20.0):
        """Receive until ``pred()`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while not (v := pred()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited {timeout} s; got {len(self.frames)} frames, messages "
                                   f"{self.messages[-5:]}")
            self._take(left)
        return v

    def message(self, kind: str, after: int = 0, timeout: float = 20.0) -> dict:
        def find():
            return next((m for m in self.messages[after:] if m["type"] == kind), None)
        return self.until(find, timeout)

    def receive_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self._take(left)
            except TimeoutError:
                return

    def close(self) -> None:
        self.ws.close()
