"""Live play (shared/specs/play.md) through the real CLI, uvicorn and WebSockets: what a client relies on.

One server subprocess serves the protocol tests (a random tiny Blobworld-agent student: the protocol does
not need a model that has learnt); the Atari side-by-side and Ctrl-C tests start their own.
"""
import json
import socket
import time

import numpy as np
import pytest

from causal_rcm.masks import ChunkPattern
from causal_rcm.serve.app import Outbox
from causal_rcm.serve.protocol import (HEADER, MAX_MESSAGE_BYTES, NO_ACTION, Action, ProtocolError, Start, Stop,
                                       pack_frame, parse_message, unpack_frame)
from causal_rcm.serve.protocol import OutFrame
from causal_rcm.serve.session import fit_window
from causal_rcm.worlds.base import WorldConfig

from .play_helpers import Client, PlayServer, decode_png, random_bundle

websockets = pytest.importorskip("websockets", reason="live play needs the websockets package (pyproject)")

AGENT = WorldConfig("blobworld", "agent", 64, 9)  # big frames: a client that never reads fills its buffers soon
FPS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # 8×8 patches: 64 tokens a frame, so two sessions fit a 2-core CI machine at the target rate
    ckpt = random_bundle(tmp_path_factory.mktemp("play") / "agent.safetensors", AGENT, patch=8)
    s = PlayServer(ckpt, "--fps", str(FPS), "--max-players", "3", "--device", "cpu", "--threads", "1")
    yield s
    s.stop()


def started(server, seed=0, **extra) -> Client:
    c = Client(server.ws_url)
    c.send({"type": "start", "seed": seed, **extra})
    c.message("ready")
    return c


# ----- the wire format, without a server ----------------------------------------------------------------
def test_messages_parse_or_name_the_fix():
    assert parse_message('{"type": "start", "seed": 3, "prompt": "a red ball"}', 5) == Start(3, "a red ball")
    assert parse_message('{"type": "action", "action": 4, "t_client": 12.5}', 5) == Action(4, 12.5)
    assert parse_message('{"type": "action", "action": 0, "extra": 1}', 5) == Action(0, -1.0)
    assert parse_message('{"type": "stop"}', 5) == Stop()
    bad = {"{": "invalid JSON", "[1]": "JSON object", '{"seed": 1}': "needs a 'type'",
           '{"type": "jump"}': "unknown message type", '{"type": "start"}': "'seed'",
           '{"type": "start", "seed": "1"}': "integer", '{"type": "start", "seed": -1}': "0..",
           '{"type": "start", "seed": true}': "integer", '{"type": "start", "seed": 1, "prompt": 3}': "str",
           '{"type": "action", "action": 5}': "0..4", '{"type": "action", "action": 2.0}': "integer",
           '{"type": "action", "action": 1, "t_client": "now"}': "finite",
           '{"type": "action", "action": 1, "t_client": NaN}': "invalid JSON",
           '{"type": "start", "seed": 1, "side_by_side": 1}': "bool",
           " " * (MAX_MESSAGE_BYTES + 1): "limit", b"{}": "binary"}
    for text, why in bad.items():
        with pytest.raises(ProtocolError, match=why):
            parse_message(text, 5)


def test_frame_header_is_the_spec_layout():
    msg = pack_frame(7, 3, 123.25, b"PNG")
    assert HEADER.size == 16 and msg[16:] == b"PNG"
    assert int.from_bytes(msg[:4], "little") == 7 and int.from_bytes(msg[4:8], "little") == 3
    assert np.frombuffer(msg[8:16], "<f8")[0] == 123.25
    assert int.from_bytes(pack_frame(0, -1, -1.0, b"")[4:8], "little") == NO_ACTION
    f = unpack_frame(pack_frame(2**32 + 5, 1, -1.0, b"x", emulator=True))
    assert (f.index, f.action, f.emulator, f.png) == (5, 1, True, b"x")


