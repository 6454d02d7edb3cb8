"""The Atari world (shared/specs/atari.md): Pong and Breakout frames from the Arcade Learning Environment,
with the emulator as exact ground truth for any action sequence.

    world = build(WorldConfig("atari", "Pong", size=64, frames=16))
    s = world.sample(8, seed=0)      # videos uint8 [8, 16, 64, 64, 3], actions int64 [8, 15], states str [8]
    truth = rollout("Pong", s["states"], other_actions)    # what the emulator shows for other actions

Readings of the spec where it leaves a detail open (each stated where it is implemented):

- §2 step 5, "repeat from step 3 without resetting": after an episode end the ALE ignores every further
  action (it stays terminal and stops emulating), so a literal reading never finishes. We call
  ``env.reset()`` without a seed (the emulator starts a new game; neither the seed nor the generator
  ``rng`` nor the policy is reset) and draw a new burn-in. An end on any burn-in or recorded step,
  the step that makes frame T − 1 included, discards the attempt.
- §2 step 2: the policy is one sticky stream per video, across burn-ins and discarded attempts: only the
  very first action is drawn without a ``rng.random()``. The burn-in length is drawn before the policy's
  first draw (the order of steps 1–3).
- §2 ``states``: an ALE state does not hold the screen (after ``restoreState`` the screen still shows
  what was emulated last), so the state string carries the ALE state *and* the 210×160 screen of frame 0,
  and names its game (``encode_state``). A state string is about 6,000 ASCII characters: most of an ALE
  state is the emulator's Mersenne-Twister state (about 2.5 KB of entropy), so zlib cannot shrink it further.
- Ground truth after an episode end inside a given action sequence (``rollout``): the frame of the step
  that ended the episode is kept for every later frame (the ALE itself stops emulating there).
"""
from __future__ import annotations

import base64
import binascii
import struct
import zlib
from dataclasses import dataclass

import numpy as np

GAMES = ("Pong", "Breakout")
ACTION_NAMES = {  # the minimal action sets of ale-py (§1), checked against the emulator when it is made
    "Pong": ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
    "Breakout": ("NOOP", "FIRE", "RIGHT", "LEFT"),
}
SIZE = 64            # §1: frames are resized to 64×64
KEEP_PROB = 0.75     # §2 step 2: the sticky policy keeps its previous action with this probability
BURN_IN_MAX = 200    # §2 step 3: burn-in length ~ integers(0, 200)
STATE_PREFIX = "ale1:"
_STATE_MAGIC = b"CRCMALE1"


def check_game(game: str) -> str:
    if game not in GAMES:
        raise ValueError(f"unknown Atari game {game!r}; choose one of {list(GAMES)}")
    return game


def resize(obs: np.ndarray, size: int = SIZE) -> np.ndarray:
    """§1: one 210×160×3 uint8 observation -> uint8 [size, size, 3] by PIL's BOX filter."""
    from PIL import Image

    return np.asarray(Image.fromarray(obs).resize((size, size), Image.Resampling.BOX))


# ----- emulator state strings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtariState:
    """A decoded state string: the game, the ALE state and the screen uint8 [210, 160, 3] it shows."""

    game: str
    ale: object          # ale_py.ALEState
    screen: np.ndarray


def encode_state(game: str, ale_state, screen: np.ndarray) -> str:
    """``"ale1:" + base64(zlib(magic, game, ALEState.serialize(), screen))``: plain ASCII, no pickle, so it
    travels in an npz str array and in a JSON play message; deterministic for the same emulator state."""
    raw, g = ale_state.serialize(), check_game(game).encode()
    screen = np.ascontiguousarray(screen, dtype=np.uint8)
    h, w, c = screen.shape
    head = struct.pack("<8sB", _STATE_MAGIC, len(g)) + g + struct.pack("<IHHB", len(raw), h, w, c)
    return STATE_PREFIX + base64.b64encode(zlib.compress(head + raw + screen.tobytes(), 9)).decode("ascii")


