"""The Wan2.1 pipeline (issue 16): the teacher imported from a Wan2.1 folder (umT5 and the Wan VAE by
reference), synthetic latents drawn by it, every stage of ``configs/wan2.1-1.3b.yaml`` end to end at a tiny
size (the recipe file itself, its presets switched to ``wan-tiny``), I2V from given first frames, and the
recipe under torchrun (2 gloo processes share the synthetic data and equal one process's).

The parts are tiny random models of the real classes (tests/wan_folder.py); the references are diffusers'
``WanTransformer3DModel`` and ``AutoencoderKLWan`` and transformers' ``UMT5EncoderModel`` themselves.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from causal_rcm.io import bundle_header  # noqa: E402
from causal_rcm.stages.recipe import RECIPES, load_recipe, recipe_variables  # noqa: E402
from causal_rcm.stages.wan import import_wan_teacher, resolve  # noqa: E402
from causal_rcm.stream.bundle import Bundle  # noqa: E402

from .distributed_setup import torchrun  # noqa: E402
from .wan_folder import PROMPTS, make_wan_folder, transformer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return make_wan_folder(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="module")
def teacher(wan, tmp_path_factory):
    return import_wan_teacher(resolve("wan-tiny", [f"root={wan}"]), tmp_path_factory.mktemp("teacher"))


def tiny_recipe(tmp: Path) -> Path:
    """configs/wan2.1-1.3b.yaml with its presets switched to the tiny ones: the same stages and inputs."""
    text = (RECIPES / "wan2.1-1.3b.yaml").read_text()
    assert text.count("preset: wan2.1-1.3b") == 9
    path = tmp / "wan-tiny.yaml"
    path.write_text(text.replace("preset: wan2.1-1.3b", "preset: wan-tiny"))
    return path


@pytest.fixture
def wan_env(wan, monkeypatch):
    monkeypatch.setenv("WAN21_DIR", str(wan))
    monkeypatch.setenv("WAN21_PROMPTS", str(wan / "prompts.txt"))
    return wan


def test_teacher_bundle_is_diffusers_transformer(wan, teacher):
    """The imported teacher's velocity is diffusers' WanTransformer3DModel's on the same inputs (a frame
    count and size that are no multiple of anything), its umT5 context is transformers' encoder's output."""
    import transformers

    b = Bundle.load(teacher, device="cpu")
    ref = transformer()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 6, 10, generator=g)
    t = torch.tensor([0.3, 0.85])
    ctx = b.text_encoder.encode(["a cat walks slowly", ""])
    with torch.no_grad():
        v = b.net.velocity(x, t, ctx)
        want = ref(x, timestep=t * 1000, encoder_hidden_states=ctx, return_dict=False)[0]
    assert (v - want).abs().max() <= 1e-4 * want.abs().max()
    enc = transformers.UMT5EncoderModel.from_pretrained(str(wan / "text_encoder")).eval()
    ids, mask = b.text_encoder.tokenize(["a cat walks slowly"])
    n = int(mask.sum())
    with torch.no_grad():
        h = enc(input_ids=ids[:, :n], attention_mask=mask[:, :n]).last_hidden_state
    assert torch.allclose(ctx[0, :n], h[0], atol=1e-5) and ctx[0, n:].abs().max() == 0


def test_teacher_bundle_refers_to_umt5_and_vae(wan, teacher):
    config, _ = bundle_header(teacher)
    from safetensors import safe_open

    with safe_open(str(teacher), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("net.") for k in keys)  # no umT5 or VAE tensor is copied
    assert config["text_encoder"]["kind"] == "umt5" and config["codec"]["kind"] == "wan_vae"
    assert config["world"] is None and config["video"] == {"frames": 17, "height": 32, "width": 48}
    a, b = Bundle.load(teacher, device="cpu"), Bundle.load(teacher, device="cpu")
    assert a.text_encoder is b.text_encoder  # one umT5 per process, however many bundles refer to it
    assert a.latent_shape == (16, 5, 4, 6)
    assert a.sampling.steps == 4 and a.sampling.cfg == 5.0


def test_parts_are_checked_before_anything_is_written(wan, tmp_path):
    parts = [f"dit={wan / 'transformer'}", f"text_encoder={wan / 'text_encoder'}", f"tokenizer={wan / 'tokenizer'}"]
    with pytest.raises(FileNotFoundError, match="needs \\['vae'\\]"):
        import_wan_teacher(resolve("wan-tiny", parts), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a Wan2.1 folder"):
        import_wan_teacher(resolve("wan-tiny", [f"root={tmp_path}"]), tmp_path / "b")
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        import_wan_teacher(resolve("wan-tiny", [f"root={wan}", "video.frames=16"]), tmp_path / "c")
    with pytest.raises(ValueError, match="takes 16 channels"):
        import_wan_teacher(resolve("wan-tiny", [f"root={wan}", f"vae={_vae_with_z(tmp_path, wan, 8)}"]),
                           tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")


def _vae_with_z(tmp: Path, wan: Path, z: int) -> Path:
    """A copy of the VAE folder whose config says another latent width."""
    import shutil

    out = tmp / f"vae_z{z}"
    shutil.copytree(wan / "vae", out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "z_dim": z}))
    return out


def test_recipe_names_its_variables(monkeypatch):
    import yaml

    assert recipe_variables(yaml.safe_load((RECIPES / "wan2.1-1.3b.yaml").read_text())) == ["WAN21_DIR",
                                                                                          "WAN21_PROMPTS"]
    monkeypatch.delenv("WAN21_DIR", raising=False)
    monkeypatch.setenv("WAN21_PROMPTS", "/x")
    with pytest.raises(ValueError, match="set WAN21_DIR"):
        load_recipe("wan2.1-1.3b")


def test_full_size_presets_resolve(wan_env):
    """Every stage of the full-size recipe resolves its preset (the Wan settings: FSDP2, checkpointed and
    compiled blocks, split attention on cuDNN, no world evaluation)."""
    from causal_rcm.cli.commands import _resolve_stage
    from causal_rcm.config import apply_overrides
    from causal_rcm.stages.synth import synth_preset

    for st in load_recipe("wan2.1-1.3b")["stages"]:
        if st["stage"] == "synth":
            cfg = apply_overrides(synth_preset(st["preset"]), [o.replace("${WAN21_PROMPTS}", "p.txt")
                                                             for o in st.get("overrides", [])])
            assert cfg.prompts_file == "p.txt"
            continue
        cfg = _resolve_stage(st["stage"], st["preset"], [])
        if st["stage"] != "wan_teacher":
            assert cfg.train.eval_every == 0 and cfg.parallel.attention == "split" and cfg.parallel.compile


def test_tiny_recipe_end_to_end(wan_env, tmp_path):
    """Every stage of the Wan2.1 recipe runs; the data hold latents of the teacher's latent shape; every
    student is a few-step causal model that generates videos of the full length, also from a given frame."""
    from causal_rcm.data.synthetic import read_synthetic
    from causal_rcm.stages.recipe import run_recipe

    report = run_recipe(tiny_recipe(tmp_path), out=tmp_path / "run", device="cpu")
    run = tmp_path / "run"
    assert "no world metrics" in report.read_text()
    d = read_synthetic(run / "synth")
    assert d["latents"].shape == (8, 16, 5, 4, 6) and d["latents"].dtype == np.float16
    assert np.isfinite(d["latents"]).all() and set(d["prompts"]) == set(PROMPTS)
    assert read_synthetic(run / "synth_ode", with_ode=True)["ode_states"].shape[:2] == (8, 4)
    for name in ("tf_dcm", "tf_scm", "tf_meanflow", "ode_init", "sf_dmd"):
        config, _ = bundle_header(run / name / "model.safetensors")
        assert config["kind"] == "student" and config["text_encoder"]["kind"] == "umt5"
        assert config["video"]["frames"] == 17 and config["codec"]["kind"] == "wan_vae"
    out = tmp_path / "gen"
    cli = [sys.executable, "-m", "causal_rcm.cli", "generate", "--ckpt", str(run / "sf_dmd" / "model.safetensors"),
           "--prompt", PROMPTS[0], "--n", "2", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cli + ["--out", str(out / "a.npz")], check=True, env=env, capture_output=True)
    a = np.load(out / "a.npz")["videos"]
    assert a.shape == (2, 17, 32, 48, 3)
    # I2V: the first block (1 latent frame = 1 pixel frame) is given; the rest follows from it
    subprocess.run(cli + ["--start-from", str(out / "a.npz"), "--out", str(out / "b.npz")], check=True, env=env,
                   capture_output=True)
    b = np.load(out / "b.npz")["videos"]
    assert b.shape == a.shape and int(np.load(out / "b.npz")["context_frames"]) == 1
    # streamed block by block through the Wan VAE's streaming decode: the same frames as generate's
    streamed = subprocess.run([sys.executable, "-m", "causal_rcm.cli", "stream", "--ckpt",
                               str(run / "sf_dmd" / "model.safetensors"), "--prompt", PROMPTS[0], "--device", "cpu",
                               "--out", str(out / "s.npz")], check=True, env=env, capture_output=True, text=True)
    assert "streamed 17 frames" in streamed.stdout
    assert np.abs(np.load(out / "s.npz")["videos"][0].astype(int) - a[0]).max() <= 1


@pytest.mark.multiprocess
def test_tiny_recipe_under_torchrun_shares_the_synthetic_data(wan_env, tmp_path):
    """Two processes run the whole recipe (FSDP2 over gloo); the synthetic latents they draw together equal
    one process's draws (sample i comes from noise i, whichever process draws it)."""
    from causal_rcm.config import apply_overrides
    from causal_rcm.data.synthetic import read_synthetic
    from causal_rcm.stages.synth import run_synth, synth_preset

    recipe = tiny_recipe(tmp_path)
    torchrun("-m", "causal_rcm.cli", "run", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
             timeout=600)
    run = tmp_path / "run"
    assert json.loads((run / "synth" / "config.json").read_text())["world_size"] == 2
    assert json.loads((run / "tf" / "config.json").read_text())["world_size"] == 2
    one = run_synth(apply_overrides(synth_preset("wan-tiny"), [f"teacher={run / 'teacher' / 'teacher.safetensors'}",
                                                              f"prompts_file={wan_env / 'prompts.txt'}"]),
                    tmp_path / "one", device="cpu", progress=False)
    a, b = read_synthetic(run / "synth"), read_synthetic(one)
    assert a["prompts"] == b["prompts"]
    np.testing.assert_allclose(a["latents"].astype(np.float32), b["latents"].astype(np.float32), atol=2e-3)
    assert (run / "sf_dmd" / "model.safetensors").is_file()