def test_window_fits_the_trained_length():
    assert fit_window(ChunkPattern(1, 1), 21, 1) == 20 and fit_window(ChunkPattern(3, 3), 21, 1) == 6
    assert fit_window(ChunkPattern(1, 4), 9, 1) == 2 and fit_window(ChunkPattern(1, 4), 9, 0) == 2
    with pytest.raises(ValueError, match="sink"):
        fit_window(ChunkPattern(3, 3), 6, 2)


def test_outbox_keeps_the_newest_frames_and_moves_a_dropped_echo():
    import asyncio

    async def run():
        ob = Outbox(frames_max=2)
        ob.put_frames([OutFrame(0, 1, 50.0, b"", None, 0.0)])
        ob.put_frames([OutFrame(1, 1, -1.0, b"", None, 0.0), OutFrame(2, 1, -1.0, b"", None, 0.0)])
        assert [f.index for f in ob.frames] == [1, 2] and ob.dropped == 1
        assert ob.frames[0].t_client == 50.0  # frame 1 reflects the action too: it carries the echo
        for _ in range(40):
            ob.put_control({"type": "error", "message": "x"})
        ob.put_control({"type": "ready"})
        assert len(ob.control) <= 17 and ob.control[-1]["type"] == "ready" and not ob.frames
    asyncio.run(run())


# ----- the server ---------------------------------------------------------------------------------------
def test_health_and_page(server):
    h = server.health()
    assert h["world"] == "blobworld/agent" and h["actions"] == ["none", "up", "down", "left", "right"]
    assert h["fps_target"] == FPS and h["model"] == "agent.safetensors" and h["pattern"] == "c1-1"
    import urllib.request
    page = urllib.request.urlopen(server.url + "/").read().decode()
    assert "<canvas" in page and "play.js" in page and "http" not in page.replace("http-equiv", "")
    js = urllib.request.urlopen(server.url + "/static/play.js").read().decode()
    assert "t_client" in js and "fetch(\"/health\")" in js


def test_frames_follow_the_spec(server):
    c = started(server, seed=5, prompt="a red ball")
    assert c.messages[-1]["prompt"] == "a red ball"
    c.until(lambda: len(c.frames) >= 3)
    c.send({"type": "action", "action": 4, "t_client": 1234.5})
    echo = c.until(lambda: next((f for _, f in c.frames if f.t_client >= 0), None))
    c.until(lambda: len(c.frames) >= echo.index + 3)
    frames = [f for _, f in c.frames]
    assert [f.index for f in frames] == list(range(len(frames)))       # every frame, in order, from 0
    assert frames[0].action == -1 and frames[1].action == 0            # frame 0 follows no action
    assert echo.t_client == 1234.5 and echo.action == 4                 # the first frame reflecting it
    assert sum(f.t_client >= 0 for f in frames) == 1
    assert all(f.action == 4 for f in frames[echo.index:])
    assert decode_png(frames[-1].png).shape == (64, 64, 3)
    stats = c.message("stats", after=len(c.messages))
    assert {"fps", "gen_ms_p50", "gen_ms_p99"} <= set(stats) and stats["gen_ms_p99"] >= stats["gen_ms_p50"] > 0
    c.close()


def test_bad_messages_are_answered_and_the_session_goes_on(server):
    c = started(server, seed=1)
    bad = ["not json", "[]", '{"type": "fly"}', '{"action": 1}', '{"type": "action", "action": 9}',
           '{"type": "action", "action": -1}', '{"type": "action", "action": "2"}',
           '{"type": "action", "action": 1, "t_client": "soon"}', '{"type": "start", "seed": "x"}',
           '{"type": "start", "seed": 1, "prompt": "a purple ball"}', '{"type": "start", "seed": 1, "game_state": "0:1"}',
           json.dumps({"type": "action", "action": 1, "pad": "x" * 5000}), b"\x00\x01binary"]
    n0 = len(c.messages)
    for m in bad:
        c.send(m)
    errors = c.until(lambda: (e := [m for m in c.messages[n0:] if m["type"] == "error"]) and len(e) >= len(bad) and e)
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    assert any("4096" in e["message"] for e in errors) and any("purple" in e["message"] for e in errors)
    c.send({"type": "action", "action": 2, "t_client": 99.0})
    echo = c.until(lambda: next((f for _, f in c.frames if f.t_client == 99.0), None))
    assert echo.action == 2
    c.close()