def decode_state(s: str) -> AtariState:
    """The inverse of ``encode_state``; ValueError for anything that is not such a string."""
    import ale_py

    def bad(why: str) -> ValueError:
        return ValueError(f"not an Atari state string ({why}); pass an entry of an Atari sample file's "
                          f"'states' (written by causal_rcm.worlds.atari.encode_state)")

    if not isinstance(s, str) or not s.startswith(STATE_PREFIX):
        raise bad(f"expected a str starting with {STATE_PREFIX!r}, got {type(s).__name__} {str(s)[:16]!r}")
    try:
        data = zlib.decompress(base64.b64decode(s[len(STATE_PREFIX):], validate=True))
    except (binascii.Error, zlib.error) as e:
        raise bad(f"corrupt payload: {e}") from None
    try:
        magic, lg = struct.unpack_from("<8sB", data)
        game = data[9:9 + lg].decode()
        n_raw, h, w, c = struct.unpack_from("<IHHB", data, 9 + lg)
    except (struct.error, UnicodeDecodeError) as e:
        raise bad(f"truncated header: {e}") from None
    body = 9 + lg + struct.calcsize("<IHHB")
    if magic != _STATE_MAGIC or game not in GAMES or len(data) != body + n_raw + h * w * c:
        raise bad("wrong header or length")
    try:
        ale = ale_py.ALEState(data[body:body + n_raw])
    except Exception as e:  # noqa: BLE001 - ale-py raises SystemError for bytes it cannot parse
        raise bad(f"the ALE refuses its state bytes: {e}") from None
    screen = np.frombuffer(data, np.uint8, h * w * c, body + n_raw).reshape(h, w, c)
    return AtariState(game, ale, screen)


# ----- the emulator --------------------------------------------------------------------------------------
class Emulator:
    """One gymnasium ALE environment of a game (§1), made once and reused: ``reset(seed)`` reloads the ROM,
    so every video starts from the same emulator whatever was played before."""

    def __init__(self, game: str):
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        self.game = check_game(game)
        self.env = gymnasium.make(f"ALE/{game}-v5", frameskip=4, repeat_action_probability=0.0,
                                  full_action_space=False)
        self.ale = self.env.unwrapped.ale
        names = tuple(self.env.unwrapped.get_action_meanings())
        if names != ACTION_NAMES[game]:
            raise RuntimeError(f"ale-py's {game} actions are {names}, the spec's {ACTION_NAMES[game]}; "
                               "install ale-py 0.12")
        self.n_actions = len(names)
        # gymnasium refuses step() before a first reset; unseeded it does not reload the ROM (~0.2 s): every
        # video reseeds and every rollout restores a state anyway
        self.env.reset()

    def reset(self, seed: int | None = None) -> None:
        self.env.reset(seed=seed)

    def step(self, action: int) -> tuple[np.ndarray, bool]:
        """(raw observation uint8 [210, 160, 3], episode ended) after one agent step (4 emulator frames)."""
        obs, _, terminated, truncated, _ = self.env.step(int(action))
        return obs, bool(terminated or truncated)

    def snapshot(self) -> str:
        """The state string of the current emulator state and its screen."""
        return encode_state(self.game, self.ale.cloneState(), self.ale.getScreenRGB())

    def restore(self, state: str) -> np.ndarray:
        """Restore a state string; returns the raw screen it shows (the frame 0 of a rollout)."""
        st = decode_state(state)
        if st.game != self.game:
            raise ValueError(f"a {st.game} state cannot be played in {self.game}; use the game of the sample file")
        # Everything that step() depends on is in the ALE state (RAM, CPU, TIA, frame counters, the ROM's
        # score / lives / terminal bookkeeping); the gymnasium wrappers above keep no per-episode state.
        self.ale.restoreState(st.ale)
        return st.screen


class StickyPolicy:
    """§2 step 2: a_0 ~ uniform; then keep the previous action with probability 0.75, else draw uniformly
    (one ``rng.random()``, then one ``rng.integers`` when the action changes)."""

    def __init__(self, rng: np.random.Generator, n_actions: int):
        self.rng, self.n, self.last = rng, n_actions, None

    def __call__(self) -> int:
        if self.last is None or not self.rng.random() < KEEP_PROB:
            self.last = int(self.rng.integers(self.n))
        return self.last


