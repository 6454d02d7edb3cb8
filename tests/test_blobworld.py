"""Blobworld generation against shared/specs/blobworld.md §1–3 and §5: prompts, determinism, bounce and
agent physics, the anti-aliased blend on hand-computed pixels, model scaling and the .npz format."""
import math

import numpy as np
import pytest
import torch

from causal_rcm.stream.codec import to_uint8 as from_model
from causal_rcm.stream.codec import to_unit as to_model
from causal_rcm.worlds import blobworld as bw
from causal_rcm.worlds.blobworld import AGENT_PROMPTS, T2V_PROMPTS, prompt_colours, render, sample_worlds
from causal_rcm.worlds.samples import load_samples, save_samples

VARIANTS = ("t2v", "agent")


def test_prompts_are_the_41_spec_strings():
    assert len(T2V_PROMPTS) == len(set(T2V_PROMPTS)) == 41
    for p in ("a red ball", "a red ball and a blue ball", "a green ball, a yellow ball and a cyan ball"):
        assert p in T2V_PROMPTS
    assert [p.count(" ball") for p in T2V_PROMPTS].count(1) == 6
    assert [p.count(" ball") for p in T2V_PROMPTS].count(3) == 20
    assert "a blue ball and a red ball" not in T2V_PROMPTS  # colours come in palette order
    assert len(AGENT_PROMPTS) == 22 and AGENT_PROMPTS[0] == "no ball"
    assert all(p.count(" ball") <= 2 for p in AGENT_PROMPTS[1:])


def test_prompt_colours_inverts_prompts():
    assert prompt_colours("a red ball") == (0,)
    assert prompt_colours("a green ball, a yellow ball and a cyan ball") == (1, 3, 5)
    assert prompt_colours("no ball") == ()
    for p in T2V_PROMPTS:
        assert bw.make_prompt(prompt_colours(p)) == p


