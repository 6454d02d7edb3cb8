"""One player's endless stream (``Player``) and what all players of one bundle share (``Game``).

Habit 13: no model code here. A player holds an ``engine.StreamState`` and calls ``engine.step`` with the
held action; frames go through ``codec.to_uint8`` to PNG. Atari sessions start from real frames (the
emulator's, written as the first block's clean context) and, with ``--side-by-side``, step a real
emulator with the same actions so the page can show where the model departs from the game.

Everything here runs in the device's model worker process (serve/worker.py), one call at a time: the
server process sends it starts and held actions, and gets frames back.
"""
from __future__ import annotations

import io
import time
from typing import Callable

import numpy as np
import torch

from ..kv_policy import KVPolicy
from ..masks import ChunkPattern
from ..models.conditioning import encode_actions, frame_action_ids
from ..runtime import autocast_for
from ..stream.bundle import Bundle
from ..stream.codec import to_uint8, to_unit
from ..stream.engine import Noise
from ..worlds.registry import make_world
from .options import PlayOptions
from .protocol import GAME_REF, NO_T_CLIENT, OutFrame, Start


def fit_window(pattern: ChunkPattern, trained_frames: int, sink: int) -> int:
    """The largest window W (blocks) whose frames, with the sink blocks', fit the trained video length:
    positions keep growing in an endless stream, but no block then attends to more frames than in training."""
    sink_frames = 0 if sink == 0 else pattern.first + (sink - 1) * pattern.chunk
    w = (trained_frames - sink_frames) // pattern.chunk
    if w < 1:
        raise ValueError(f"a sink of {sink} blocks leaves no room for a window in {trained_frames} trained "
                         f"frames; lower --sink")
    return w


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG", compress_level=1)  # tiny frames: speed over size
    return buf.getvalue()


class Game:
    """What every player of one bundle shares, read-only: the bundle, its world, the engine and options."""

    def __init__(self, bundle: Bundle, options: PlayOptions, name: str = "model"):
        if not bundle.causal:
            raise ValueError("live play streams block by block: give a causal teacher or a student bundle, "
                             "not a bidirectional teacher")
        self.bundle, self.options, self.name = bundle, options, name
        self.world = make_world(bundle.world_or_raise())
        self.pattern = ChunkPattern.parse(bundle.sampling.pattern)
        C, T, H, W = bundle.latent_shape
        self.frame_size = (bundle.world.size, bundle.world.size)
        self.window = options.window or fit_window(self.pattern, T, options.sink)
        self.policy = KVPolicy(self.window, options.sink)
        cuda = bundle.device.type == "cuda"
        if options.graphs and not cuda:
            raise ValueError("--graphs replays CUDA graphs: it needs --device cuda")
        # launch-bound small models: graph replay cuts a c1-1 Atari frame from 34 to 5 ms on an H100 (docs/play.md)
        self.engine = bundle.engine(self.policy, graphs=cuda if options.graphs is None else options.graphs)
        self.stride = bundle.codec.temporal_stride
        self.n_actions = bundle.net.cfg.action_dim // self.stride
        if self.n_actions and self.n_actions != len(self.world.action_names):
            raise ValueError(f"the model takes {self.n_actions} actions, its world names "
                             f"{len(self.world.action_names)}; the bundle's world config is wrong")
        self.atari = self.world.config.name == "atari"
        self.side_by_side = options.side_by_side and self.atari
        if options.side_by_side and not self.atari:
            raise ValueError("--side-by-side shows the real game beside the model: it needs an Atari bundle")

    def health(self) -> dict:
        w = self.world.config
        return {"model": self.name, "world": f"{w.name}/{w.variant}", "actions": list(self.world.action_names),
                "fps_target": self.options.fps, "prompts": list(self.world.prompts()),
                "frame_size": list(self.frame_size), "pattern": self.pattern.name,
                "window": self.window, "sink": self.options.sink, "side_by_side": self.side_by_side,
                "starts_from_game_state": self.atari, "max_players": self.options.max_players,
                "block_frames": max(self.bundle.first_block_frames, self.pattern.chunk * self.stride)}


