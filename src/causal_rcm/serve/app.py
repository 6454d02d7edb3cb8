"""The HTTP + WebSocket front of live play (shared/specs/play.md; docs/play.md for what this server adds).

    GET /        the play page (serve/static, no external assets)
    GET /health  the model, its world, actions and frame rate (+ the players and their queues)
    WS  /ws      one session per connection

This process holds no model: the model worker process (serve/worker.py, reached through serve/link.py)
generates every frame. Per connection three coroutines share one ``Outbox``: the receive loop parses
client messages (errors are answered, never raised) and forwards starts and held actions to the worker;
the worker's frames arrive on the loop and go into the outbox; the send loop writes control messages
first, then frames, each at its due time. The outbox holds at most a block's frames plus one (the oldest
is dropped: newest-frame-wins) and a few control messages, so a client that reads slowly loses old frames
and one that never reads costs a bounded amount of memory; its session is paused once a send has been
stuck for ``STALL_S``. A flooding client is read at most ``RATE`` messages a second: past that the server
stops reading it, and TCP pushes back on the client, not on the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import threading
import time
from collections import deque
from pathlib import Path

from .link import WorkerLink, WorkerPool
from .options import PlayOptions
from .protocol import Action, OutFrame, ProtocolError, Start, Stop, check_start, pack_frame, parse_message

STATIC = Path(__file__).parent / "static"
WS_MAX_SIZE = 1 << 20  # above this the WebSocket layer itself closes (1009); up to it, the spec's error message
CONTROL_MAX = 16       # queued control messages per client (``ready`` always gets in)
RATE, BURST = 200.0, 400  # client messages per second read from one connection (a key press is a few)
STALL_S = 2.0          # a send stuck this long means the client reads nothing: pause its session
START_S = 1.0          # at most one start a second per client: a start costs the worker a new stream
                       # (an Atari one replays the game's burn-in), so a flood of them would starve the others
STATS_S = 1.0
# What the kernel may hold for one client (accepted sockets inherit it from the listening one). Linux
# would otherwise grow it to 4 MiB: a client that stops reading would absorb minutes of small frames before
# its send blocks and its session pauses. 256 KiB (doubled by the kernel) still carries 5 MB/s at 100 ms RTT.
SEND_BUFFER = 128 * 1024


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (0 for no values)."""
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


class Outbox:
    """What waits to be sent to one client; loop-side only."""

    def __init__(self, frames_max: int):
        self.frames: deque[OutFrame] = deque()
        self.control: deque[dict] = deque()
        self.frames_max = frames_max
        self.dropped = self.dropped_control = 0
        self.event = asyncio.Event()

    def put_frames(self, frames: list[OutFrame]) -> None:
        for f in frames:
            if len(self.frames) >= self.frames_max:
                old = self.frames.popleft()
                self.dropped += 1
                # the first frame reflecting an action echoes its t_client: if that one is dropped, the
                # next frame sent reflects the action too and carries the echo instead
                nxt = self.frames[0] if self.frames else f
                if old.t_client >= 0 and nxt.t_client < 0:
                    nxt.t_client = old.t_client
            self.frames.append(f)
        self.event.set()

    def put_control(self, msg: dict) -> None:
        if msg["type"] == "ready":  # a new stream: frames of the old one are void
            self.frames.clear()
        elif len(self.control) >= CONTROL_MAX:
            self.dropped_control += 1
            return
        self.control.append(msg)
        self.event.set()


