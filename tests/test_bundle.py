"""Bundles: what is saved loads back the same; a damaged file is refused with one clear message; the
typed sampling settings travel with it and refuse settings that do not apply."""
import dataclasses

import numpy as np
import pytest
import torch

from causal_rcm.config import preset
from causal_rcm.io import BundleError, load_bundle
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sample import sample_videos
from causal_rcm.stream.sampling import Euler, EulerCFG, FewStep, sampling_from_dict, to_dict, with_overrides
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

WORLD = WorldConfig(size=16, frames=5)


def tiny_bundle(sampling, seed=0) -> Bundle:
    torch.manual_seed(seed)
    text = WorldTextEncoder.for_prompts(list(make_world(WORLD).prompts()), dim=16, num_layers=1, num_heads=2)
    net = randomize_(WanDiT(dataclasses.replace(preset("blob-tiny"), text_dim=16)), seed=seed)
    return Bundle(net, text, sampling, WORLD, "student" if isinstance(sampling, FewStep) else "teacher")


def test_round_trip_samples_the_same(tmp_path):
    b = tiny_bundle(FewStep("c1-4", 2, 1))
    path = b.save(tmp_path / "b.safetensors", method="tf_scm")
    back = Bundle.load(path, device="cpu")
    assert back.sampling == b.sampling and back.extra["method"] == "tf_scm" and back.world == WORLD
    p = ["a red ball", "a green ball and a cyan ball"]
    np.testing.assert_array_equal(sample_videos(b, p, seed=3, show_progress=False),
                                  sample_videos(back, p, seed=3, show_progress=False))
    assert not any(q.requires_grad for q in back.net.parameters())
    assert all(q.requires_grad for q in Bundle.load(path, device="cpu", trainable=True).net.parameters())


def test_damaged_bundles_are_refused(tmp_path):
    path = tiny_bundle(Euler(steps=2)).save(tmp_path / "b.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_bundle(tmp_path / "trunc.safetensors")
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # a weight byte: the header still parses, the checksum does not match
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(tmp_path / "flip.safetensors")
    with pytest.raises(BundleError, match="is a directory"):
        load_bundle(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="expected a .safetensors"):
        load_bundle(tmp_path / "notes.txt")
    b = tiny_bundle(Euler(steps=2))
    with torch.no_grad():
        b.net.head.head.weight[0, 0] = float("nan")
    with pytest.raises(BundleError, match="NaN"):
        load_bundle(b.save(tmp_path / "nan.safetensors"))


def test_a_bundle_without_a_checksum_loads_with_a_warning(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tiny_bundle(Euler(steps=2)).save(tmp_path / "b.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={"config": meta["config"]})
    capsys.readouterr()
    load_bundle(path)
    assert "checksum" not in capsys.readouterr().out
    load_bundle(tmp_path / "old.safetensors")  # as the bundles written before checksums: usable, but said so
    assert "carries no checksum" in capsys.readouterr().out


def test_sampling_values_round_trip_and_refuse_what_does_not_apply():
    for s in (Euler(10, 2.0, 3.0), EulerCFG("c3-3", 8, 3.0, 3.0, 4), FewStep("c1-1", 4, 1, context="noisy")):
        assert sampling_from_dict(to_dict(s)) == s
    assert sampling_from_dict({"steps": 50, "cfg": 3.0, "shift": 3.0}) == Euler()  # old bundles: no method
    with pytest.raises(ValueError, match="does not apply to a bidirectional teacher"):
        with_overrides(Euler(), steps_first=3)
    with pytest.raises(ValueError, match="--cfg does not apply to a few-step student"):
        with_overrides(FewStep(), cfg=2.0)
    with pytest.raises(ValueError, match="unknown few_step sampling keys"):
        sampling_from_dict({"method": "few_step", "stepz": 2})
    for kw in ({"cfg": -1.0}, {"cfg": float("nan")}, {"shift": float("nan")}, {"shift": float("inf")}):
        with pytest.raises(ValueError, match="must be a finite number"):
            with_overrides(Euler(), **kw)
        with pytest.raises(ValueError, match="must be a finite number"):
            with_overrides(EulerCFG(), **kw)


def test_causal_teacher_takes_its_own_first_chunk_steps():
    """A causal teacher's first block runs ``steps_first`` Euler steps on its own grid."""
    b = tiny_bundle(EulerCFG("c1-4", 2, 2.0, 3.0))
    p = ["a red ball"]
    a = sample_videos(b, p, seed=0, sampling=with_overrides(b.sampling, steps_first=3), show_progress=False)
    c = sample_videos(b, p, seed=0, sampling=with_overrides(b.sampling, steps=3), show_progress=False)
    d = sample_videos(b, p, seed=0, show_progress=False)
    assert (a[:, :1] == c[:, :1]).all()      # first block: 3 steps in both
    assert not (a[:, :1] == d[:, :1]).all()  # ... not the 2 of the plain grid


def test_write_safetensors_is_read_back_by_safetensors(tmp_path):
    """Our streaming writer's files are what safetensors' own reader expects: every dtype, shape (scalar,
    empty, non-contiguous input, sizes whose bytes are not multiples of 8) and the metadata come back."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from causal_rcm.io import write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"net.w": torch.randn(3, 5, generator=g).to(torch.bfloat16), "net.t": torch.randn(7, 3, generator=g).t(),
               "flag": torch.tensor(True), "none": torch.empty(0, 4), "ids": torch.arange(5),
               "half": torch.randn(3, 1, generator=g).half(), "bytes": torch.arange(3, dtype=torch.uint8),
               "f64": torch.randn(2, generator=g, dtype=torch.float64), "i32": torch.arange(3, dtype=torch.int32)}
    path = write_safetensors(tmp_path / "sub" / "x.safetensors", tensors, {"config": "{}", "k": "v"})
    got = load_file(path)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"config": "{}", "k": "v"}
    assert [p.name for p in path.parent.iterdir()] == ["x.safetensors"]  # no temporary file left
