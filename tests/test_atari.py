"""The Atari world (shared/specs/atari.md): spec conformance, determinism, exact ground truth, state strings,
metrics against plain-numpy references, the World interface and the sharded sample writer.

Short videos and few samples: every ``env.reset(seed)`` reloads the ROM (about 0.2 s), so videos are the cost.
"""
import json
import math

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")
ale_py = pytest.importorskip("ale_py")

from PIL import Image  # noqa: E402

from causal_rcm.worlds import atari  # noqa: E402
from causal_rcm.worlds.atari_metrics import PADDLES, evaluate, evaluate_intervals, paddle_positions  # noqa: E402
from causal_rcm.worlds.base import World, WorldConfig  # noqa: E402
from causal_rcm.worlds.registry import check_world, make_world  # noqa: E402

T = 6  # frames per test video


@pytest.fixture(scope="module")
def pong():
    return atari.sample_videos("Pong", 3, seed=0, frames=T)


@pytest.fixture(scope="module")
def breakout():
    return atari.sample_videos("Breakout", 3, seed=1, frames=T)


def box(obs):
    return np.asarray(Image.fromarray(obs).resize((64, 64), Image.Resampling.BOX))


def reference_video(game, seed, i, frames):
    """§2 written out once more with gymnasium alone, for a video whose making meets no episode end."""
    gymnasium.register_envs(ale_py)
    env = gymnasium.make(f"ALE/{game}-v5", frameskip=4, repeat_action_probability=0.0, full_action_space=False)
    rng = np.random.default_rng([seed, i])
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    n, a = env.action_space.n, [None]

    def act():
        if a[0] is None or rng.random() >= 0.75:
            a[0] = int(rng.integers(n))
        return a[0]

    for _ in range(int(rng.integers(0, 200))):
        obs, _, term, trunc, _ = env.step(act())
        assert not (term or trunc), "pick a video whose burn-in meets no episode end"
    video, actions = [box(obs)], []
    for _ in range(frames - 1):
        actions.append(act())
        obs, _, term, trunc, _ = env.step(actions[-1])
        assert not (term or trunc)
        video.append(box(obs))
    return np.stack(video), np.array(actions)


# ----- §1 / §2: the environment, the policy and a video ------------------------------------------------------
@pytest.mark.parametrize("game", atari.GAMES)
def test_action_meanings_are_the_emulators(game):
    emu = atari.Emulator(game)
    assert tuple(emu.env.unwrapped.get_action_meanings()) == atari.ACTION_NAMES[game]
    assert atari.build(WorldConfig("atari", game, 64, T)).action_names == atari.ACTION_NAMES[game]
    assert len(atari.ACTION_NAMES[game]) == {"Pong": 6, "Breakout": 4}[game]


def test_video_matches_an_independent_reading_of_the_spec(pong):
    video, actions = reference_video("Pong", 0, 1, T)
    assert np.array_equal(pong["videos"][1], video)
    assert np.array_equal(pong["actions"][1], actions)
    # frame 0 is the BOX resize of the raw screen the state string carries
    assert np.array_equal(box(atari.decode_state(pong["states"][1]).screen), video[0])


def test_resize_is_pil_box_to_64():
    obs = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    out = atari.resize(obs)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, box(obs))
    # BOX averages each 210/64 × 160/64 area; another filter gives other bytes
    assert not np.array_equal(out, np.asarray(Image.fromarray(obs).resize((64, 64), Image.Resampling.NEAREST)))


def test_sticky_policy_statistics_and_draws():
    n, steps = 6, 20000
    policy = atari.StickyPolicy(np.random.default_rng(3), n)
    a = np.array([policy() for _ in range(steps)])
    changed = (a[1:] != a[:-1]).mean()
    assert abs(changed - 0.25 * (n - 1) / n) < 0.015         # redrawn w.p. 0.25, and a redraw may repeat
    assert np.abs(np.bincount(a, minlength=n) / steps - 1 / n).max() < 0.02
    # the exact draws: one integers first, then one random() and an integers only when the action changes
    rng, policy = np.random.default_rng(5), atari.StickyPolicy(np.random.default_rng(5), n)
    want = [int(rng.integers(n))]
    for _ in range(50):
        want.append(int(rng.integers(n)) if rng.random() >= 0.75 else want[-1])
    assert [policy() for _ in range(51)] == want


