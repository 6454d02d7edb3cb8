"""The command line as a new user meets it: every expected failure ends with one line that names the fix, a
non-zero exit code, no traceback and no partial output; a killed run resumes; --help says what there is."""
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.config import preset
from causal_rcm.io import read_jsonl
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import Euler, FewStep
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

WORLD = WorldConfig(size=16, frames=5)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    text = WorldTextEncoder.for_prompts(list(make_world(WORLD).prompts()), dim=16, num_layers=1, num_heads=2)
    net = randomize_(WanDiT(dataclasses.replace(preset("blob-tiny"), text_dim=16)))
    student = Bundle(net, text, FewStep("c1-4", 2, 1), WORLD, "student").save(root / "student.safetensors")
    Bundle(net, text, Euler(steps=2), WORLD, "teacher").save(root / "teacher.safetensors")
    data = student.read_bytes()
    (root / "trunc.safetensors").write_bytes(data[: len(data) // 3])
    with torch.no_grad():
        net.head.head.weight[0, 0] = float("nan")
    Bundle(net, text, Euler(steps=2), WORLD, "teacher").save(root / "nan.safetensors")
    (root / "notes.txt").write_text("not a sample file")
    return root


def one_line_error(capsys, argv, *expected, code=2):
    """Run the CLI; it must fail with exactly one line on stderr holding every expected piece."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    mine = [line for line in err.splitlines() if line.startswith("causal-rcm")]  # progress bars may precede it
    assert "Traceback" not in err and len(mine) == 1 and err.endswith(mine[0]), err
    for piece in expected:
        assert piece in mine[0], (piece, err)
    return mine[0]


def test_generate_refuses_bad_input_with_one_line(bundles, tmp_path, capsys):
    s, t = str(bundles / "student.safetensors"), str(bundles / "teacher.safetensors")
    out = str(tmp_path / "x.npz")
    cases = [
        (["--ckpt", s, "--out", str(tmp_path / "x.gif")], "names the .npz sample file", "x.npz"),
        (["--ckpt", s, "--out", out, "--prompt", ""], "--prompt is empty", "--unconditional"),
        (["--ckpt", s, "--out", out, "--n", "0"], "--n must be >= 1"),
        (["--ckpt", s, "--out", out, "--seed", "-1"], "--seed must be >= 0"),
        (["--ckpt", s, "--out", out, "--unconditional", "--prompt", "a red ball"], "exclude each other"),
        (["--ckpt", t, "--out", out, "--cfg", "nan"], "cfg must be a finite number >= 0"),
        (["--ckpt", s, "--out", out, "--steps", "7"], "steps must be an integer 1..4"),
        (["--ckpt", t, "--out", out, "--steps-first", "3"], "--steps-first does not apply to a bidirectional"),
        (["--ckpt", s, "--out", out, "--cfg", "2"], "--cfg does not apply to a few-step student"),
        (["--ckpt", s, "--out", out, "--prompt", "a purple ball"], "not a blobworld t2v prompt"),
        (["--ckpt", str(bundles / "trunc.safetensors"), "--out", out], "truncated or corrupt"),
        (["--ckpt", str(bundles), "--out", out], "is a directory"),
        (["--ckpt", str(bundles / "nan.safetensors"), "--out", out], "NaN or infinite weights"),
        (["--ckpt", str(bundles / "missing.safetensors"), "--out", out], "no bundle at"),
        (["--ckpt", s, "--out", str(bundles / "notes.txt" / "x.npz")], "is a file, not a folder"),
        (["--ckpt", s, "--out", out, "--actions", str(bundles / "notes.txt")], "--actions"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--ckpt", s, "--out", out, "--device", "cuda"], "no CUDA GPU", "--device cpu"))
    if Path("/proc/self").is_dir():  # a folder that refuses new files whatever its mode bits say (even to root)
        cases.append((["--ckpt", s, "--out", "/proc/x.npz"], "/proc refuses new files", "another path"))
    for args, *expected in cases:
        one_line_error(capsys, ["generate", *args], *expected)
        assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob("x.*"))


def test_generate_writes_samples_and_media_beside_them(bundles, tmp_path, capsys):
    out = tmp_path / "samples" / "red.npz"
    assert main(["generate", "--ckpt", str(bundles / "student.safetensors"), "--prompt", "a red ball",
                 "--n", "2", "--out", str(out)]) == 0
    for suffix in (".npz", ".gif", ".png", ".mp4"):
        assert out.with_suffix(suffix).is_file()
    assert main(["eval", str(out), "--json"]) == 0
    assert '"prompt_accuracy"' in capsys.readouterr().out
    import imageio.v3 as iio

    gif, mp4 = iio.imread(out.with_suffix(".gif")), iio.imread(out.with_suffix(".mp4"))
    assert mp4.shape[1:3] == gif.shape[1:3]  # the MP4 is the GIF's frames: never padded or rescaled


def test_eval_refuses_files_that_are_not_samples(bundles, capsys):
    one_line_error(capsys, ["eval", str(bundles / "notes.txt")], "is not a .npz sample file")
    one_line_error(capsys, ["eval", str(bundles)], "is a directory")
    one_line_error(capsys, ["eval", str(bundles / "missing.npz")], "no sample file at")
    one_line_error(capsys, ["eval", str(bundles / "notes.txt"), "--intervals", "--n-boot", "0"],
                   "--n-boot must be >= 1")


def test_export_writes_bundles_only(bundles, tmp_path, capsys):
    one_line_error(capsys, ["export", str(bundles / "student.safetensors"), "--out", str(tmp_path / "s.npz")],
                   "a bundle is a .safetensors file", "s.safetensors")
    assert not list(tmp_path.iterdir())
    assert main(["export", str(bundles / "student.safetensors"), "--out", str(tmp_path / "s.safetensors")]) == 0
    assert main(["generate", "--ckpt", str(tmp_path / "s.safetensors"), "--prompt", "a red ball", "--n", "1",
                 "--out", str(tmp_path / "s.npz")]) == 0


def test_debug_works_after_the_sub_command_and_bars_close_before_the_error(bundles, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError):  # --debug: the traceback instead of the one line
        main(["eval", str(bundles / "missing.npz"), "--debug"])
    from causal_rcm.cli import commands
    from causal_rcm.io import progress

    def fails_mid_bar(a):
        bar = progress(total=4, desc="work")
        bar.update(1)
        raise ValueError("broke mid-way; do this instead")

    monkeypatch.setattr(commands, "_eval", fails_mid_bar)
    one_line_error(capsys, ["eval", "x.npz"], "broke mid-way")  # the open bar redraws before the line, not after


def test_train_refuses_bad_settings_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        (["--preset", "blob-xl"], "unknown teacher preset 'blob-xl'", "blob-tiny"),
        (["--preset", "blob-tiny", "train.stepz=3"], "unknown config key 'train.stepz'", "steps"),
        (["--preset", "blob-tiny", "train.steps=0"], "train.steps must be an integer >= 1"),
        (["--preset", "blob-tiny", "train.batch=two"], "cannot parse 'two'"),
        (["--preset", "blob-tiny", "world.variant=maze"], "unknown Blobworld variant 'maze'"),
        (["--preset", "blob-tiny", "eval.per_prompt=0"], "eval.per_prompt must be an integer >= 1"),
        (["--preset", "blob-tiny", "train.seed=-1"], "train.seed must be an integer >= 0"),
    ]
    for args, *expected in cases:
        one_line_error(capsys, ["train", "teacher", *args, "--out", str(out)], *expected)
    one_line_error(capsys, ["train", "tf_scm", "--preset", "blob-tiny", "init=nope.safetensors",
                            "--out", str(out)], "no bundle at nope.safetensors")
    one_line_error(capsys, ["train", "tf_scm", "--preset", "blob-tiny", "--out", str(out)], "needs init=")
    assert not out.exists()  # nothing was started


def test_training_summary_resume_and_refused_changes(tmp_path, capsys):
    out = tmp_path / "t"
    base = ["train", "teacher", "--preset", "blob-tiny", "train.batch=2", "world.frames=5", "train.log_every=1",
            "--out", str(out)]
    assert main(base + ["train.steps=2", "train.ckpt_every=1"]) == 0
    printed = capsys.readouterr().out
    assert "teacher: 2/2 steps" in printed and "teacher.safetensors" in printed and "metrics.jsonl" in printed
    assert main(base + ["train.steps=3", "train.ckpt_every=1"]) == 0  # a longer budget resumes
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    capsys.readouterr()
    one_line_error(capsys, base + ["train.steps=4", "train.lr=0.5"], "other settings (train.lr",
                   "train.resume=force")


def test_a_diverging_run_stops_with_one_line(tmp_path, capsys):
    one_line_error(capsys, ["train", "teacher", "--preset", "blob-tiny", "train.batch=2", "world.frames=5",
                            "train.steps=6", "train.lr=1e30", "train.warmup=0", "train.max_bad_steps=2",
                            "--out", str(tmp_path / "nan")], "consecutive non-finite steps", "lower the learning")


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "causal_rcm.cli", "train", "teacher", "--preset", "blob-tiny", "train.batch=2",
           "world.frames=5", "train.steps=100000", "train.ckpt_every=100000", "train.log_every=1",
           "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(out / "metrics.jsonl")) < 3:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "Traceback" not in err and "checkpoint saved" in err and "rerun the same command" in err
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert saved >= steps[-1] - 1 and saved >= 2
    assert main(["train", "teacher", "--preset", "blob-tiny", "train.batch=2", "world.frames=5",
                 f"train.steps={saved + 2}", "train.log_every=1", "--out", str(out)]) == 0
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 2  # each step once


def test_help_lists_presets_keys_and_outputs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for piece in ("blob-s", "blob-tiny", "causal-rcm config STAGE", ".safetensors", ".npz", ".gif", ".mp4"):
        assert piece in text
    assert main(["config", "tf_scm", "--preset", "blob-tiny", "objective.scm_warmup=0.02"]) == 0
    assert '"scm_warmup": 0.02' in capsys.readouterr().out


def test_world_sample_and_run_name_the_valid_choices(tmp_path, capsys):
    one_line_error(capsys, ["world", "sample", "--world", "maze", "--out", str(tmp_path / "w.npz")],
                   "unknown world 'maze'", "atari", "blobworld")
    one_line_error(capsys, ["run", "blob-huge"], "no recipe at blob-huge", "blob-tiny")
    one_line_error(capsys, ["world", "sample", "--seed", "-1", "--out", str(tmp_path / "w.npz")],
                   "--seed must be >= 0")
    assert not list(tmp_path.iterdir())  # no parts folder that would block the corrected command
    assert main(["world", "sample", "--variant", "agent", "--n", "3", "--size", "16", "--frames", "5",
                 "--out", str(tmp_path / "w.npz")]) == 0
    assert main(["eval", str(tmp_path / "w.npz")]) == 0
    assert "action_accuracy" in capsys.readouterr().out
    assert np.load(tmp_path / "w.npz")["actions"].shape == (3, 4)
