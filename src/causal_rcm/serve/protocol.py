"""The live-play wire format (shared/specs/play.md, extended as docs/play.md says): parsing of the client's
JSON messages and packing of the server's binary frames. Pure functions, no I/O: the server, the tests and
the benchmark client all use them.

Client → server (JSON text, at most ``MAX_MESSAGE_BYTES``):

    {"type": "start", "seed": int >= 0, "prompt": str?, "game_state": str?, "side_by_side": bool?}
    {"type": "action", "action": int, "t_client": float?}
    {"type": "stop"}

Server → client: a binary frame = ``HEADER`` (little-endian uint32 frame index, uint32 action applied,
float64 t_client echoed or −1) + PNG. ``NO_ACTION`` (0xFFFFFFFF, −1 as uint32, the spec's own "none" for
t_client) marks frames no action led into: the stream's frame 0 and the real frames an Atari session
starts from. Side-by-side emulator frames, sent only to a client that asked for them in ``start``, are
the same layout behind the 4-byte tag ``EMULATOR_TAG``, so a client of the plain spec never sees one.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 4096          # the spec's cap on a client message
HEADER = struct.Struct("<IId")    # frame index, action applied, t_client echoed (16 bytes)
NO_ACTION = 0xFFFFFFFF
NO_T_CLIENT = -1.0
EMULATOR_TAG = b"EMU1"            # starts an emulator frame; a model frame starts with its index instead
MAX_SEED = 2**63 - 1              # seeds feed numpy's SeedSequence: non-negative integers
GAME_REF = re.compile(r"(\d{1,18}):(\d{1,9})")  # game_state "<data seed>:<video index>" (docs/play.md)
assert HEADER.size == 16


class ProtocolError(ValueError):
    """A client message the server answers with ``{"type": "error"}``; the session stays usable."""


@dataclass(frozen=True)
class Start:
    seed: int
    prompt: str | None = None
    game_state: str | None = None
    side_by_side: bool = False     # also send the real emulator's frames (Atari, server run --side-by-side)


@dataclass(frozen=True)
class Action:
    action: int
    t_client: float = NO_T_CLIENT  # ms on the client's clock; −1: nothing to echo


@dataclass(frozen=True)
class Stop:
    pass


Message = Start | Action | Stop


def _reject_constant(name: str):
    raise ProtocolError(f"invalid JSON: {name} is not a number JSON allows")


def _int(d: dict, key: str, lo: int, hi: int, what: str) -> int:
    v = d[key]
    # bool is an int subclass in Python, but true is no action id or seed
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{what}: {key!r} must be an integer, got {type(v).__name__} {v!r:.40}")
    if not lo <= v <= hi:
        raise ProtocolError(f"{what}: {key!r} must lie in {lo}..{hi}, got {v}")
    return v


def _optional(d: dict, key: str, kind: type, what: str):
    v = d.get(key)
    if v is not None and (not isinstance(v, kind) or isinstance(v, bool) != (kind is bool)):
        raise ProtocolError(f"{what}: {key!r} must be a {kind.__name__}, got {type(v).__name__} {v!r:.40}")
    return v


def parse_message(data: str | bytes, n_actions: int) -> Message:
    """One client message → ``Start | Action | Stop``; ``ProtocolError`` (one line naming the fix) otherwise.
    Fields the spec does not name are ignored, so clients may send more than this server reads."""
    if isinstance(data, bytes):
        raise ProtocolError("binary messages are not part of the protocol; send JSON text messages")
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        d = json.loads(data, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"invalid JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"a message is a JSON object with a 'type', got {type(d).__name__}")
    kind = d.get("type")
    if kind == "start":
        if "seed" not in d:
            raise ProtocolError("start: 'seed' (an integer >= 0) is required")
        return Start(_int(d, "seed", 0, MAX_SEED, "start"), _optional(d, "prompt", str, "start"),
                     _optional(d, "game_state", str, "start"), bool(_optional(d, "side_by_side", bool, "start")))
    if kind == "action":
        if "action" not in d:
            raise ProtocolError("action: 'action' (an index into /health's actions) is required")
        if n_actions == 0:
            raise ProtocolError("action: this model takes no actions (/health lists none)")
        a = _int(d, "action", 0, n_actions - 1, "action")
        t = d.get("t_client")
        if t is None:
            return Action(a)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ProtocolError(f"action: 't_client' must be a finite number (ms), got {type(t).__name__} {t!r:.40}")
        return Action(a, float(t))
    if kind == "stop":
        return Stop()
    if kind is None:
        raise ProtocolError("a message needs a 'type': start, action or stop")
    raise ProtocolError(f"unknown message type {str(kind)[:40]!r}; known: start, action, stop")


def check_start(m: Start, prompts: list[str], starts_from_game_state: bool) -> Start:
    """What a start message asks of the world (its prompt, its game state), checked where it arrives."""
    if m.prompt is not None and m.prompt != "":
        if not prompts:
            raise ProtocolError("start: this world takes no prompt; leave 'prompt' out")
        if m.prompt not in prompts:
            raise ProtocolError(f"start: unknown prompt {m.prompt[:40]!r}; /health lists the {len(prompts)} "
                                f"prompts, e.g. {prompts[0]!r}")
    if m.game_state is not None:
        if not starts_from_game_state:
            raise ProtocolError("start: 'game_state' starts an Atari session; this world has none")
        if not (GAME_REF.fullmatch(m.game_state) or m.game_state.startswith("ale1:")):
            raise ProtocolError("start: 'game_state' is '<seed>:<index>' (a video of the game's data seed) or "
                                "an Atari state string 'ale1:...'")
    return m


@dataclass
class OutFrame:
    """A frame on its way to a client: the header fields, the PNGs (model, emulator) and when to show it."""

    index: int
    action: int                    # −1: no action led into it
    t_client: float
    png: bytes
    emulator_png: bytes | None
    due: float                     # time.monotonic() to show it at: a block's frames are spread 1 / fps apart


def pack_frame(index: int, action: int, t_client: float, png: bytes, emulator: bool = False) -> bytes:
    """One binary frame message; ``action`` −1 is sent as ``NO_ACTION``, the index wraps at 2³²."""
    head = HEADER.pack(index % 2**32, NO_ACTION if action < 0 else action, t_client)
    return (EMULATOR_TAG if emulator else b"") + head + png


@dataclass(frozen=True)
class Frame:
    """A received binary frame (clients: tests, the benchmark)."""

    index: int
    action: int            # −1 for NO_ACTION
    t_client: float
    png: bytes
    emulator: bool = False


def unpack_frame(msg: bytes) -> Frame:
    emulator = msg[:4] == EMULATOR_TAG
    body = msg[4:] if emulator else msg
    if len(body) < HEADER.size:
        raise ValueError(f"a frame message holds at least {HEADER.size} header bytes, got {len(body)}")
    index, action, t = HEADER.unpack_from(body)
    return Frame(index, -1 if action == NO_ACTION else action, t, body[HEADER.size:], emulator)
