"""The action path of a world model (METHOD.md §7, shared/specs/blobworld.md §3): what the network is given in
teacher training and in sampling. Latent frame k carries a_{k−1} (the move from frame k − 1 to k), frame 0 and
CFG-dropped samples carry "no action"; the unconditional CFG branch alone gets the dropped actions."""
import dataclasses

import numpy as np
import torch

from causal_rcm.cli import main
from causal_rcm.config import preset
from causal_rcm.models.conditioning import ActionEmbedding, WorldTextEncoder
from causal_rcm.models.wan import WanDiT
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sample import sample_videos
from causal_rcm.stream.sampling import Euler
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world


def _recording(monkeypatch) -> list:
    """Every ``Actions`` the action embedding is called with, as (features, valid) numpy arrays."""
    seen = []
    forward = ActionEmbedding.forward

    def record(self, actions):
        seen.append((actions.features.detach().cpu().numpy(), actions.valid.detach().cpu().numpy()))
        return forward(self, actions)

    monkeypatch.setattr(ActionEmbedding, "forward", record)
    return seen


def _expected(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-hot features [N, T, 5] and valid [N, T] for integer actions [N, T − 1]: frame k carries a_{k−1}."""
    n, t1 = actions.shape
    feats = np.zeros((n, t1 + 1, 5), dtype=np.float32)
    feats[:, 1:] = np.eye(5, dtype=np.float32)[actions]
    valid = np.ones((n, t1 + 1), dtype=bool)
    valid[:, 0] = False
    return feats, valid


def test_teacher_training_gives_each_frame_the_action_that_led_to_it(tmp_path, monkeypatch):
    """The agent teacher's training step: the network sees the rendered batch's own actions, shifted by one
    frame, and a sample either keeps all of them or (CFG dropout) none, about 10 % of samples."""
    seen = _recording(monkeypatch)
    steps, batch = 3, 16
    assert main(["train", "teacher", "--preset", "blob-tiny", "world.variant=agent", f"train.steps={steps}",
                 f"train.batch={batch}", "train.warmup=1", "--out", str(tmp_path / "t")]) == 0
    world = WorldConfig(size=16, frames=9, variant="agent")
    train_calls = seen[:steps]  # the bundle written at the end makes no further call; later calls are not training
    kept = 0
    for step, (feats, valid) in enumerate(train_calls):
        rendered = make_world(world).sample(batch, seed=0, start=step * batch)
        want_f, want_v = _expected(rendered["actions"])
        assert feats.shape == want_f.shape
        for i in range(batch):
            if valid[i].any():
                kept += 1
                assert np.array_equal(valid[i], want_v[i]) and np.array_equal(feats[i], want_f[i])
            else:
                assert not feats[i].any()
    assert 0.75 * steps * batch <= kept < steps * batch  # dropout 0.1: some dropped, most kept


def test_sampling_gives_the_conditional_branch_the_actions_and_follows_them(monkeypatch):
    """Euler + CFG of an action-conditioned teacher: the conditional half of every call carries the given
    actions (frame k: a_{k−1}), the unconditional half none; other actions give other videos."""
    torch.manual_seed(0)
    world = WorldConfig(size=16, frames=9, variant="agent")
    net = WanDiT(dataclasses.replace(preset("blob-tiny"), action_dim=5)).eval()
    torch.nn.init.normal_(net.head.head.weight, std=0.02)          # a network whose output is not zero
    torch.nn.init.normal_(net.action_embedding.mlp[2].weight, std=1.0)  # and depends on the actions
    w = make_world(world)
    text = WorldTextEncoder.for_prompts(list(w.prompts()), dim=32, num_layers=1, num_heads=2)
    bundle = Bundle(net, text, Euler(steps=3, cfg=3.0), world, "teacher")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, (4, 8)), rng.integers(0, 5, (4, 8))
    prompts = ["no ball", "a red ball", "no ball", "a blue ball"]
    seen = _recording(monkeypatch)
    va = sample_videos(bundle, prompts, actions=a, show_progress=False)
    assert len(seen) == 3  # one batched (conditional | unconditional) call per Euler step
    want_f, want_v = _expected(a)
    for feats, valid in seen:
        assert np.array_equal(feats[:4], want_f) and np.array_equal(valid[:4], want_v)
        assert not feats[4:].any() and not valid[4:].any()
    vb = sample_videos(bundle, prompts, actions=b, show_progress=False)
    assert np.abs(va.astype(int) - vb.astype(int)).max() > 0


def test_generate_from_given_frames_keeps_their_prompts_and_actions(tmp_path):
    """`causal-rcm generate --start-from` on a Blobworld-agent model: the given first frames show balls whose
    colours their prompts name, so each video keeps its data's prompt (and actions) and its first frame."""
    from causal_rcm.stream.sampling import FewStep

    torch.manual_seed(0)
    world = WorldConfig(size=16, frames=5, variant="agent")
    net = WanDiT(dataclasses.replace(preset("blob-tiny"), action_dim=5)).eval()
    w = make_world(world)
    text = WorldTextEncoder.for_prompts(list(w.prompts()), dim=32, num_layers=1, num_heads=2)
    Bundle(net, text, FewStep(pattern="c1-1", steps_first=1, steps=1), world, "student").save(tmp_path / "m.safetensors")
    data = tmp_path / "data.npz"
    assert main(["world", "sample", "--variant", "agent", "--n", "5", "--size", "16", "--frames", "5",
                 "--seed", "3", "--out", str(data)]) == 0
    out = tmp_path / "g.npz"
    assert main(["generate", "--ckpt", str(tmp_path / "m.safetensors"), "--start-from", str(data),
                 "--out", str(out)]) == 0
    given, got = np.load(data), np.load(out)
    assert len(set(given["prompts"])) > 1  # the world's own prompt order would not line up with these
    assert list(got["prompts"]) == list(given["prompts"])
    assert np.array_equal(got["actions"], given["actions"])
    assert np.array_equal(got["videos"][:, 0], given["videos"][:, 0])
    assert main(["generate", "--ckpt", str(tmp_path / "m.safetensors"), "--start-from", str(data),
                 "--prompt", "no ball", "--out", str(out)]) == 0
    assert set(np.load(out)["prompts"]) == {"no ball"}