def test_two_players_get_independent_games(server):
    """A presses no key (so its frames are fixed by its seed); B, at the same time and with the same seed,
    floods keys and junk and restarts. A's frames are exactly those A gets alone."""
    def play_a(n=12, other=None):
        a = started(server, seed=7, prompt="a blue ball")
        while len(a.frames) < n:
            a.until(lambda k=len(a.frames): len(a.frames) > k)
            if other is not None:
                other.send({"type": "action", "action": len(a.frames) % 5, "t_client": 1.0})
                other.send("{broken")
                if len(a.frames) == n // 2:  # (refused if within a second of B's last start: junk too)
                    other.send({"type": "start", "seed": 7, "prompt": "a blue ball"})
        a.close()
        return [decode_png(f.png) for _, f in a.frames[:n]]

    alone = play_a()
    b = started(server, seed=7, prompt="a blue ball")
    together = play_a(other=b)
    b.receive_for(0.5)
    assert len(b.frames) > 3 and len(together) == len(alone) == 12
    assert all(np.array_equal(x, y) for x, y in zip(alone, together))
    b.close()


def test_stop_closes_and_restart_begins_again(server):
    c = started(server, seed=2)
    c.until(lambda: len(c.frames) >= 3)
    n = len(c.messages)
    c.send({"type": "start", "seed": 3})  # within a second of the last start: refused, the stream goes on
    assert "one start every" in c.message("error", after=n)["message"]
    time.sleep(1.0)
    n = len(c.messages)
    c.send({"type": "start", "seed": 3})
    ready = c.message("ready", after=n)
    assert ready["seed"] == 3
    k = len(c.frames)
    c.until(lambda: len(c.frames) >= k + 2)
    assert any(f.index == 0 for _, f in c.frames[k:])  # the new stream counts from frame 0 again
    c.send({"type": "stop"})
    with pytest.raises(websockets.ConnectionClosedOK):
        c.until(lambda: False, timeout=10)
    assert c.ws.close_code == 1000


def test_a_full_server_says_so(server):
    clients = [Client(server.ws_url) for _ in range(3)]
    extra = Client(server.ws_url)
    err = extra.message("error")
    assert "full" in err["message"]
    with pytest.raises(websockets.ConnectionClosed):
        extra.until(lambda: False, timeout=10)
    for c in clients:
        c.close()


def raw_never_reader(port: int) -> tuple[socket.socket, list[bytes]]:
    """A client that does the WebSocket handshake, starts, floods (junk, oversize, keys) and never reads."""
    import base64
    import os
    import struct

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffers fill soon
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:200]

    def frame(text: str) -> bytes:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = b"\x81" + (bytes([0x80 | n]) if n < 126 else (b"\xfe" + struct.pack(">H", n) if n < 65536
                                                              else b"\xff" + struct.pack(">Q", n)))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    s.sendall(frame(json.dumps({"type": "start", "seed": 0})))
    s.setblocking(False)
    junk = ('{"type": "action", "action": 3}', "}}junk{{", '{"type": "warp"}',
            '{"type": "action", "action": 1, "pad": "' + "y" * 20000 + '"}')
    return s, [frame(m) for m in junk]


class Flood:
    """Sends junk as fast as the server takes it; a partial send keeps its remainder, so frames stay whole."""

    def __init__(self, sock: socket.socket, junk: list[bytes]):
        self.sock, self.junk, self.buf, self.i = sock, junk, b"", 0

    def __call__(self, n: int = 400) -> None:
        for _ in range(n):
            if not self.buf:
                self.buf, self.i = self.junk[self.i % len(self.junk)], self.i + 1
            try:
                self.buf = self.buf[self.sock.send(self.buf):]
            except BlockingIOError:  # the server stopped reading us: what a flood should meet
                return