def _write_clip(path: Path, frames: np.ndarray, caption: str | None) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, frames, fps=16, codec="libx264", macro_block_size=2)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def test_real_clips_encode_into_a_latent_training_set(teacher, tmp_path):
    """``causal-rcm encode``: each captioned clip's first frames, scaled to cover the model's size and centre-
    cropped, through the Wan VAE's encoder; the result is the latent dataset format the TF stages read."""
    import imageio.v3 as iio

    from causal_rcm.data.synthetic import read_synthetic
    from causal_rcm.data.videos import fit, read_clip
    from causal_rcm.stages.encode import encode_clips
    from causal_rcm.stream.codec import to_unit

    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, (T, h, w) in enumerate([(20, 40, 64), (17, 64, 40), (25, 32, 48)]):
        v = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None], (T, h, w, 3)).copy()
        v[..., 1] = rng.random((T, h, w)) * 255
        _write_clip(clips / f"c{i}.mp4", v.astype(np.uint8), f"  clip  number {i} ")
    out = encode_clips(teacher, clips, tmp_path / "real", batch=2, shard_size=2, device="cpu", progress=False)
    d = read_synthetic(out)
    assert d["prompts"] == ["clip number 0", "clip number 1", "clip number 2"]
    assert d["latents"].shape == (3, 16, 5, 4, 6)
    b = Bundle.load(teacher, device="cpu")
    decoded = np.stack(list(iio.imiter(clips / "c0.mp4")))[:17]
    want = b.codec.encode(to_unit(fit(decoded, 32, 48)[None]))
    assert torch.allclose(torch.from_numpy(d["latents"][:1]).float(), want, atol=2e-3)
    # fitting: a clip of the target size is itself; a wider one keeps its centre columns
    x = rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    assert np.array_equal(fit(x, 32, 48), x)
    assert np.array_equal(fit(np.concatenate([x[:, :, :8], x, x[:, :, :8]], axis=2), 32, 48), x)
    with pytest.raises(ValueError, match="has 17 frames"):
        read_clip(clips / "c1.mp4", 21, 32, 48)
    _write_clip(clips / "nocap.mp4", x, None)
    with pytest.raises(FileNotFoundError, match="no caption"):
        encode_clips(teacher, clips, tmp_path / "real2", device="cpu", progress=False)