def record_video(emu: Emulator, seed: int, i: int, frames: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, str]:
    """§2: video i of seed s: (video uint8 [T, size, size, 3], actions int64 [T − 1], state string of frame 0)."""
    rng = np.random.default_rng([seed, i])
    emu.reset(seed=int(rng.integers(2**31)))
    policy = StickyPolicy(rng, emu.n_actions)
    while True:
        ended = False
        for _ in range(int(rng.integers(0, BURN_IN_MAX))):
            _, ended = emu.step(policy())
            if ended:
                break
        if not ended:
            state = emu.snapshot()
            video, actions = [resize(emu.ale.getScreenRGB(), size)], []
            for _ in range(frames - 1):
                actions.append(policy())
                obs, ended = emu.step(actions[-1])
                if ended:
                    break
                video.append(resize(obs, size))
        if not ended:
            return np.stack(video), np.asarray(actions, np.int64), state
        emu.reset()  # a new game on the same emulator; see the module docstring on step 5


def sample_videos(game: str, n: int, seed: int, frames: int, start: int = 0) -> dict:
    """Videos start … start + n − 1 of (game, seed): ``videos`` uint8 [N, T, 64, 64, 3], ``actions`` int64
    [N, T − 1], ``states`` str [N]; video i depends on (seed, i) alone."""
    if frames < 2:
        raise ValueError(f"an Atari video needs frames >= 2, got {frames}")
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    emu = Emulator(game) if n else check_game(game)
    out = [record_video(emu, seed, i, frames) for i in range(start, start + n)]
    videos = np.stack([v for v, _, _ in out]) if out else np.zeros((0, frames, SIZE, SIZE, 3), np.uint8)
    actions = np.stack([a for _, a, _ in out]) if out else np.zeros((0, frames - 1), np.int64)
    return {"videos": videos, "actions": actions, "states": np.array([s for _, _, s in out], dtype=str)}


def check_actions(game: str, actions, n: int | None = None) -> np.ndarray:
    """Actions as int64 [N, A] with every id in the game's action set; ValueError naming the fix otherwise."""
    a = np.asarray(actions)
    if a.ndim != 2 or (a.size and not np.issubdtype(a.dtype, np.integer)) or (n is not None and len(a) != n):
        raise ValueError(f"actions must be integers [N, A]{'' if n is None else f' with N = {n}'}, "
                         f"got {a.dtype} {a.shape}")
    k = len(ACTION_NAMES[check_game(game)])
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"{game} action ids are 0..{k - 1} ({', '.join(ACTION_NAMES[game])}); got ids "
                         f"{int(a.min())}..{int(a.max())}")
    return a.astype(np.int64)


def rollout(game: str, states, actions, size: int = SIZE, return_ended: bool = False):
    """Ground truth for any actions: videos uint8 [N, 1 + A, size, size, 3], frame 0 the screen of state j,
    frame k + 1 the observation after actions[j, k]. With ``return_ended`` also int64 [N]: the index of the
    action whose step ended the episode (its frame is then repeated to the end), −1 where none did."""
    states = [str(s) for s in np.asarray(states, dtype=str).reshape(-1)]
    actions = check_actions(game, actions, len(states))
    emu = Emulator(game)
    videos = np.empty((len(states), actions.shape[1] + 1, size, size, 3), np.uint8)
    ended_at = np.full(len(states), -1, np.int64)
    for j, (state, acts) in enumerate(zip(states, actions)):
        videos[j, 0] = resize(emu.restore(state), size)
        for k, a in enumerate(acts):
            if ended_at[j] >= 0:
                videos[j, k + 1] = videos[j, k]
                continue
            obs, ended = emu.step(a)
            videos[j, k + 1] = resize(obs, size)
            if ended:
                ended_at[j] = k
    return (videos, ended_at) if return_ended else videos


# ----- the World interface -----------------------------------------------------------------------------------
def check(cfg) -> None:
    """ValueError naming the fix for a WorldConfig the Atari world cannot serve."""
    check_game(cfg.variant)
    if cfg.size != SIZE:
        raise ValueError(f"the Atari world renders {SIZE}×{SIZE} frames (spec §1); set size={SIZE}, got {cfg.size}")


