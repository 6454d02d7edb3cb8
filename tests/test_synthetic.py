"""Synthetic dataset (data/synthetic.py, stages/synth.py) and euler_sample's ODE snapshots (flow.py)."""
import hashlib
import io
import json
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.config import preset
from causal_rcm.data.synthetic import SyntheticDataWarning, read_synthetic
from causal_rcm.flow import euler_sample, euler_times
from causal_rcm.io import save_bundle
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.models.wan import WanDiT
from causal_rcm.stages.synth import ODE_INIT_TIMES, SynthConfig, run_synth, teacher_samples, world_prompt_order
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.codec import to_uint8 as from_model
from causal_rcm.stream.sample import sample_noise, sample_videos
from causal_rcm.stream.sampling import Euler, with_overrides
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

STEPS = 3  # few Euler steps keep the suite fast; the ODE-init grid (48) is tested once on two samples
SEED = 7


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A random blob-tiny teacher (head perturbed away from Wan's zero init) saved as a bundle."""
    torch.manual_seed(0)
    world = WorldConfig(size=16, frames=9)
    net = randomize_(WanDiT(preset("blob-tiny")), std=0.05)
    te = WorldTextEncoder.for_prompts(list(make_world(world).prompts()) + ["no ball"], dim=32, num_layers=1,
                                      num_heads=2)
    config = dict(kind="teacher", model=net.cfg.to_dict(), text_encoder=te.cfg.to_dict(), world=asdict(world),
                  sampling={"method": "euler", "steps": STEPS, "cfg": 3.0, "shift": 3.0})
    return save_bundle(tmp_path_factory.mktemp("teacher") / "teacher.safetensors",
                       {"net": net, "text_encoder": te}, config)


@pytest.fixture(scope="module")
def gen(bundle):
    return Bundle.load(bundle, device="cpu")


def synth(bundle, out, **kw):
    kw = {"n": 6, "seed": SEED, "shard_size": 4, "batch": 4, **kw}
    return run_synth(SynthConfig(teacher=str(bundle), **kw), out, progress=False)


def sample(gen, prompts, **kw):
    steps = kw.pop("steps", None)
    return sample_videos(gen, prompts, seed=SEED, sampling=with_overrides(gen.sampling, steps=steps) if steps else None,
                         show_progress=False, **kw)


@pytest.fixture(scope="module")
def dataset(bundle, tmp_path_factory):
    """6 videos in shards of 4 (so 4 + 2), sampled in batches of 4."""
    return synth(bundle, tmp_path_factory.mktemp("synth") / "data")


def copy_dataset(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_euler_sample_keep_returns_nearest_grid_states():
    torch.manual_seed(0)
    a = torch.randn(2, 3)
    v = lambda x, t: torch.sin(x) * t[:, None] + a  # noqa: E731 - any velocity that moves x
    noise = torch.randn(2, 3)
    steps, s = 6, 3.0
    grid = euler_times(steps, s)
    traj = [noise]
    for i in range(steps):  # the reference trajectory, one Euler step at a time
        traj.append(traj[-1] + (grid[i + 1] - grid[i]) * v(traj[-1], grid[i].expand(2)))
    keep = [1.0, 0.0, 0.9, 0.5, 0.51]
    x0, states, times = euler_sample(v, noise, steps, s, keep=keep)
    nearest = [int((grid - k).abs().argmin()) for k in keep]
    assert torch.equal(x0, euler_sample(v, noise, steps, s))  # keep does not change the result
    assert torch.equal(x0, traj[-1])
    assert states.shape == (2, len(keep), 3) and times.dtype == torch.float32
    assert torch.equal(times, grid[nearest])
    for j, k in enumerate(nearest):
        assert torch.equal(states[:, j], traj[k])
    assert torch.equal(states[:, 0], noise) and torch.equal(states[:, 1], x0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        euler_sample(v, noise, steps, s, keep=[1.5])


def test_shards_manifest_and_contents(dataset, gen, bundle):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert [(s["file"], s["count"], s["first_id"]) for s in manifest["shards"]] == [
        ("shard_00000.npz", 4, 0), ("shard_00001.npz", 2, 4)]
    assert manifest["complete"] and not list(dataset.glob(".*.tmp*"))
    cfg = manifest["config"]
    assert cfg["teacher"]["path"] == str(bundle) and cfg["seed"] == SEED and cfg["n"] == 6
    assert cfg["sampling"] == {"method": "euler", "steps": STEPS, "cfg": 3.0, "shift": 3.0}
    assert cfg["world"] == asdict(gen.world) and cfg["ode_times"] is None
    d = read_synthetic(dataset)
    assert d["videos"].dtype == np.uint8 and d["videos"].shape == (6, 9, 16, 16, 3)
    assert d["sample_ids"].tolist() == list(range(6))
    assert d["prompts"] == world_prompt_order(make_world(gen.world), 6, SEED)
    assert d["videos"].std() > 5  # a random teacher with a perturbed head does not give a flat video
    with pytest.raises(ValueError, match="without ODE"):
        read_synthetic(dataset, with_ode=True)


def test_world_prompt_order_is_balanced_and_prefix_stable(gen):
    w = make_world(gen.world)
    ps = w.prompts()
    order = world_prompt_order(w, 3 * len(ps) + 2, SEED)
    assert all(order.count(p) in (3, 4) for p in ps)
    assert world_prompt_order(w, 5, SEED) == order[:5]
    assert order[:len(ps)] != list(ps)  # shuffled, not the world's own order


def test_each_sample_regenerates(dataset, gen):
    d = read_synthetic(dataset)
    # the whole prompt list through sample_videos: its call-local index is the dataset's sample id
    assert np.array_equal(sample(gen, d["prompts"], batch=4), d["videos"])
    assert np.array_equal(sample(gen, d["prompts"][:1])[0], d["videos"][0])
    for i in (1, 5):  # any sample alone, from its own id; alone in a batch of one the float sums may
        # round differently from the batch of four, so allow one grey level
        alone, _, _ = teacher_samples(gen, [d["prompts"][i]], SEED, i, gen.sampling)
        assert np.abs(alone[0].astype(int) - d["videos"][i]).max() <= 1


def test_resume_after_kill_gives_the_same_bytes(dataset, bundle, tmp_path):
    run = copy_dataset(dataset, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    # the state a kill leaves after shard 0: shard 1 half-written under its temporary name, not in the manifest
    (run / "shard_00001.npz").unlink()
    (run / ".shard_00001.npz.tmp123").write_bytes(b"half a shard")
    (run / "manifest.json").write_text(json.dumps({**manifest, "shards": manifest["shards"][:1], "complete": False}))
    with pytest.warns(SyntheticDataWarning, match="holds 4 valid samples of 6"):
        assert len(read_synthetic(run)["videos"]) == 4
    synth(bundle, run, batch=2)
    for f in ("shard_00000.npz", "shard_00001.npz"):
        assert (run / f).read_bytes() == (dataset / f).read_bytes()
    assert json.loads((run / "manifest.json").read_text())["shards"] == manifest["shards"]
    # a shard the manifest lists but that is gone is written again, with a warning
    (run / "shard_00000.npz").unlink()
    with pytest.warns(SyntheticDataWarning, match="shard_00000.npz: listed in the manifest but missing"):
        synth(bundle, run)
    assert (run / "shard_00000.npz").read_bytes() == (dataset / "shard_00000.npz").read_bytes()


def test_other_arguments_into_the_same_folder_are_refused(dataset, bundle, tmp_path):
    run = copy_dataset(dataset, tmp_path / "run")
    (tmp_path / "one.txt").write_text("a red ball\n")
    for kw, what in ((dict(seed=SEED + 1), "seed"), (dict(n=8), "n:"), (dict(steps=STEPS + 1), "sampling"),
                     (dict(prompts_file=str(tmp_path / "one.txt")), "prompts")):
        with pytest.raises(ValueError, match=f"other settings.*{what}"):
            synth(bundle, run, **kw)
    (tmp_path / "bad.txt").write_text("a purple ball\n")
    with pytest.raises(ValueError, match="not a blobworld t2v prompt"):
        synth(bundle, tmp_path / "bad", n=2, prompts_file=str(tmp_path / "bad.txt"))


def test_bad_shards_are_reported_and_skipped(dataset, tmp_path):
    run = copy_dataset(dataset, tmp_path / "run")
    data = bytearray((run / "shard_00000.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "shard_00000.npz").write_bytes(bytes(data))
    with pytest.warns(SyntheticDataWarning, match="shard_00000.npz: sha256 .* does not match"):
        d = read_synthetic(run)
    assert d["sample_ids"].tolist() == [4, 5] and len(d["prompts"]) == 2

    # files whose checksum matches a (tampered) manifest are still checked: undecodable, wrong shapes
    manifest = json.loads((run / "manifest.json").read_text())

    def replace_shard(i, blob):
        (run / manifest["shards"][i]["file"]).write_bytes(blob)
        manifest["shards"][i]["sha256"] = hashlib.sha256(blob).hexdigest()
        (run / "manifest.json").write_text(json.dumps(manifest))

    replace_shard(0, b"not a zip file")
    buf = io.BytesIO()
    np.savez(buf, videos=np.zeros((2, 9, 8, 8, 3), np.uint8), prompts=np.array(["a red ball"] * 2),
             sample_ids=np.arange(4, 6))
    replace_shard(1, buf.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="no valid shard"):
            read_synthetic(run)
    messages = [str(w.message) for w in caught if w.category is SyntheticDataWarning]
    assert any("shard_00000.npz: cannot be read as .npz" in m for m in messages)
    assert any("shard_00001.npz: videos is uint8 (2, 9, 8, 8, 3), expected |u1 (2, 9, 16, 16, 3)" in m
               for m in messages)
    with pytest.raises(FileNotFoundError, match="not a synthetic dataset"):
        read_synthetic(tmp_path)


def test_ode_snapshots(gen, bundle, tmp_path):
    times = [1.0, 0.5, 0.0]
    synth(bundle, tmp_path / "ode", n=3, shard_size=2, batch=2, ode_times=tuple(times), steps=4)
    d = read_synthetic(tmp_path / "ode", with_ode=True)
    grid = euler_times(4, 3.0)
    nearest = grid[[int((grid - t).abs().argmin()) for t in times]]
    assert d["ode_states"].shape == (3, 3, 3, 9, 16, 16) and d["ode_states"].dtype == np.float16
    assert np.array_equal(d["ode_times"], nearest.numpy()) and d["ode_times"][-1] == 0.0
    noise = sample_noise(3, gen.latent_shape, SEED)
    assert np.array_equal(d["ode_states"][:, 0], noise.half().numpy())  # the t = 1 state is sample i's noise
    x0 = from_model(torch.from_numpy(d["ode_states"][:, -1]).float())  # the t = 0 state is the video (fp16)
    assert np.abs(x0.astype(int) - d["videos"]).max() <= 1
    assert np.array_equal(d["videos"], sample(gen, d["prompts"], steps=4, batch=2))
    mapped = read_synthetic(tmp_path / "ode", with_ode=True, mmap=True)  # one file every process maps
    assert isinstance(mapped["ode_states"], np.memmap) and (tmp_path / "ode" / "ode_states.npy").is_file()
    assert np.array_equal(np.asarray(mapped["ode_states"]), d["ode_states"])
    assert isinstance(mapped["videos"], np.ndarray) and np.array_equal(mapped["videos"], d["videos"])


def test_ode_init_grid_keeps_generator_samples(gen):
    prompts = list(make_world(gen.world).prompts()[:2])
    videos, states, times = teacher_samples(gen, prompts, SEED, 0, Euler(48), ode_times=ODE_INIT_TIMES)
    assert np.array_equal(videos, sample(gen, prompts, steps=48))
    assert states.shape == (2, 4, 3, 9, 16, 16) and times.shape == (4,)
    assert np.abs(times - np.array(ODE_INIT_TIMES)).max() < 0.02  # a 48-step shift-3 grid is that fine


def test_cli(bundle, tmp_path, capsys):
    def run(*argv):
        return main(["synth", "--teacher", str(bundle), "--n", "2", "--seed", "1", *argv])

    (tmp_path / "prompts.txt").write_text("a red ball\n\na green ball and a blue ball\n")
    assert run("--out", str(tmp_path / "d"), "--steps", "2", "--prompts", str(tmp_path / "prompts.txt"),
               "--ode-times", "0.9994,0.625") == 0
    assert "2 videos in 1 shards" in capsys.readouterr().out
    d = read_synthetic(tmp_path / "d", with_ode=True)
    assert d["prompts"] == ["a red ball", "a green ball and a blue ball"] and d["ode_states"].shape[1] == 2
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["stage"] == "synth" and cfg["sampling"]["steps"] == 2
    (tmp_path / "bad.txt").write_text("a red ball\na purple ball\n")
    for argv, message in (
            (["--out", str(tmp_path / "e"), "--prompts", str(tmp_path / "bad.txt")],
             "bad.txt: prompt 1 'a purple ball' is not a blobworld t2v prompt"),
            (["--out", str(tmp_path / "e"), "--ode-times", "0.9,fast"], "--ode-times"),
            (["--out", str(tmp_path / "e"), "--ode-times", "1.5"], "[0, 1]"),
            (["--out", str(tmp_path / "d"), "--steps", "3"], "other settings")):
        assert run(*argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "d" / "config.json").read_text()) == cfg  # the refusal keeps the record
    with pytest.raises(FileNotFoundError, match="no teacher bundle"):
        run_synth(SynthConfig(teacher=str(tmp_path / "missing.safetensors"), n=1), tmp_path / "f")