class Bucket:
    """A token bucket: seconds to wait before reading the next message (0 within the rate)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), time.monotonic()

    def take(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate) - 1
        self.t = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Connection:
    def __init__(self, ws, pool: WorkerPool):
        self.ws, self.pool, self.info = ws, pool, pool.info
        self.link: WorkerLink | None = None
        self.outbox = Outbox(int(self.info["block_frames"]) + 1)
        self.gen_ms: deque[float] = deque(maxlen=256)
        self.sent_at: deque[float] = deque(maxlen=4096)
        self.sent = 0
        self.last_index = -1
        self.sending_since: float | None = None
        self.started = self.running = self.paused = False
        self.sid: int | None = None
        self.last_start = float("-inf")

    def _on_frames(self, frames: list[OutFrame], gen_ms: float) -> None:
        if gen_ms > 0:
            self.gen_ms.append(gen_ms)
        self.outbox.put_frames(frames)

    def _on_message(self, msg: dict) -> None:
        if msg["type"] == "ready":
            self.running = True
        self.outbox.put_control(msg)

    def describe(self) -> dict:
        return {"frame": self.last_index, "sent": self.sent, "dropped": self.outbox.dropped,
                "queued": len(self.outbox.frames), "paused": self.paused, "running": self.running,
                "worker": self.pool.links.index(self.link) if self.link is not None else None}

    async def _send(self, data: str | bytes) -> None:
        self.sending_since = time.monotonic()
        key = "text" if isinstance(data, str) else "bytes"
        await self.ws.send({"type": "websocket.send", key: data})
        self.sending_since = None

    async def run(self) -> None:
        await self.ws.accept()
        opened = self.pool.open(self._on_frames, self._on_message)
        if opened is None:
            why = self.pool.dead or f"the server is full ({self.pool.options.max_players} players); try again later"
            await self._send(json.dumps({"type": "error", "message": why}))
            await self.ws.close(1013)
            return
        self.link, self.sid = opened
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._stats_loop())]
        stopped = False
        try:
            stopped = await self._receive_loop()
        finally:
            self.link.close(self.sid)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if stopped:
            try:
                await asyncio.wait_for(self.ws.close(1000), 2.0)
            except Exception:  # noqa: BLE001 - the client may be gone already
                pass

    async def _receive_loop(self) -> bool:
        """Until the client disconnects (False) or sends stop (True)."""
        bucket = Bucket(RATE, BURST)
        n_actions = len(self.info["actions"])
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return False
            data = msg.get("text")
            try:
                m = parse_message(data if data is not None else (msg.get("bytes") or b""), n_actions)
                if isinstance(m, Stop):
                    return True
                if isinstance(m, Start):
                    m = check_start(m, self.info["prompts"], self.info["starts_from_game_state"])
                    if time.monotonic() - self.last_start < START_S:
                        raise ProtocolError(f"start: at most one start every {START_S:g} s; send it again")
                    self.last_start = time.monotonic()
                    self.link.start(self.sid, m)
                    self.started = True  # actions sent right after start are held for the new stream
                elif isinstance(m, Action):
                    if not self.started:
                        raise ProtocolError('action before start: send {"type": "start", "seed": 0} first')
                    self.link.hold(self.sid, m.action, m.t_client)
            except ProtocolError as e:
                self.outbox.put_control({"type": "error", "message": str(e)})
            wait = bucket.take()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _send_loop(self) -> None:
        ob = self.outbox
        try:
            while True:
                await ob.event.wait()
                ob.event.clear()
                while ob.control or ob.frames:
                    if ob.control:
                        await self._send(json.dumps(ob.control.popleft()))
                        continue
                    delay = ob.frames[0].due - time.monotonic()
                    if delay > 0:  # the frames of one block are shown 1 / fps apart
                        await asyncio.sleep(delay)
                        continue  # the head may have been dropped for a newer frame meanwhile
                    f = ob.frames.popleft()
                    await self._send(pack_frame(f.index, f.action, f.t_client, f.png))
                    if f.emulator_png is not None:
                        await self._send(pack_frame(f.index, f.action, -1.0, f.emulator_png, emulator=True))
                    self.sent += 1
                    self.last_index = f.index
                    self.sent_at.append(time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client went away; the receive loop ends the session
            return

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_S)
            now = time.monotonic()
            stuck = self.sending_since is not None and now - self.sending_since > STALL_S
            if stuck != self.paused:
                self.paused = stuck
                self.link.pause(self.sid, stuck)
            if not self.running:
                continue
            gen = list(self.gen_ms)
            self.outbox.put_control({"type": "stats", "fps": sum(1 for t in self.sent_at if t > now - STATS_S) / STATS_S,
                                     "gen_ms_p50": quantile(gen, 0.5), "gen_ms_p99": quantile(gen, 0.99),
                                     "frame": self.last_index, "dropped": self.outbox.dropped,
                                     "players": self.pool.players})


def create_app(pool: WorkerPool, on_dead=None):
    """The Starlette app; its lifespan connects the model workers to the loop and stops them at the end."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles

    connections: set[Connection] = set()

    async def page(request):
        return FileResponse(STATIC / "play.html", headers={"Cache-Control": "no-cache"})

    async def health(request):
        body = {**pool.info, "players": pool.players, "sessions": [c.describe() for c in list(connections)]}
        if pool.dead:
            return JSONResponse({**body, "error": pool.dead}, status_code=503)
        return JSONResponse(body)

    async def play(ws):
        c = Connection(ws, pool)
        connections.add(c)
        try:
            await c.run()
        finally:
            connections.discard(c)

    @asynccontextmanager
    async def lifespan(app):
        pool.attach(asyncio.get_running_loop(), on_dead)
        try:
            yield
        finally:
            await asyncio.to_thread(pool.shutdown)

    return Starlette(routes=[Route("/", page), Route("/health", health), WebSocketRoute("/ws", play),
                             Mount("/static", StaticFiles(directory=STATIC))], lifespan=lifespan)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a busy port fails at once (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
    return sock


def serve(pool: WorkerPool, sock: socket.socket, log_level: str = "warning") -> None:
    """Run until Ctrl-C or SIGTERM (a second one forces): uvicorn closes every WebSocket (1012), then the
    lifespan stops the worker. A worker that dies stops the server too (ChildProcessError)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own handlers re-raise Ctrl-C once it has shut down cleanly; ours just ask it to stop
            yield

    def stop(_why=None):
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    config = uvicorn.Config(create_app(pool, on_dead=stop), ws="websockets-sansio", ws_max_size=WS_MAX_SIZE,
                            ws_per_message_deflate=False,  # PNG frames do not compress; deflate costs time
                            log_level=log_level, timeout_graceful_shutdown=3, lifespan="on")
    server = Server(config)

    async def main():
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
        await server.serve(sockets=[sock])

    asyncio.run(main())
    if pool.dead:
        raise ChildProcessError(pool.dead)


def play(ckpt: str, host: str, port: int, opts: PlayOptions) -> None:
    """``causal-rcm play``: bind (a busy port fails before the model loads), start one model worker per
    device of ``opts.device`` (a comma-separated list), print the URL, serve until stopped."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must lie in 0..65535, got {port}")
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: no such bundle file (a .safetensors from train or export)")
    devices = [d.strip() for d in opts.device.split(",")] if opts.device else [None]
    if opts.device and not all(devices):
        raise ValueError(f"--device {opts.device!r}: give a device (cpu, cuda, cuda:N) or a comma-separated list")
    sock = bind(host, port)
    pool = WorkerPool(ckpt, Path(ckpt).name, opts, devices)  # the model loads in its worker process(es)
    info = pool.info
    host, port = sock.getsockname()[:2]
    print(f"playing {ckpt}: {info['world']}, {info['pattern']}, window {info['window']} + sink {info['sink']} "
          f"blocks, {opts.fps:g} fps target, on {info['device']}" + (", side by side" if info["side_by_side"] else ""))
    print(f"open http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        serve(pool, sock)
    finally:
        pool.shutdown()
    print("causal-rcm play: stopped", flush=True)
