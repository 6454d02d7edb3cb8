"""The server's side of the model worker (serve/worker.py): start it, talk to it, stop it.

The event loop never blocks on the worker: commands go into a small buffer that a sender thread writes to
the pipe in batches (held actions coalesced per session: only the latest matters), and a receiver thread
reads frames and messages and hands them to the loop with ``call_soon_threadsafe``. Both threads only
move bytes; every model call happens in the worker process.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Callable

from .options import PlayOptions
from .protocol import Start


class WorkerLink:
    def __init__(self, ckpt: str, name: str, options: PlayOptions):
        """Start the worker and wait until it has loaded the model (its load errors raise ValueError here)."""
        from .worker import worker_main

        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked threads, locks or CUDA state
        self._conn, child = ctx.Pipe()
        self.options = options
        self.proc = ctx.Process(target=worker_main, args=(ckpt, name, options, child), daemon=True,
                                name="causal-rcm-play-worker")
        self.proc.start()
        child.close()
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise ChildProcessError(f"the model worker exited while loading {ckpt} "
                                    f"(exit code {self.proc.exitcode})") from None
        if kind == "fatal":
            self.proc.join(5)
            raise ValueError(payload)
        self.info: dict = payload
        self.handlers: dict[int, tuple[Callable, Callable]] = {}
        self._next_sid = 0
        self._cond = threading.Condition()
        self._commands: list[tuple] = []
        self._actions: dict[int, tuple[int, float]] = {}
        self._closing = False
        self.dead: str | None = None    # why the worker stopped, once it has
        self.on_dead: Callable[[str], None] | None = None

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
                    self._loop.call_soon_threadsafe(self._died, f"exit code {self.proc.exitcode}")
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

    def _died(self, why: str) -> None:
        self.proc.join(1)
        self.dead = f"the model worker stopped ({why}, exit code {self.proc.exitcode})"
        for _, on_message in list(self.handlers.values()):
            on_message({"type": "error", "message": self.dead})
        if self.on_dead is not None:
            self.on_dead(self.dead)

    def _put(self, command: tuple) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    def open(self, on_frames: Callable, on_message: Callable) -> int | None:
        """A new session's id, or None when the server already has ``max_players`` (or no worker)."""
        if self.dead or len(self.handlers) >= self.options.max_players:
            return None
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

    def shutdown(self, timeout: float = 20.0) -> None:
        """Ask the worker to quit after the block in progress; kill it if it does not."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
