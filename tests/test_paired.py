"""The paired teacher-ODE distance: zero for a student that is the teacher's own one-step Euler solver,
positive for another network, and on fixed problems (deterministic)."""
import dataclasses

import numpy as np
import pytest
import torch

from causal_rcm.config import preset
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.stages.paired import make_targets, paired_distance
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import EulerCFG, FewStep
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

WORLD = WorldConfig(size=16, frames=5)


def bundles(seed_student=0):
    torch.manual_seed(0)
    w = make_world(WORLD)
    text = WorldTextEncoder.for_prompts(list(w.prompts()), dim=16, num_layers=1, num_heads=2)
    cfg = dataclasses.replace(preset("blob-tiny"), text_dim=16)
    net = randomize_(WanDiT(cfg), std=0.05)
    # one Euler step on the grid [1, 0] without CFG = the student's one step from t0 ≈ 1 (x̂0 = x − t·v)
    teacher = Bundle(net, text, EulerCFG("c1-4", steps=1, cfg=1.0, shift=1.0), WORLD, "causal_teacher")
    other = randomize_(WanDiT(cfg), std=0.05, seed=seed_student)
    return w, teacher, Bundle(net, text, FewStep("c1-4", 1, 1), WORLD, "student"), \
        Bundle(other, text, FewStep("c1-4", 1, 1), WORLD, "student")


def test_distance_vanishes_for_the_teachers_own_solver_and_not_otherwise(tmp_path):
    w, teacher, same, other = bundles(seed_student=5)
    s = w.sample(6, 0)
    path = make_targets(teacher, s["videos"], s["prompts"], tmp_path / "t.npz", steps=1, batch=4)
    d_same = paired_distance(same, path, steps=(1,), n_boot=50)["paired_rmse@1"]
    d_other = paired_distance(other, path, steps=(1,), n_boot=50)["paired_rmse@1"]
    # the student starts at t0 = 1600/1601, the ODE at 1: the inputs and time embeddings differ slightly, so
    # the same network lands within a couple of pixel levels of its own Euler step
    assert d_same[0] < 2.0
    assert d_other[0] > 10 * d_same[0] and d_other[1] <= d_other[0] <= d_other[2]
    again = paired_distance(other, path, steps=(1,), n_boot=50)["paired_rmse@1"]
    assert again == d_other  # fixed problems, fixed noise: deterministic
    with pytest.raises(ValueError, match="pattern"):
        paired_distance(dataclasses.replace(other, sampling=FewStep("c1-1", 1, 1)), path)
    assert np.load(path)["x0_teacher"].shape == (6, 3, 5, 16, 16)
