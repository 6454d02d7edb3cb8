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


def _agent_model(world: WorldConfig, sampling, kind: str) -> Bundle:
    """A random-init Blobworld-agent model of the blob-tiny size (five actions) with its world text encoder."""
    net = WanDiT(dataclasses.replace(preset("blob-tiny"), action_dim=5)).eval()
    text = WorldTextEncoder.for_prompts(list(make_world(world).prompts()), dim=32, num_layers=1, num_heads=2)
    return Bundle(net, text, sampling, world, kind)


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
    bundle = _agent_model(WorldConfig(size=16, frames=9, variant="agent"), Euler(steps=3, cfg=3.0), "teacher")
    torch.nn.init.normal_(bundle.net.head.head.weight, std=0.02)          # a network whose output is not zero
    torch.nn.init.normal_(bundle.net.action_embedding.mlp[2].weight, std=1.0)  # and depends on the actions
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
    _agent_model(WorldConfig(size=16, frames=5, variant="agent"), FewStep(pattern="c1-1", steps_first=1, steps=1),
                 "student").save(tmp_path / "m.safetensors")
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


def test_causal_teacher_learns_from_a_world_sample_file(tmp_path, monkeypatch, capsys):
    """`train tf data=FILE.npz`: the causal teacher trains on the world's own videos and actions (a world
    sample file instead of a synthetic dataset); every sample it is given carries one of the file's action
    sequences, frame k the move a_{k−1}. A file of another world size, or a method that needs ODE states, is refused."""
    world_args = ["--variant", "agent", "--size", "16", "--frames", "9"]
    data = tmp_path / "world.npz"
    assert main(["world", "sample", *world_args, "--n", "12", "--seed", "5", "--out", str(data)]) == 0
    assert main(["train", "teacher", "--preset", "blob-tiny", "world.variant=agent", "train.steps=1",
                 "train.batch=2", "train.warmup=1", "--out", str(tmp_path / "t")]) == 0
    init = tmp_path / "t" / "teacher.safetensors"
    seen = _recording(monkeypatch)
    assert main(["train", "tf", "--preset", "blob-tiny", f"data={data}", f"init={init}", "train.steps=2",
                 "train.batch=4", "train.warmup=1", "pattern=c1-1", "--out", str(tmp_path / "tf")]) == 0
    want_f, want_v = _expected(np.load(data)["actions"])
    rows = [(f, v) for feats, valid in seen[:2] for f, v in zip(feats, valid)]
    assert len(rows) == 8 and any(v.any() for _, v in rows)
    for f, v in rows:
        # the TF layout gives the clean and the noisy copy of frame k the same action (METHOD.md §7)
        half = len(v) // 2
        assert np.array_equal(f[:half], f[half:]) and np.array_equal(v[:half], v[half:])
        assert not v.any() or any(np.array_equal(f[:half], wf) and np.array_equal(v[:half], wv)
                                  for wf, wv in zip(want_f, want_v))
    small = tmp_path / "small.npz"
    assert main(["world", "sample", "--variant", "agent", "--size", "12", "--frames", "9", "--n", "2",
                 "--out", str(small)]) == 0
    assert main(["train", "tf", "--preset", "blob-tiny", f"data={small}", f"init={init}", "train.steps=1",
                 "--out", str(tmp_path / "tf2")]) != 0
    assert "holds videos (9, 12, 12, 3)" in capsys.readouterr().err
    assert main(["train", "ode_init", "--preset", "blob-tiny", f"data={data}", f"init={init}", "train.steps=1",
                 "--out", str(tmp_path / "tf3")]) != 0
    assert "needs the teacher's ODE states" in capsys.readouterr().err


def test_action_sensitivity_is_one_for_a_model_that_ignores_actions():
    """eval/actions.py: a world model whose action embedding is zero (as a new one starts) scores the same error
    with permuted actions (ratio exactly 1, causal and bidirectional); once its output depends on the actions
    the ratio moves off 1, and the true error equals the TF loss's own mean (the same quantity, unweighted)."""
    from causal_rcm.eval.actions import action_sensitivity
    from causal_rcm.masks import ChunkPattern
    from causal_rcm.models.conditioning import encode_actions, frame_action_ids
    from causal_rcm.objectives import tf as obj

    torch.manual_seed(0)
    net = WanDiT(dataclasses.replace(preset("blob-tiny"), action_dim=5)).eval()
    torch.nn.init.normal_(net.head.head.weight, std=0.02)
    s = make_world(WorldConfig(size=16, frames=9, variant="agent")).sample(6, seed=1)
    x0 = torch.from_numpy(s["videos"]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    acts = encode_actions(frame_action_ids(s["actions"], 9, 1), 5, "cpu")
    ctx = torch.randn(6, 4, net.cfg.text_dim)
    batch = obj.Batch(x0, torch.randn_like(x0), ctx, actions=acts)
    c11 = ChunkPattern.parse("c1-1")
    for pattern in (None, c11):
        rows = action_sensitivity(net, [batch], [0.3, 0.8], pattern)
        assert all(r["ratio"] == 1.0 and r["n"] == 6 for r in rows)
    torch.nn.init.normal_(net.action_embedding.mlp[2].weight, std=1.0)
    rows = action_sensitivity(net, [batch], [0.3, 0.8], c11)
    assert all(abs(r["ratio"] - 1) > 1e-4 for r in rows)
    v_fn = obj.net_fns(net)[0]
    with torch.no_grad():
        mse = obj.tf_loss(v_fn, batch, torch.full((6,), 0.3), c11, weight="none")[1]["mse"]
    assert abs(rows[0]["error_true"] - float(mse)) < 1e-5 * float(mse)


def test_the_shipped_tiny_agent_student_follows_its_actions(tmp_path):
    """assets/blob-agent-tiny/sf_dmd_c1-1 (the blob-agent-tiny recipe's SF-DMD student, docs/results/
    world_models.md), from rendered first frames under their actions: the agent drifts along the given actions
    (the data: 1 px per step at 16×16) and not along other videos' actions."""
    from causal_rcm.worlds.blobworld_metrics import evaluate

    data = tmp_path / "data.npz"
    assert main(["world", "sample", "--variant", "agent", "--n", "48", "--size", "16", "--frames", "9",
                 "--seed", "21", "--out", str(data)]) == 0
    out = tmp_path / "g.npz"
    from pathlib import Path

    ckpt = Path(__file__).resolve().parents[1] / "assets" / "blob-agent-tiny" / "sf_dmd_c1-1.safetensors"
    assert main(["generate", "--ckpt", str(ckpt), "--start-from", str(data),
                 "--seed", "1", "--out", str(out)]) == 0
    g = np.load(out)
    own = evaluate(g["videos"], list(g["prompts"]), g["actions"])
    other = evaluate(g["videos"], list(g["prompts"]), np.roll(g["actions"], 1, axis=0))
    assert own["action_drift"] > 0.7 and abs(other["action_drift"]) < 0.35
    assert own["action_accuracy"] > 0.4