@pytest.mark.parametrize("bad", ["a purple ball", "a blue ball and a red ball", "A red ball", 3])
def test_prompt_colours_names_valid_prompts_on_bad_input(bad):
    with pytest.raises(ValueError, match="a red ball and a blue ball"):
        prompt_colours(bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_depends_only_on_seed_and_index(variant):
    a = sample_worlds(4, 7, variant=variant, frames=6)
    b = sample_worlds(7, 7, variant=variant, frames=6)
    alone = sample_worlds(1, 7, variant=variant, frames=6, start=2)
    for key, value in a.items():
        if key == "prompts":
            assert value == b[key][:4] and alone[key] == value[2:3]
        else:
            np.testing.assert_array_equal(value, b[key][:4])
            np.testing.assert_array_equal(value[2:3], alone[key])
    assert not np.array_equal(a["videos"], sample_worlds(4, 8, variant=variant, frames=6)["videos"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size,frames", [(32, 21), (16, 9)])
def test_shapes_and_dtypes(variant, size, frames):
    d = sample_worlds(5, 0, size=size, frames=frames, variant=variant)
    assert d["videos"].dtype == np.uint8 and d["videos"].shape == (5, frames, size, size, 3)
    assert isinstance(d["prompts"], list) and all(isinstance(p, str) for p in d["prompts"])
    assert d["centres"].shape == (5, frames, 3, 2) and d["radii"].shape == d["colours"].shape == (5, 3)
    np.testing.assert_array_equal(d["present"], d["colours"] >= 0)
    if variant == "agent":
        assert d["actions"].dtype == np.int64 and d["actions"].shape == (5, frames - 1)
        assert np.all(d["colours"][:, -1] == bw.AGENT) and np.allclose(d["radii"][:, -1], 3.5 * size / 32)
    else:
        assert "actions" not in d
    for p, cols, present in zip(d["prompts"], d["colours"], d["present"]):
        passive = cols[present & (cols != bw.AGENT)]
        assert prompt_colours(p) == tuple(passive)  # colours in palette order, prompt matches


def test_bounce_hand_case():
    # x: 5 → 3 (< r = 4) → 2·4 − 3 = 5 and vx flips; y: 26 → 29 (> 32 − 4) → 2·28 − 29 = 27 and vy flips.
    c = bw.simulate_balls(np.array([[[5.0, 26.0]]]), np.array([[[-2.0, 3.0]]]), np.array([[4.0]]), 32, 4)
    np.testing.assert_allclose(c[0, :, 0], [[5, 26], [5, 27], [7, 24], [9, 21]])


def test_sampled_balls_bounce_between_walls_at_constant_speed():
    size = 32
    d = sample_worlds(300, 1, frames=30)
    live = d["present"]
    c = np.moveaxis(d["centres"], 2, 1)[live]  # [balls, T, 2]
    r, v = d["radii"][live][:, None, None], np.abs(d["velocities"][live])[:, None]
    assert r.min() >= 3.0 and r.max() <= 5.0
    speed = np.linalg.norm(v, axis=-1)
    assert speed.min() >= 0.5 and speed.max() <= 2.0 and speed.max() > 1.9
    assert np.all((c >= r) & (c <= size - r))
    # Between bounces each velocity component keeps its magnitude; a step that reflects ends within
    # that component's speed of the wall.
    step = np.abs(np.diff(c, axis=1))
    reflected = ~np.isclose(step, v)
    wall_gap = np.minimum(c[:, 1:] - r, size - r - c[:, 1:])
    assert np.all(wall_gap[reflected] < np.broadcast_to(v, step.shape)[reflected] + 1e-9)
    assert 0 < reflected.mean() < 0.1


def test_render_matches_the_spec_blend_on_hand_computed_pixels():
    one = render(np.array([[[[10.3, 12.7]]]]), np.array([[3.6]]), np.array([[0]]), 32)
    # Pixel (row 12, col 13), centre (13.5, 12.5): d = hypot(3.2, 0.2) = 3.20624, α = 4.1 − d = 0.89376,
    # red · α = (205.56, 35.75, 35.75) → (206, 36, 36).
    assert tuple(one[0, 0, 12, 13]) == (206, 36, 36)
    assert tuple(one[0, 0, 12, 10]) == (230, 40, 40) and tuple(one[0, 0, 0, 31]) == (0, 0, 0)

    # Red, green and the agent overlap; slots in reverse order must still paint red, green, agent.
    centres = np.array([[[[16.2, 12.4], [13.0, 12.0], [10.3, 12.7]]]])
    radii, colours = np.array([[3.5, 3.1, 3.6]]), np.array([[bw.AGENT, 1, 0]])
    img = render(centres, radii, colours, 32)[0, 0]
    # Pixels where two or three balls have fractional coverage (order matters there), plus one inside red.
    for row, col in [(9, 11), (9, 14), (10, 13), (14, 13), (12, 10)]:
        expected = np.zeros(3)
        for k in (2, 1, 0):
            alpha = min(max(radii[0, k] + 0.5 - math.hypot(col + 0.5 - centres[0, 0, k, 0],
                                                            row + 0.5 - centres[0, 0, k, 1]), 0.0), 1.0)
            expected = expected * (1 - alpha) + bw.COLOURS[colours[0, k]] * alpha
        np.testing.assert_array_equal(img[row, col], np.rint(expected))


def test_sticky_actions_repeat_with_probability_075_plus_a_fifth_of_the_rest():
    a = sample_worlds(2000, 3, size=8, variant="agent")["actions"]
    # a_t repeats with p = 0.75, else is drawn from all five, so P(a_t = a_{t−1}) = 0.75 + 0.25 / 5.
    assert abs(np.mean(a[:, 1:] == a[:, :-1]) - 0.8) < 0.01
    np.testing.assert_allclose(np.bincount(a.ravel(), minlength=5) / a.size, 0.2, atol=0.01)
    np.testing.assert_allclose(np.bincount(a[:, 0], minlength=5) / len(a), 0.2, atol=0.03)
    keep = np.array([[True, False, True]])
    np.testing.assert_array_equal(bw.sticky_actions(np.array([3]), keep, np.array([[0, 1, 2]])), [[3, 3, 1, 1]])


def test_agent_moves_two_pixels_per_action_and_is_clamped():
    actions = np.array([[3] * 14 + [2] * 4 + [0] * 2])  # left ×14 (hits the wall), down ×4, none ×2
    d = sample_worlds(1, 0, variant="agent", actions=actions)
    agent = d["centres"][0, :, -1]
    x0, y0 = agent[0]
    expected_x = np.maximum(x0 - 2.0 * np.arange(15), 3.5)
    np.testing.assert_allclose(agent[:15, 0], expected_x)
    assert agent[14, 0] == 3.5 and np.all(agent[:15, 1] == y0)
    np.testing.assert_allclose(agent[15:19, 1], np.minimum(y0 + 2.0 * np.arange(1, 5), 28.5))
    assert np.all(agent[19:] == agent[18])
    with pytest.raises(ValueError, match="actions"):
        sample_worlds(1, 0, variant="agent", actions=np.full((1, 20), 5))


def test_prompts_fix_the_colours():
    d = sample_worlds(3, 0, prompts="a red ball and a cyan ball")
    assert d["prompts"] == ["a red ball and a cyan ball"] * 3
    np.testing.assert_array_equal(d["colours"], [[0, 5, -1]] * 3)
    d = sample_worlds(2, 0, variant="agent", prompts=["no ball", "a blue ball"])
    np.testing.assert_array_equal(d["colours"], [[-1, -1, bw.AGENT], [2, -1, bw.AGENT]])
    for bad, variant in [("no ball", "t2v"), ("a red ball, a green ball and a blue ball", "agent")]:
        with pytest.raises(ValueError, match="valid prompts"):
            sample_worlds(1, 0, variant=variant, prompts=bad)
    with pytest.raises(ValueError, match="2 prompts for 3"):
        sample_worlds(3, 0, prompts=["a red ball"] * 2)


def test_model_scaling_round_trips_every_pixel_value():
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16, 1).repeat(3, axis=-1)
    x = to_model(v)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 1, 16, 16)
    assert x.min() == -1 and x.max() == 1 and torch.allclose(x[0, 0, 0, 0, 1], torch.tensor(1 / 127.5 - 1))
    np.testing.assert_array_equal(from_model(x), v)
    np.testing.assert_array_equal(from_model(torch.full((1, 3, 1, 2, 2), 3.0)), 255)
    np.testing.assert_array_equal(from_model(torch.full((1, 3, 1, 2, 2), -3.0)), 0)
    with pytest.raises(ValueError, match="uint8"):
        to_model(v.astype(np.float32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_npz_round_trip(tmp_path, variant):
    d = sample_worlds(3, 0, frames=5, variant=variant)
    path = tmp_path / "samples.npz"
    save_samples(path, d["videos"], d["prompts"], d.get("actions"))
    with np.load(path) as z:  # the §5 layout, readable without our code
        assert z["videos"].dtype == np.uint8 and z["prompts"].dtype.kind == "U"
        assert set(z.files) == ({"videos", "prompts", "actions"} if variant == "agent" else {"videos", "prompts"})
    back = load_samples(path)
    np.testing.assert_array_equal(back["videos"], d["videos"])
    assert back["prompts"] == d["prompts"]
    if variant == "agent":
        assert back["actions"].dtype == np.int64
        np.testing.assert_array_equal(back["actions"], d["actions"])


def test_load_samples_names_the_file_on_bad_content(tmp_path):
    videos, prompts = np.zeros((2, 3, 8, 8, 3), np.uint8), np.array(["a red ball", "no ball"])
    cases = {
        "float.npz": dict(videos=videos.astype(np.float32), prompts=prompts),
        "noprompts.npz": dict(videos=videos),
        "shortprompts.npz": dict(videos=videos, prompts=prompts[:1]),
        "int32actions.npz": dict(videos=videos, prompts=prompts, actions=np.zeros((2, 2), np.int32)),
        "actionshape.npz": dict(videos=videos, prompts=prompts, actions=np.zeros((2, 3), np.int64)),
        "objects.npz": dict(videos=videos, prompts=prompts.astype(object)),
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=name):
            load_samples(tmp_path / name)
    with pytest.raises(ValueError, match="videos"):
        save_samples(tmp_path / "x.npz", videos[0], prompts)