def test_latents_are_mapped_from_one_file(wan, teacher, tmp_path):
    """A latent dataset's latents come back mapped from DIR/latents.npy (one copy for every process), equal
    to the shards' own; the file is remade when the shards change. ODE states too (DIR/ode_states.npy)."""
    from causal_rcm.config import apply_overrides
    from causal_rcm.data.synthetic import array_file, read_synthetic
    from causal_rcm.stages.synth import run_synth, synth_preset

    cfg = apply_overrides(synth_preset("wan-tiny"), [f"teacher={teacher}", f"prompts_file={wan / 'prompts.txt'}",
                                                     "n=6", "shard_size=4"])
    out = run_synth(cfg, tmp_path / "d", device="cpu", progress=False)
    whole = read_synthetic(out)
    mapped = read_synthetic(out, mmap=True)
    assert isinstance(mapped["latents"], np.memmap) and (out / "latents.npy").is_file()
    assert np.array_equal(np.asarray(mapped["latents"]), whole["latents"]) and mapped["prompts"] == whole["prompts"]
    first = (out / "latents.npy").stat().st_mtime_ns
    assert array_file(out).stat().st_mtime_ns == first  # made once
    (out / "shard_00001.npz").unlink()  # a shard lost: the file is remade from the valid one
    with pytest.warns(UserWarning):
        again = read_synthetic(out, mmap=True)
    assert np.array_equal(np.asarray(again["latents"]), whole["latents"][:4]) and len(again["prompts"]) == 4