def fps_of(c: Client, seconds: float) -> float:
    k = len(c.frames)
    c.receive_for(seconds)
    return (len(c.frames) - k) / seconds


def test_a_malicious_client_neither_grows_memory_nor_slows_another(server):
    honest = started(server, seed=4)
    honest.receive_for(1.0)
    alone = fps_of(honest, 3.0)
    rss0 = server.rss_mib()
    bad, junk = raw_never_reader(server.port)
    flood = Flood(bad, junk)
    end = time.monotonic() + 6.0
    k = len(honest.frames)
    while time.monotonic() < end:
        flood()
        honest.receive_for(0.05)
    attacked = (len(honest.frames) - k) / 6.0
    sessions = server.health()["sessions"]
    rss1 = server.rss_mib()
    bad.close()
    honest.close()
    assert alone > 0.8 * FPS, f"the honest client alone gets {alone:.1f} fps of {FPS}"
    assert attacked >= 0.8 * alone, f"{attacked:.1f} fps under attack vs {alone:.1f} alone"
    assert rss1 - rss0 < 64, f"server RSS grew {rss1 - rss0:.0f} MiB under a client that never reads"
    queued = [s["queued"] for s in sessions]
    assert max(queued) <= 2 and any(s["paused"] or s["dropped"] > 0 for s in sessions), sessions


# ----- Atari: real frames first, the real game beside the model; the command line -------------------------
def test_atari_starts_from_real_frames_and_the_emulator_follows_the_same_keys(tmp_path):
    from causal_rcm.worlds.atari import rollout, sample_videos

    ckpt = random_bundle(tmp_path / "pong.safetensors", WorldConfig("atari", "Pong", 64, 9), "c3-3", patch=8)
    s = PlayServer(ckpt, "--fps", "15", "--side-by-side", "--device", "cpu", "--threads", "1")
    try:
        h = s.health()
        assert h["side_by_side"] and h["starts_from_game_state"] and h["actions"][:3] == ["NOOP", "FIRE", "RIGHT"]
        c = Client(s.ws_url)
        for bad in ({"type": "start", "seed": 0, "prompt": "a red ball"}, {"type": "start", "seed": 0, "game_state": "x"}):
            c.send(bad)
        c.send({"type": "start", "seed": 0, "game_state": "ale1:not-a-state"})  # refused by the worker
        c.until(lambda: sum(m["type"] == "error" for m in c.messages) >= 3)
        time.sleep(1.0)  # one start a second
        c.send({"type": "start", "seed": 0, "game_state": "0:2", "side_by_side": True})
        assert c.message("ready")["side_by_side"]
        c.until(lambda: len(c.frames) >= 4)
        c.send({"type": "action", "action": 2, "t_client": 5.0})  # RIGHT: the paddle goes up
        c.until(lambda: len(c.frames) >= 12 and len(c.emulator) >= 12)
        plain = started(s, seed=0)   # a client of the plain spec gets no emulator frames
        plain.until(lambda: len(plain.frames) >= 3)
        assert not plain.emulator
        plain.close()
        c.close()
    finally:
        rc, out = s.stop()
    assert rc == 0 and "stopped" in out and "Traceback" not in out, out
    errors = [m["message"] for m in c.messages if m["type"] == "error"]
    assert "no prompt" in errors[0] and "'<seed>:<index>'" in errors[1] and "not an Atari state" in errors[2]
    model = [f for _, f in c.frames]
    emu = [f for _, f in c.emulator]
    assert [f.index for f in model[:12]] == list(range(12)) == [f.index for f in emu[:12]]
    truth = sample_videos("Pong", 1, 0, 9, start=2)
    assert np.array_equal(decode_png(model[0].png), truth["videos"][0, 0])         # frame 0 is the game's
    assert [f.action for f in model[1:3]] == list(truth["actions"][0, :2])         # so are frames 1, 2
    assert any(f.t_client == 5.0 and f.action == 2 for f in model)
    played = np.array([[f.action for f in emu[1:12]]])
    expected = rollout("Pong", truth["states"][:1], played)[0]
    assert all(np.array_equal(decode_png(f.png), expected[k]) for k, f in enumerate(emu[:12]))


