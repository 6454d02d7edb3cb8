"""The device's model worker: a process of its own that runs every model call of a play server.

A process, not a thread, because one Python thread busy in the server (parsing a flood of messages,
sending frames) would otherwise hold the GIL between the model's many small ops and slow every stream
tenfold; here nothing competes with the model but the model.

The worker steps all its players in turn: it picks the player whose next block is due first (a pending
start first of all), runs that block, and waits for the next due time or the next command, whichever
comes first. A player's blocks are due at most ``fps`` frames per second apart, so a fast model paces
every stream at the target rate and a slow one serves the players round-robin, each as fast as the
device allows. Commands from the server come in batches (``serve/link.py``); the held actions in a batch
are the latest per player, so a block always uses the action most recently received before it began.

    server → worker   ("batch", [("open" | "close", sid) | ("start", sid, Start) | ("pause", sid, bool)
                                 | ("quit",)], {sid: (action, t_client)})
    worker → server   ("hello", health) | ("fatal", message) | ("frames", sid, [OutFrame], gen_ms)
                      | ("msg", sid, {"type": "ready" | "error", ...})
"""
from __future__ import annotations

import logging
import signal
import time

log = logging.getLogger("causal_rcm.play")


def worker_main(ckpt: str, name: str, options, conn) -> None:
    """The worker process's entry point (multiprocessing ``spawn``)."""
    # Ctrl-C reaches the whole process group; the server stops this worker itself, after its sessions
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        from ..stream.bundle import Bundle
        from .session import Game

        if options.threads:
            torch.set_num_threads(options.threads)
        game = Game(Bundle.load(ckpt, device=options.device), options, name=name)
    except Exception as e:  # noqa: BLE001 - every load failure becomes the CLI's one-line error
        conn.send(("fatal", str(e).splitlines()[0] if str(e) else type(e).__name__))
        return
    conn.send(("hello", {**game.health(), "device": str(game.bundle.device)}))
    Scheduler(game, conn).run()


class Scheduler:
    def __init__(self, game, conn):
        self.game, self.conn = game, conn
        self.players: dict = {}

    def _player(self, sid: int):
        from .session import Player

        return Player(self.game, lambda frames, gen_ms: self.conn.send(("frames", sid, frames, gen_ms)),
                      lambda msg: self.conn.send(("msg", sid, msg)))

    def _pick(self):
        """(sid, seconds until due) of the player to serve next, or (None, None) when there is nothing to do."""
        best = None
        for sid, p in self.players.items():
            if p.pending is not None:
                return sid, 0.0
            if p.running and not p.paused and (best is None or p.due < self.players[best].due):
                best = sid
        return (None, None) if best is None else (best, self.players[best].due - time.monotonic())

    def _apply(self, msg) -> bool:
        """One batch of commands; False on quit."""
        _, commands, actions = msg
        for c in commands:
            kind, sid = c[0], (c[1] if len(c) > 1 else None)
            if kind == "quit":
                return False
            if kind == "open":
                self.players[sid] = self._player(sid)
            elif kind == "close":
                self.players.pop(sid, None)
            elif sid in self.players:
                p = self.players[sid]
                if kind == "start":
                    p.request_start(c[2])
                elif kind == "pause":
                    p.paused = c[2]
        for sid, (a, t) in actions.items():
            if sid in self.players:
                self.players[sid].hold(a, t)
        return True

    def run(self) -> None:
        fps = self.game.options.fps
        while True:
            sid, delay = self._pick()
            try:
                # commands first (a start, the action held when the next block begins), but a stream of them
                # (a client holding keys down) must not keep a due block waiting: take what is there, go on
                if self.conn.poll(None if sid is None else max(0.0, delay)):
                    for _ in range(256):
                        if not self._apply(self.conn.recv()):
                            return
                        if not self.conn.poll(0):
                            break
                    sid, delay = self._pick()
                    if sid is None or delay > 0:
                        continue
            except (EOFError, OSError):  # the server is gone
                return
            p = self.players[sid]
            try:
                if p.pending is not None:
                    p.begin()
                else:
                    n = p.advance()
                    # the next block is due n / fps after this one was, or now if the model is behind
                    p.due = max(p.due + n / fps, time.monotonic())
            except (EOFError, OSError):
                return
            except Exception as e:  # noqa: BLE001 - one session's failure must not end the others' games
                p.state = None
                why = str(e).splitlines()[0][:200] if str(e) else ""
                if isinstance(e, ValueError):  # the client's input (e.g. a corrupt game state): one line
                    log.warning("play session %d stopped: %s", sid, why)
                else:
                    log.exception("play session %d failed", sid)
                self.conn.send(("msg", sid, {"type": "error", "message": f"this session stopped: {type(e).__name__}: "
                                             f"{why}; send start to begin again"}))