def test_official_folder_imports_the_same_teacher(wan, teacher, tmp_path):
    """Wan's official layout (DiT in Wan's own names with its config.json, umT5 as the official .pth, the
    tokenizer under google/umt5-xxl/) plus vae= a diffusers VAE folder gives the same teacher."""
    import shutil

    from safetensors.torch import save_file

    from causal_rcm.models.text import hf_to_official
    from causal_rcm.models.text.umt5 import read_weights

    b = Bundle.load(teacher, device="cpu")
    official = tmp_path / "Wan2.1-T2V-1.3B"
    official.mkdir()
    save_file({k: v.contiguous() for k, v in b.net.state_dict().items()}, official / "diffusion_pytorch_model.safetensors")
    (official / "config.json").write_text(json.dumps({"num_heads": b.net.cfg.num_heads, "dim": b.net.cfg.dim}))
    torch.save(hf_to_official(read_weights(wan / "text_encoder")[0]), official / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(wan / "tokenizer", official / "google" / "umt5-xxl")
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth is not diffusers' format"):
        import_wan_teacher(resolve("wan-tiny", [f"root={official}"]), tmp_path / "a")
    path = import_wan_teacher(resolve("wan-tiny", [f"root={official}", f"vae={wan / 'vae'}"]), tmp_path / "b")
    c = Bundle.load(path, device="cpu")
    assert c.net.cfg == b.net.cfg
    assert all(torch.equal(v, b.net.state_dict()[k]) for k, v in c.net.state_dict().items())
    prompts = ["a cat walks slowly", ""]
    assert torch.allclose(c.text_encoder.encode(prompts), b.text_encoder.encode(prompts), atol=1e-6)
