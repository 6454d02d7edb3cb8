"""The server's side of the model workers (serve/worker.py): start them, talk to them, stop them.

``WorkerPool`` runs one worker per device (``--device cuda:0,cuda:1``) and gives each new session to the
least busy one; ``WorkerLink`` is one worker.

The event loop never blocks on the worker: commands go into a small buffer that a sender thread writes to
the pipe in batches (held actions coalesced per session: only the latest matters), and a receiver thread
reads frames and messages and hands them to the loop with ``call_soon_threadsafe``. Both threads only
move bytes; every model call happens in the worker process.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
from typing import Callable

from .options import PlayOptions
from .protocol import Start


class WorkerLink:
    def __init__(self, ckpt: str, name: str, options: PlayOptions):
        """Start the worker; ``wait_ready`` waits until it has loaded the model."""
        from .worker import worker_main

        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked threads, locks or CUDA state
        self._conn, child = ctx.Pipe()
        self.ckpt, self.options = ckpt, options
        self.proc = ctx.Process(target=worker_main, args=(ckpt, name, options, child), daemon=True,
                                name="causal-rcm-play-worker")
        self.proc.start()
        child.close()
        self.info: dict = {}
        self.handlers: dict[int, tuple[Callable, Callable]] = {}
        self._next_sid = 0
        self._cond = threading.Condition()
        self._commands: list[tuple] = []
        self._actions: dict[int, tuple[int, float]] = {}
        self._closing = False
        self.dead: str | None = None    # why the worker stopped, once it has
        self.on_dead: Callable[[str], None] | None = None

    def wait_ready(self) -> dict:
        """The worker's description of its model, once loaded; its load errors raise ValueError here."""
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise ChildProcessError(f"the model worker exited while loading {self.ckpt} "
                                    f"(exit code {self.proc.exitcode})") from None
        if kind == "fatal":
            self.proc.join(5)
            raise ValueError(payload)
        self.info = payload
        return payload

    # ----- threads ----------------------------------------------------------------------------------------
    def attach(self, loop) -> None:
        """Start moving messages; callbacks then run on ``loop``."""
        self._loop = loop
        threading.Thread(target=self._send_loop, name="play-link-send", daemon=True).start()
        threading.Thread(target=self._receive_loop, name="play-link-receive", daemon=True).start()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not (self._commands or self._actions or self._closing):
                    self._cond.wait()
                commands, actions = self._commands, self._actions
                self._commands, self._actions = [], {}
                closing = self._closing
            try:
                self._conn.send(("batch", commands + ([("quit",)] if closing else []), actions))
            except (OSError, EOFError):
                return
            if closing:
                return

    def _receive_loop(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._closing:
                    self._loop.call_soon_threadsafe(self._died)
                return
            try:
                self._loop.call_soon_threadsafe(self._dispatch, msg)
            except RuntimeError:  # the loop is closed: the server is shutting down
                return

    # ----- loop side ------------------------------------------------------------------------------------
    def _dispatch(self, msg) -> None:
        h = self.handlers.get(msg[1])
        if h is None:  # a session that has ended meanwhile
            return
        if msg[0] == "frames":
            h[0](msg[2], msg[3])
        elif msg[0] == "msg":
            h[1](msg[2])

    def _died(self) -> None:
        self.proc.join(1)
        self.dead = (f"the model worker on {self.info.get('device', 'its device')} stopped "
                     f"(exit code {self.proc.exitcode})")
        for _, on_message in list(self.handlers.values()):
            on_message({"type": "error", "message": self.dead})
        if self.on_dead is not None:
            self.on_dead(self.dead)

    def _put(self, command: tuple) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    def open(self, on_frames: Callable, on_message: Callable) -> int:
        """A new session's id on this worker."""
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        self.handlers[sid] = (on_frames, on_message)
        self._put(("open", sid))
        return sid

    def start(self, sid: int, m: Start) -> None:
        with self._cond:
            self._actions.pop(sid, None)  # an action sent before this start is void
            self._commands.append(("start", sid, m))
            self._cond.notify()

    def hold(self, sid: int, action: int, t_client: float) -> None:
        with self._cond:
            self._actions[sid] = (action, t_client)
            self._cond.notify()

    def pause(self, sid: int, paused: bool) -> None:
        self._put(("pause", sid, paused))

    def close(self, sid: int) -> None:
        if self.handlers.pop(sid, None) is not None:
            with self._cond:
                self._actions.pop(sid, None)
                self._commands.append(("close", sid))
                self._cond.notify()

    def quit(self) -> None:
        """Ask the worker to quit after the block in progress."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if not hasattr(self, "_loop"):  # never attached: no sender thread to pass it on
            try:
                self._conn.send(("batch", [("quit",)], {}))
            except (OSError, EOFError):
                pass

    def shutdown(self, timeout: float = 20.0) -> None:
        """Quit, and kill the worker if it does not."""
        self.quit()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class WorkerPool:
    """One model worker per device; a new session goes to the worker with the fewest sessions."""

    def __init__(self, ckpt: str, name: str, options: PlayOptions, devices: list[str | None]):
        self.options = options
        self.links = [WorkerLink(ckpt, name, dataclasses.replace(options, device=d)) for d in devices]
        try:  # the workers load their models side by side
            infos = [link.wait_ready() for link in self.links]
        except BaseException:
            self.shutdown(5.0)
            raise
        self.info = {**infos[0], "device": ",".join(i["device"] for i in infos), "workers": len(infos)}

    @property
    def players(self) -> int:
        return sum(len(link.handlers) for link in self.links)

    @property
    def dead(self) -> str | None:
        return next((link.dead for link in self.links if link.dead), None)

    def open(self, on_frames: Callable, on_message: Callable) -> tuple[WorkerLink, int] | None:
        """(the worker, the session id), or None when the server has ``max_players`` (or lost a worker)."""
        if self.dead or self.players >= self.options.max_players:
            return None
        link = min(self.links, key=lambda w: len(w.handlers))
        return link, link.open(on_frames, on_message)

    def attach(self, loop, on_dead: Callable[[str], None] | None = None) -> None:
        for link in self.links:
            link.on_dead = on_dead
            link.attach(loop)

    def shutdown(self, timeout: float = 20.0) -> None:
        for link in self.links:
            link.quit()
        for link in self.links:
            link.shutdown(timeout)
