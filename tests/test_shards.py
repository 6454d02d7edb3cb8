"""The generic shard writer and reader (data/shards.py): same bytes for any number of workers, resume after
a kill, refusal of changed settings, and bad shards reported and skipped."""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from causal_rcm.data.shards import (MANIFEST, ShardWarning, differences, npz_bytes, read_shards,
                                    write_shards)

CONFIG = {"kind": "toy", "seed": 3, "model": {"width": 4, "path": "/a"}}


@dataclass(frozen=True)
class Toy:
    """Sample i: a 2×3 uint8 image from (seed, i), a label and a name; optionally logs each call to a file and
    fails at one range (a killed run)."""

    seed: int = 3
    log: str | None = None
    fail_at: int | None = None

    def __call__(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{lo}\n")
        if lo == self.fail_at:
            raise RuntimeError("killed")
        img = np.stack([np.random.default_rng([self.seed, i]).integers(0, 256, (2, 3), dtype=np.uint8)
                        for i in range(lo, hi)])
        return {"img": img, "label": np.arange(lo, hi, dtype=np.int64) % 3,
                "name": np.array([f"s{i}" * (1 + i % 2) for i in range(lo, hi)])}  # str lengths vary by shard


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def test_parallel_equals_serial_bytes(tmp_path):
    a = write_shards(tmp_path / "a", 7, 2, CONFIG, Toy(), workers=1, progress=False)
    b = write_shards(tmp_path / "b", 7, 2, CONFIG, Toy(), workers=2, progress=False)
    ma, mb = manifest(a), manifest(b)
    assert ma["complete"] and [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert [s["count"] for s in ma["shards"]] == [2, 2, 2, 1]
    for name in ("shard_00000.npz", "shard_00003.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    d = read_shards(b)
    assert np.array_equal(d["sample_ids"], np.arange(7)) and d["img"].shape == (7, 2, 3)
    assert np.array_equal(d["img"][5], np.random.default_rng([3, 5]).integers(0, 256, (2, 3), dtype=np.uint8))
    assert list(d["name"]) == [f"s{i}" * (1 + i % 2) for i in range(7)]


def test_resume_after_a_kill_makes_only_the_missing_shards(tmp_path):
    root, log = tmp_path / "d", tmp_path / "calls.txt"
    with pytest.raises(RuntimeError, match="killed"):
        write_shards(root, 7, 2, CONFIG, Toy(log=str(log), fail_at=4), progress=False)
    m = manifest(root)
    assert not m["complete"] and [s["first_id"] for s in m["shards"]] == [0, 2]
    (root / ".shard_00002.npz.tmp999").write_bytes(b"half a file")   # what a kill mid-write leaves
    with pytest.warns(ShardWarning, match="4 valid samples of 7"):
        assert len(read_shards(root)["sample_ids"]) == 4              # a partial folder is readable
    log.write_text("")
    write_shards(root, 7, 2, CONFIG, Toy(log=str(log)), progress=False)
    assert log.read_text().split() == ["4", "6"]
    assert manifest(root)["complete"] and not list(root.glob(".*tmp*"))
    fresh = write_shards(tmp_path / "fresh", 7, 2, CONFIG, Toy(), progress=False)
    assert manifest(root)["shards"] == manifest(fresh)["shards"]


def test_changed_settings_are_refused_naming_the_keys(tmp_path):
    root = write_shards(tmp_path / "d", 4, 2, CONFIG, Toy(), progress=False)
    with pytest.raises(ValueError, match=r"model\.width: 4 -> 5"):
        write_shards(root, 4, 2, {**CONFIG, "model": {"width": 5, "path": "/a"}}, Toy(), progress=False)
    with pytest.raises(ValueError, match="n: 4 -> 6"):
        write_shards(root, 6, 2, CONFIG, Toy(), progress=False)
    with pytest.raises(ValueError, match="shard_size: 2 -> 3"):
        write_shards(root, 4, 3, CONFIG, Toy(), progress=False)
    # an ignored key (a path that does not change the data) may change
    write_shards(root, 4, 2, {**CONFIG, "model": {"width": 4, "path": "/b"}}, Toy(), progress=False,
                 ignore=["model.path"])
    assert differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: None -> 2"]


def test_bad_shards_are_reported_and_skipped(tmp_path):
    root = write_shards(tmp_path / "d", 8, 2, CONFIG, Toy(), progress=False)
    m = manifest(root)
    data = (root / "shard_00000.npz").read_bytes()
    (root / "shard_00000.npz").write_bytes(data[: len(data) // 2])                       # truncated
    (root / "shard_00001.npz").write_bytes(b"x" * m["shards"][1]["bytes"])               # same size, other bytes
    os.remove(root / "shard_00002.npz")                                                  # missing
    # well-formed and checksummed, but the image has the wrong shape
    bad = npz_bytes({"img": np.zeros((2, 3, 3), np.uint8), "label": np.zeros(2, np.int64),
                     "name": np.array(["a", "b"]), "sample_ids": np.arange(6, 8)})
    (root / "shard_00003.npz").write_bytes(bad)
    m["shards"][3].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.warns(ShardWarning) as caught:
        with pytest.raises(ValueError, match="no valid shard"):
            read_shards(root)
    text = " | ".join(str(w.message) for w in caught)
    assert "shard_00000.npz: sha256" in text and "shard_00001.npz: sha256" in text
    assert "shard_00002.npz: missing" in text and "img is uint8 (2, 3, 3), expected |u1 (2, 2, 3)" in text
    # a resume with verify remakes the changed shards; the default (size) check only the missing one
    with pytest.warns(ShardWarning, match="missing or changed"):
        write_shards(root, 8, 2, CONFIG, Toy(), progress=False, verify=True)
    assert np.array_equal(read_shards(root)["sample_ids"], np.arange(8))


def test_make_shard_must_return_rows_of_its_range(tmp_path):
    with pytest.raises(ValueError, match="every value must be a non-object ndarray of 2 rows"):
        write_shards(tmp_path / "d", 4, 2, CONFIG, lambda lo, hi: {"x": np.zeros(3)}, progress=False)
