"""The training loop's bookkeeping: evaluation schedule, logging, checkpoints that survive kills and torn
writes, refusal of changed settings, the NaN guard and Ctrl-C."""
import shutil

import pytest
import torch

from causal_rcm.io import read_jsonl
from causal_rcm.train.checkpoint import latest_checkpoint, step_dirs
from causal_rcm.train.loop import Diverged, Interrupted, NonFiniteLoss, Stepper, TrainConfig, run_loop


def _run(tmp_path, config=None, fail_at=None, nan_from=None, **kw):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 3)

    def step_fn(step):
        if step == fail_at:
            raise KeyboardInterrupt
        if nan_from is not None and step >= nan_from:
            raise NonFiniteLoss("loss is nan")
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    seen = []

    def evaluate(step):
        seen.append(step)
        return {"w": float(net.weight.detach().norm())}

    cfg = TrainConfig(**{"steps": 6, "eval_every": 3, "log_every": 1, "ckpt_every": 3, **kw})
    run_loop(cfg, tmp_path, step_fn, {"net": net}, {"opt": opt}, evaluate, "t", config=config)
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    return seen, [r["step"] for r in logged if "eval/w" in r], net


def test_eval_schedule(tmp_path):
    assert _run(tmp_path / "a")[:2] == ([3, 6], [3, 6])
    assert _run(tmp_path / "b", eval_first=True)[:2] == ([0, 3, 6], [0, 3, 6])


def test_eval_first_not_repeated_on_resume(tmp_path):
    _run(tmp_path, steps=3, eval_first=True)
    seen, _, _ = _run(tmp_path, eval_first=True)  # resumes at step 3
    assert seen == [6]


def test_kill_and_resume_logs_each_step_once_with_cumulative_time(tmp_path):
    whole = _run(tmp_path / "whole", steps=6)[2]
    with pytest.raises(Interrupted, match="checkpoint saved"):
        _run(tmp_path / "run", steps=6, ckpt_every=2, fail_at=5)  # killed after steps 0..4 ran
    assert [s for s, _ in step_dirs(tmp_path / "run")] == [4, 5]  # the periodic one and the Ctrl-C one
    _, _, resumed = _run(tmp_path / "run", steps=6, ckpt_every=2)
    assert torch.equal(resumed.weight, whole.weight)
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    times = [r["time"] for r in recs]
    assert times == sorted(times)


def test_resume_falls_back_past_a_broken_newest_checkpoint(tmp_path, capsys):
    _run(tmp_path, steps=6, ckpt_every=2)
    newest = step_dirs(tmp_path)[-1][1]
    data = (newest / "modules.safetensors").read_bytes()
    (newest / "modules.safetensors").write_bytes(data[: len(data) // 2])  # torn write
    capsys.readouterr()
    assert latest_checkpoint(tmp_path) == step_dirs(tmp_path)[-2][1]
    assert "step_00000006 is unusable (modules.safetensors does not match its checksum" in capsys.readouterr().out
    shutil.rmtree(step_dirs(tmp_path)[-2][1])  # and a deleted one: nothing left to resume from
    assert latest_checkpoint(tmp_path) is None


def test_a_deleted_newest_checkpoint_is_reported(tmp_path, capsys):
    _run(tmp_path, steps=6, ckpt_every=2)
    shutil.rmtree(step_dirs(tmp_path)[-1][1])  # the folder `latest` names is gone
    capsys.readouterr()
    assert latest_checkpoint(tmp_path) == step_dirs(tmp_path)[-1][1]
    assert "step_00000006 (named by" in capsys.readouterr().out


def test_a_save_cut_short_by_a_kill_leaves_nothing_behind(tmp_path):
    _run(tmp_path, steps=2, ckpt_every=2)
    (tmp_path / "checkpoints" / ".tmp_step_00000003").mkdir()  # killed while writing step 3
    _run(tmp_path, steps=4, ckpt_every=2)  # resumes at 2, saves 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002",
                                                                             "step_00000004"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    _run(tmp_path, steps=6, ckpt_every=2)
    # an older run left a later step behind; a rerun that resumes from step 2 must keep what it writes
    shutil.rmtree(step_dirs(tmp_path)[-1][1])
    (step_dirs(tmp_path)[-1][1] / "state.json").write_text("{")  # step 4 broken too: resume from step 2
    _run(tmp_path, steps=6, ckpt_every=2)
    assert [s for s, _ in step_dirs(tmp_path)] == [4, 6]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def test_changed_settings_are_refused_on_resume(tmp_path):
    _run(tmp_path, steps=3, config={"train": {"lr": 1e-3, "steps": 3}})
    with pytest.raises(ValueError, match=r"other settings \(train.lr: 0.001 -> 0.01\).*train.resume=force"):
        _run(tmp_path, steps=6, config={"train": {"lr": 1e-2, "steps": 6}})
    _run(tmp_path, steps=6, config={"train": {"lr": 1e-3, "steps": 6}})  # a longer budget is fine
    _run(tmp_path, steps=9, resume="force", config={"train": {"lr": 1e-2, "steps": 9}})


def test_nan_guard_skips_then_stops(tmp_path):
    with pytest.raises(Diverged, match="3 consecutive non-finite steps"):
        _run(tmp_path, steps=10, nan_from=4, max_bad_steps=3)
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "non_finite"]
    assert len(events) == 3
    assert latest_checkpoint(tmp_path) is not None  # the last good checkpoint is kept


def test_relative_clipping_only_clips_spikes():
    p = torch.nn.Parameter(torch.zeros(4))
    s = Stepper([p], TrainConfig(lr=0.0, warmup=0, clip_relative=3.0))
    clipped = []
    for i in range(30):
        p.grad = torch.full((4,), 100.0 if i == 25 else 1.0)
        clipped.append(s.step(None, i)["clipped"])
    assert clipped[25] == 1.0 and sum(clipped) == 1.0


@pytest.mark.parametrize("key,value", [("steps", 0), ("batch", -1), ("ckpt_every", 0), ("log_every", 0),
                                       ("lr", -1.0), ("resume", "maybe"), ("precision", "fp8"), ("seed", -1)])
def test_bad_settings_are_refused_before_any_work(key, value):
    with pytest.raises(ValueError, match=f"train.{key}"):
        TrainConfig(**{key: value})