def build(cfg) -> "AtariWorld":
    return AtariWorld(cfg)


class AtariWorld:
    """The Atari world behind the ``World`` protocol (worlds/base.py); no prompts, actions of the game."""

    def __init__(self, config):
        from .atari_metrics import HIGHER_IS_BETTER, metric_names

        check(config)
        self.config = config
        self.game = config.variant
        self.action_names = ACTION_NAMES[self.game]
        self.metric_names = metric_names(config.frames, 1)
        self.higher_is_better = HIGHER_IS_BETTER
        self.curve_metrics = ("psnr@1", "paddle_error")
        self.starts_from_frames = True  # a world model of a game starts from the game's own first frames

    def prompts(self) -> tuple[str, ...]:
        return ()

    def eval_prompts(self, k: int) -> list[str]:
        return [""] * k

    def sample(self, n: int, seed: int, prompts=None, actions: np.ndarray | None = None, start: int = 0) -> dict:
        """Videos start … start + n − 1 of stream ``seed`` (§2): ``videos`` uint8 [N, T, 64, 64, 3],
        ``prompts`` [""] * N, ``actions`` int64 [N, T − 1], ``game`` str, ``states`` str [N].

        With ``actions`` (int [N, T − 1]) the videos start from the same states (frame 0 unchanged) and show
        the emulator's frames for the given actions instead (``rollout``: an episode end keeps its frame)."""
        if prompts is not None and any(p != "" for p in prompts):
            raise ValueError("the Atari world takes no prompts; pass prompts=None")
        t = self.config.frames
        if actions is not None:
            actions = check_actions(self.game, actions, n)
            if actions.shape[1] != t - 1:
                raise ValueError(f"actions must be [N, {t - 1}] for {t}-frame videos, got {actions.shape}")
        out = sample_videos(self.game, n, seed, t, start)
        if actions is not None:
            out["videos"], out["actions"] = rollout(self.game, out["states"], actions), actions
        return {"videos": out["videos"], "prompts": [""] * n, "actions": out["actions"], "game": self.game,
                "states": out["states"]}

    def behaviour_actions(self, seeds) -> np.ndarray:
        """§2's sticky policy alone (no emulator), row i from its own seed: int64 [len(seeds), T − 1]."""
        rows = []
        for s in seeds:
            policy = StickyPolicy(np.random.default_rng(int(s)), len(self.action_names))
            rows.append([policy() for _ in range(self.config.frames - 1)])
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.config.frames - 1)

    def _truth(self, samples: dict) -> np.ndarray:
        game = str(np.asarray(samples.get("game", self.game)))
        if game != self.game:
            raise ValueError(f"these samples are of {game}, this world plays {self.game}; use --variant {game}")
        if "truth" in samples:  # precomputed by the caller (an earlier rollout of the same states and actions)
            return np.asarray(samples["truth"])
        missing = [k for k in ("states", "actions") if k not in samples]
        if missing:
            raise ValueError(f"Atari samples lack {missing}: the ground truth is the emulator replaying each video's "
                             "'actions' from its 'states' (both in the data file the context frames came from)")
        return rollout(self.game, samples["states"], samples["actions"])

    def metrics(self, samples: dict, context_frames: int = 1) -> dict[str, float]:
        """§3 on generated ``videos`` (full length, the ``context_frames`` = P given frames included and not
        scored) against the emulator's frames for the same ``states`` and ``actions`` (or a given ``truth``
        array of the same shape). P ≥ 1: an Atari model always starts from frame 0 of its state."""
        from .atari_metrics import evaluate

        return evaluate(samples["videos"], self._truth(samples), context_frames, self.game)

    def intervals(self, samples: dict, context_frames: int = 1, n_boot: int = 1000, seed: int = 0) -> dict:
        """{metric: (value, low, high)}: 95 % bootstrap intervals over videos."""
        from .atari_metrics import evaluate_intervals

        return evaluate_intervals(samples["videos"], self._truth(samples), context_frames, self.game, n_boot, seed)