class Player:
    """One session's stream. ``deliver(frames, gen_ms)`` and ``notify(msg)`` carry its output away."""

    def __init__(self, game: Game, deliver: Callable[[list[OutFrame], float], None],
                 notify: Callable[[dict], None]):
        self.game = game
        self._deliver, self._notify = deliver, notify
        self.pending: Start | None = None      # a start not run yet
        self.action, self.t_client = 0, NO_T_CLIENT
        self.paused = False                    # the client reads nothing: the device's time goes elsewhere
        self.state = None
        self.index = 0                         # the next pixel frame's index
        self.due = 0.0                         # time.monotonic() when the next block's generation may begin
        self.emulator = None
        self.emulator_ended = False
        self.emulator_frame = None             # what the real game shows now (uint8 [H, W, 3])
        self.side_by_side = False

    def request_start(self, m: Start) -> None:
        self.pending = m
        self.action, self.t_client = 0, NO_T_CLIENT

    def hold(self, action: int, t_client: float) -> None:
        self.action, self.t_client = action, t_client

    @property
    def running(self) -> bool:
        return self.state is not None

    def _take(self) -> tuple[int, float]:
        """The held action, and its t_client once: only the first frame that reflects it echoes it."""
        a, t = self.action, self.t_client
        self.t_client = NO_T_CLIENT
        return a, t

    def begin(self) -> None:
        """Run the pending start: a fresh stream (and emulator), then ``ready``; errors go to the client."""
        m, self.pending = self.pending, None
        g, b = self.game, self.game.bundle
        old, self.state, self.index = self.state, None, 0  # the last stream's buffers and graphs are reused
        dev = b.device
        prompts = g.world.prompts()
        prompt = m.prompt or (prompts[m.seed % len(prompts)] if prompts else "")
        ctx, ctx_u = b.contexts([prompt])
        first = []
        prefill = prefill_actions = None
        self.side_by_side = g.side_by_side and m.side_by_side
        if g.atari or g.options.start_rendered:
            frames, acts = self._start_frames(m) if g.atari else self._rendered_start(m.seed, prompt)
            prefill = b.codec.encode(to_unit(frames[None]).to(dev))
            prefill_actions = None if not g.n_actions else encode_actions(
                frame_action_ids(acts[None], prefill.shape[2], self.game.stride), g.n_actions, dev)
            now = time.monotonic()
            first = [OutFrame(k, -1 if k == 0 else int(acts[k - 1]), NO_T_CLIENT, png(f),
                              png(f) if self.side_by_side else None, now + k / g.options.fps)
                     for k, f in enumerate(frames)]
        with torch.no_grad(), autocast_for(dev):
            self.state = g.engine.start(ctx, ctx_u, Noise(m.seed, [0], dev), prefill, prefill_actions, reuse=old)
        self.index = len(first)
        self._notify({"type": "ready", "seed": m.seed, "prompt": prompt, "frame": 0,
                      "side_by_side": self.side_by_side, "actions": list(g.world.action_names),
                      "fps_target": g.options.fps, "pattern": g.pattern.name})
        if first:
            self._deliver(first, 0.0)
        self.due = time.monotonic() + len(first) / g.options.fps

    def _rendered_start(self, seed: int, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """A rendered world's first block uint8 [f, H, W, 3] for the prompt (scene seeded by ``seed``), the
        agent standing still ("none") between its frames: the start the model is evaluated from."""
        g = self.game
        f = g.bundle.first_block_frames
        acts = np.zeros((1, g.world.config.frames - 1), np.int64) if g.n_actions else None
        s = g.world.sample(1, seed=seed, prompts=[prompt] if g.world.prompts() else None, actions=acts)
        return s["videos"][0, :f], np.zeros(f - 1, np.int64)

    def _start_frames(self, m: Start) -> tuple[np.ndarray, np.ndarray]:
        """Atari: the first block's real frames uint8 [f, H, W, 3] and the actions between them [f − 1];
        the (per-player) emulator is left at the last of them, ready to go on with the player's actions."""
        from ..worlds.atari import Emulator, record_video, resize

        g = self.game
        game = g.world.config.variant
        f = g.bundle.first_block_frames
        if self.emulator is None:
            self.emulator = Emulator(game)
        ref = m.game_state or f"{m.seed}:0"
        hit = GAME_REF.fullmatch(ref)
        if hit:  # spec atari.md §2 regenerates video <index> of data seed <seed> exactly
            _, acts, state = record_video(self.emulator, int(hit[1]), int(hit[2]), max(g.world.config.frames, f))
            acts = acts[:f - 1]
        else:    # a state string: the first block's later frames follow with NOOP
            state, acts = ref, np.zeros(f - 1, np.int64)
        frames = [resize(self.emulator.restore(state))]
        self.emulator_ended = False
        for a in acts:
            obs, ended = self.emulator.step(int(a))
            frames.append(resize(obs))
            if ended:
                raise ValueError("the game ends inside its first block; start from another game_state")
        self.emulator_frame = frames[-1]
        return np.stack(frames), np.asarray(acts, np.int64)

    def advance(self) -> int:
        """Generate the next block with the held action and hand its frames over; returns their number."""
        g, st = self.game, self.state
        dev = g.bundle.device
        action, t_client = self._take()
        s, e = g.pattern.block_bounds(st.block)
        actions = None
        if g.n_actions:
            groups = np.full((1, e - s, g.stride), action, np.int64)
            if s == 0:
                groups[:, 0] = -1  # frame 0 of the stream follows no action
            actions = encode_actions(groups, g.n_actions, dev)
        with torch.no_grad(), autocast_for(dev):
            x, st = g.engine.step(st, actions)
        gen_ms = 1000 * st.seconds[-1]
        st.seconds.clear()  # an endless stream would otherwise keep every block's time
        frames = to_uint8(x.float())[0]
        now = time.monotonic()
        out = []
        for k, frame in enumerate(frames):
            a = -1 if (self.index == 0 or not g.n_actions) else action
            out.append(OutFrame(self.index, a, t_client if k == 0 else NO_T_CLIENT, png(frame),
                                self._emulate(a) if self.side_by_side else None, now + k / g.options.fps))
            self.index += 1
        self._deliver(out, gen_ms)
        return len(out)

    def _emulate(self, action: int) -> bytes:
        """The real game's next frame for the same action (its last frame again once the episode ended)."""
        from ..worlds.atari import resize

        if not self.emulator_ended and action >= 0:
            obs, self.emulator_ended = self.emulator.step(action)
            self.emulator_frame = resize(obs)
        return png(self.emulator_frame)