def test_play_refuses_bad_options_in_one_line(tmp_path, capsys):
    from causal_rcm.cli import main
    from causal_rcm.stream.sampling import Euler

    from .test_bundle import tiny_bundle

    teacher = tiny_bundle(Euler(steps=2)).save(tmp_path / "teacher.safetensors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    cases = {("--ckpt", str(tmp_path / "none.safetensors")): "no such bundle",
             ("--ckpt", str(teacher), "--fps", "0"): "--fps must be > 0",
             ("--ckpt", str(teacher), "--sink", "-1"): "--sink must be >= 0",
             ("--ckpt", str(teacher), "--port", str(busy.getsockname()[1])): "cannot listen",
             ("--ckpt", str(teacher), "--port", "0"): "causal teacher or a student"}
    for args, why in cases.items():
        assert main(["play", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1, err
    busy.close()


def test_one_worker_per_device_and_a_dead_worker_stops_the_server(tmp_path):
    import os
    import signal as signals

    ckpt = random_bundle(tmp_path / "agent.safetensors", WorldConfig("blobworld", "agent", 16, 9), patch=4)
    s = PlayServer(ckpt, "--fps", "10", "--device", "cpu,cpu", "--threads", "1", "--max-players", "2")
    try:
        assert s.health()["workers"] == 2 and s.health()["device"] == "cpu,cpu"
        a, b = started(s, seed=1), started(s, seed=2)
        a.until(lambda: len(a.frames) >= 3)
        b.until(lambda: len(b.frames) >= 3)
        assert sorted(x["worker"] for x in s.health()["sessions"]) == [0, 1]  # one session on each
        children = sorted(int(p) for t in os.listdir(f"/proc/{s.proc.pid}/task")
                          for p in open(f"/proc/{s.proc.pid}/task/{t}/children").read().split())
        workers = [p for p in children if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(workers) == 2
        os.kill(workers[0], signals.SIGKILL)  # the first session's worker dies (out of memory, a crash)
        try:
            a.message("error", timeout=20)
        except websockets.ConnectionClosed:
            pass
        assert any("the model worker on cpu stopped" in m.get("message", "") for m in a.messages), a.messages
        s.proc.wait(30)
    finally:
        rc, out = s.stop()
    assert rc == 2 and "the model worker on cpu stopped" in out.strip().splitlines()[-1], out


@pytest.mark.parametrize("pattern", ["c1-1", "c3-3"])
def test_a_blobworld_stream_may_start_from_the_rendered_world(tmp_path, pattern):
    """``--start-rendered``: the stream's first block is the world's rendered scene for the player's seed and
    prompt, the agent standing still, delivered as frames 0 … f − 1; the model goes on from it. Without it the
    model draws frame 0 itself."""
    from causal_rcm.serve.options import PlayOptions
    from causal_rcm.serve.session import Game, Player
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.worlds.registry import make_world

    world = WorldConfig("blobworld", "agent", 16, 9)
    bundle = Bundle.load(random_bundle(tmp_path / "m.safetensors", world, pattern), device="cpu")
    f = bundle.first_block_frames
    truth = make_world(world).sample(1, seed=5, prompts=["a red ball"], actions=np.zeros((1, 8), np.int64))
    for rendered in (True, False):
        out = []
        p = Player(Game(bundle, PlayOptions(start_rendered=rendered)), lambda fs, ms: out.extend(fs), lambda m: None)
        p.request_start(Start(5, "a red ball"))
        p.begin()
        for _ in range(4):
            p.advance()
        first = np.stack([decode_png(o.png) for o in out[:f]])
        assert [o.index for o in out[:f + 1]] == list(range(f + 1))
        assert np.array_equal(first, truth["videos"][0, :f]) == rendered
        if rendered:
            assert [o.action for o in out[:f]] == [-1] + [0] * (f - 1)
