"""The training loop's bookkeeping: evaluation schedule (with the optional step-0 point), logging and resume."""
import json

import torch

from causal_rcm.train.loop import TrainConfig, run_loop


def _run(tmp_path, **kw):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 3)

    def step_fn(step):
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        return {"loss": float(loss)}

    seen = []

    def evaluate(step):
        seen.append(step)
        return {"w": float(net.weight.norm())}

    cfg = TrainConfig(**{"steps": 6, "eval_every": 3, "log_every": 2, "ckpt_every": 3, **kw})
    run_loop(cfg, tmp_path, step_fn, {"net": net}, {"opt": opt}, evaluate, "t")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return seen, [r["step"] for r in logged if "eval/w" in r]


def test_eval_schedule(tmp_path):
    assert _run(tmp_path / "a") == ([3, 6], [3, 6])
    assert _run(tmp_path / "b", eval_first=True) == ([0, 3, 6], [0, 3, 6])


def test_eval_first_not_repeated_on_resume(tmp_path):
    _run(tmp_path, steps=3, eval_first=True)
    seen, _ = _run(tmp_path, eval_first=True)  # resumes at step 3
    assert seen == [6]