def test_same_seed_same_bytes_and_any_range_alone(pong):
    again = atari.sample_videos("Pong", 2, seed=0, frames=T, start=1)  # videos 1, 2 made without video 0
    for k in ("videos", "actions", "states"):
        assert np.array_equal(again[k], pong[k][1:])
    other = atari.sample_videos("Pong", 1, seed=9, frames=T)
    assert other["states"][0] != pong["states"][0]
    assert pong["videos"].shape == (3, T, 64, 64, 3) and pong["actions"].shape == (3, T - 1)
    assert pong["actions"].dtype == np.int64 and pong["actions"].max() < 6


def test_an_episode_end_while_making_a_video_starts_a_new_game_on_the_same_emulator():
    # Breakout video 42 of seed 1 meets a game over during its first burn-in (found by search)
    s = atari.sample_videos("Breakout", 1, seed=1, frames=T, start=42)
    ale = atari.decode_state(s["states"][0]).ale
    # a new game (env.reset() without a seed) restarts the episode's frame count, not the emulator's; a reseed
    # would have reloaded the ROM and restarted both
    assert ale.getEpisodeFrameNumber() < ale.getFrameNumber()
    assert np.array_equal(atari.rollout("Breakout", s["states"], s["actions"]), s["videos"])


# ----- ground truth and state strings -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pong", "breakout"])
def test_rollout_reproduces_recorded_videos_and_follows_other_actions(name, request):
    s = request.getfixturevalue(name)
    game = "Pong" if name == "pong" else "Breakout"
    assert np.array_equal(atari.rollout(game, s["states"], s["actions"]), s["videos"])
    right, left = (np.full_like(s["actions"], atari.ACTION_NAMES[game].index(k)) for k in ("RIGHT", "LEFT"))
    r, l = atari.rollout(game, s["states"], right), atari.rollout(game, s["states"], left)
    assert np.array_equal(r[:, 0], s["videos"][:, 0]) and np.array_equal(l[:, 0], s["videos"][:, 0])
    assert not np.array_equal(r[:, -1], l[:, -1])
    if game == "Breakout":  # RIGHT moves the paddle to larger columns than LEFT
        pr, vr = paddle_positions(r[:, -1:], game)
        pl, vl = paddle_positions(l[:, -1:], game)
        assert vr.all() and vl.all() and (pr > pl).all()


def test_rollout_keeps_the_last_frame_after_an_episode_end(breakout):
    actions = np.zeros((2, 300), np.int64)      # row 1: the recorded actions, then NOOP (the ball stays put)
    actions[0] = atari.ACTION_NAMES["Breakout"].index("FIRE")  # row 0: launch and miss until the game is over
    actions[1, :T - 1] = breakout["actions"][1]
    videos, ended = atari.rollout("Breakout", breakout["states"][:2], actions, return_ended=True)
    e = ended[0]
    assert 0 <= e < 299 and ended[1] == -1
    assert (videos[0, e + 2:] == videos[0, e + 1]).all() and not (videos[0, 1] == videos[0, e + 1]).all()
    # the same emulator plays the next state as recorded after that game over
    assert np.array_equal(videos[1, :T], breakout["videos"][1])


def test_state_strings_round_trip_through_npz_and_json(pong, tmp_path):
    s = pong["states"][0]
    st = atari.decode_state(s)
    assert st.game == "Pong" and st.screen.shape == (210, 160, 3)
    assert atari.encode_state(st.game, st.ale, st.screen) == s
    np.savez(tmp_path / "s.npz", states=pong["states"])
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        back = z["states"]
    back = json.loads(json.dumps({"game_state": str(back[0])}))["game_state"]
    assert np.array_equal(atari.rollout("Pong", [back], pong["actions"][:1]), pong["videos"][:1])


def test_bad_state_strings_and_inputs_are_refused(pong, breakout):
    s = pong["states"][0]
    for bad, why in [("hello", "starting with"), ("ale1:!!!", "corrupt"), (s[:200], "corrupt"),
                     (s[:-8] + "AAAAAAAA", "corrupt")]:
        with pytest.raises(ValueError, match=why):
            atari.decode_state(bad)
    with pytest.raises(ValueError, match="Breakout state cannot be played in Pong"):
        atari.rollout("Pong", breakout["states"][:1], pong["actions"][:1])
    with pytest.raises(ValueError, match="0..5"):
        atari.rollout("Pong", pong["states"][:1], np.full((1, 3), 6))
    with pytest.raises(ValueError, match="Pong"):
        atari.sample_videos("Tetris", 1, 0, T)


# ----- §3: metrics --------------------------------------------------------------------------------------------
def ref_psnr(gen, truth, k):
    mse = np.mean((gen[:, k].astype(np.float64) - truth[:, k].astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ref_paddle(frame, game):
    band = PADDLES[game]
    hits = [(r, c) for r in range(band.rows[0], band.rows[1] + 1) for c in range(band.cols[0], band.cols[1] + 1)
            if math.dist(frame[r, c].tolist(), band.colour) < 60]
    if len(hits) < 2:
        return None
    return float(np.mean([r if band.axis == "row" else c for r, c in hits]))


def test_psnr_and_copy_baseline_match_a_plain_reference():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 12, 64, 64, 3), dtype=np.uint8)
    gen = np.clip(truth.astype(int) + rng.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
    p = 3
    got = evaluate(gen, truth, p, "Pong")
    assert [k for k in got if k.startswith("psnr@")] == ["psnr@1", "psnr@2", "psnr@4", "psnr@8"]  # P − 1 + h ≤ 11
    copy = truth.copy()
    copy[:, p:] = truth[:, p - 1:p]
    for h in (1, 2, 4, 8):
        assert got[f"psnr@{h}"] == pytest.approx(ref_psnr(gen, truth, p - 1 + h), abs=1e-9)
        assert got[f"psnr_copy@{h}"] == pytest.approx(ref_psnr(copy, truth, p - 1 + h), abs=1e-9)
    # a model that copies its last given frame scores exactly the copy baseline; the truth itself is perfect
    copied = evaluate(copy, truth, p, "Pong")
    assert all(copied[f"psnr@{h}"] == copied[f"psnr_copy@{h}"] for h in (1, 2, 4, 8))
    assert evaluate(truth, truth, p, "Pong")["psnr@1"] == math.inf
    assert got["n_videos"] == 3


def paint(frames, game, lo, hi, colour=None):
    """Paint the paddle over the band's pixels lo..hi (Pong: rows, Breakout: columns) of frames [..., 64, 64, 3]."""
    band = PADDLES[game]
    colour = band.colour if colour is None else colour
    if band.axis == "row":
        frames[..., lo:hi + 1, band.cols[0]:band.cols[1] + 1, :] = colour
    else:
        frames[..., band.rows[0]:band.rows[1] + 1, lo:hi + 1, :] = colour


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_paddle_detection_on_synthetic_frames(game):
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    frames[:] = (144, 72, 17)
    near = tuple(int(c) + 30 for c in PADDLES[game].colour[:2]) + (PADDLES[game].colour[2],)  # distance 42
    paint(frames[0], game, 20, 27)
    paint(frames[1], game, 30, 30)                              # one column of pixels: Pong 2 px, Breakout 2 px
    paint(frames[2], game, 40, 43, colour=near)
    frames[3, 20, 56] = frames[3, 57, 5] = PADDLES[game].colour  # a single pixel in the band: not visible
    pos, vis = paddle_positions(frames[None], game)
    for k in range(4):
        want = ref_paddle(frames[k], game)
        assert vis[0, k] == (want is not None)
        if want is not None:
            assert pos[0, k] == pytest.approx(want)
    assert pos[0, 0] == pytest.approx(23.5) and pos[0, 2] == pytest.approx(41.5) and not vis[0, 3]


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_paddle_error_counts_a_missing_paddle_with_the_far_end_of_the_band(game):
    truth = np.zeros((2, 4, 64, 64, 3), np.uint8)
    paint(truth[:, 1:], game, 20, 23)                            # true paddle at 21.5 in frames 1..3
    gen = np.zeros_like(truth)
    paint(gen[0, 1:], game, 23, 26)                              # video 0: 3 px off
    paint(gen[1, 1:3], game, 20, 23)                             # video 1: right, then missing in frame 3
    lo, hi = PADDLES[game].span
    worst = max(21.5 - lo, hi - 21.5)
    got = evaluate(gen, truth, 1, game)
    assert got["paddle_error"] == pytest.approx((3 * 3 + 0 + 0 + worst) / 6)
    assert got["paddle_missing"] == pytest.approx(1 / 6)
    # frames where the true paddle is hidden are not scored
    truth[:, 3] = 0
    assert evaluate(gen, truth, 1, game)["paddle_error"] == pytest.approx(3 * 2 / 4)


def test_bootstrap_intervals_contain_the_value(breakout):
    truth = breakout["videos"]
    rng = np.random.default_rng(1)
    gen = np.clip(truth.astype(int) + rng.integers(-30, 31, truth.shape), 0, 255).astype(np.uint8)
    iv = evaluate_intervals(gen, truth, 1, "Breakout", n_boot=200)
    value = evaluate(gen, truth, 1, "Breakout")
    assert set(iv) == set(value) - {"n_videos"}
    for k, (v, lo, hi) in iv.items():
        assert v == value[k] or (math.isnan(v) and math.isnan(value[k]))
        if math.isfinite(v):
            assert lo <= v <= hi
    assert iv["psnr@1"][1] < iv["psnr@1"][2]


def test_metrics_refuse_misaligned_inputs(pong):
    v = pong["videos"]
    with pytest.raises(ValueError, match="at least frame 0"):
        evaluate(v, v, 0, "Pong")
    with pytest.raises(ValueError, match="same shape"):
        evaluate(v[:, :-1], v, 1, "Pong")


# ----- the World interface and the sample writer ---------------------------------------------------------------
def test_world_interface(pong):
    w = make_world(WorldConfig("atari", "Pong", 64, T))
    assert isinstance(w, World) and w.prompts() == () and w.eval_prompts(3) == ["", "", ""]
    with pytest.raises(ValueError, match="size=64"):
        check_world(WorldConfig("atari", "Pong", 32, T))
    with pytest.raises(ValueError, match="Breakout"):
        check_world(WorldConfig("atari", "Pacman", 64, T))
    s = w.sample(1, 0, start=1)
    assert s["game"] == "Pong" and s["prompts"] == [""] and np.array_equal(s["videos"], pong["videos"][1:2])
    other = np.full((1, T - 1), 3)
    played = w.sample(1, 0, actions=other, start=1)
    assert np.array_equal(played["states"], s["states"]) and np.array_equal(played["actions"], other)
    assert np.array_equal(played["videos"], atari.rollout("Pong", s["states"], other))
    scores = w.metrics(s, context_frames=1)
    assert scores["psnr@1"] == math.inf and scores["n_videos"] == 1
    assert scores["paddle_error"] == 0 or math.isnan(scores["paddle_error"])
    with pytest.raises(ValueError, match="variant Breakout"):
        w.metrics({**s, "game": "Breakout"}, 1)


def test_world_samples_file_parallel_equals_serial(breakout, tmp_path):
    from causal_rcm.worlds.samples import load_samples
    from causal_rcm.worlds.writer import parts_dir, write_world_samples

    w = atari.build(WorldConfig("atari", "Breakout", 64, T))
    out = write_world_samples(w, tmp_path / "b.npz", n=2, seed=1, workers=2, shard_size=1, progress=False)
    d = load_samples(out)
    for k in ("videos", "actions", "states"):
        assert np.array_equal(d[k], breakout[k][:2])
    assert d["prompts"] == ["", ""] and str(d["game"]) == "Breakout"
    assert not parts_dir(out).exists()
