"""The paired teacher-ODE distance (method review, M1): what a consistency model learns, measured directly.

For held-out clips x0 of the synthetic data and fixed noise ε, every chunk of the teacher-forcing layout is
solved by the causal teacher's ODE (Euler, CFG, ``steps`` steps from t = 1) given the ground-truth clean
prefix: x̂0_T. A student predicts the same chunks from the same ε with 1 step (x̂0 from x_{t0} = t0·ε) or 2
steps (a fixed fresh noise at the mid time), given the same prefix (at t_ctx where it was trained with noisy
context). The distance is the RMSE between the two, in pixel levels (0–255), per clip; with 95 % bootstrap
intervals over clips. Deterministic: a student is scored on the same problems at every evaluation.

    causal-rcm paired make --teacher RUN/tf/model.safetensors --data RUN/synth_heldout --n 512 --out targets.npz
    causal-rcm paired score --ckpt RUN/tf_scm/model.safetensors --targets targets.npz
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..flow import euler_times, noisy, x0_from_v
from ..io import atomic_write, progress
from ..masks import teacher_forcing
from ..objectives import tf as obj
from ..runtime import autocast_for
from ..stats import bootstrap_interval
from ..stream.bundle import Bundle
from ..stream.codec import to_unit
from ..stream.sampling import EulerCFG, FewStep, few_step_times

PIXEL = 127.5  # one unit of the model's [−1, 1] space in pixel levels


def _noise(n: int, shape, seed: int, tag: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1009 + tag)
    return torch.randn((n, *shape), generator=g)


@torch.no_grad()
def make_targets(teacher: Bundle, videos: np.ndarray, prompts: list[str], out: str | Path, seed: int = 0,
                 steps: int = 48, batch: int = 32, actions: np.ndarray | None = None) -> Path:
    """Solve every chunk of the clips with the causal teacher's ODE from fixed noise; write the problems
    (clips, noises, prompts, actions) and the solutions x̂0_T to ``out`` (.npz)."""
    if not isinstance(teacher.sampling, EulerCFG):
        raise ValueError("the paired targets come from a causal teacher (sampling causal_euler)")
    sp, dev = teacher.sampling, teacher.device
    mask = teacher_forcing(sp.pattern)
    x0_all = teacher.codec.encode(to_unit(videos))
    n, shape = len(x0_all), tuple(x0_all.shape[1:])
    eps_all, mid_all = _noise(n, shape, seed, 0), _noise(n, shape, seed, 1)
    teacher_fn = obj.net_fns(teacher.net)[0]
    grid = euler_times(steps, sp.shift, dev)
    sols = []
    for s in progress(range(0, n, batch), desc="paired targets", unit="batch"):
        x0, eps = x0_all[s:s + batch].to(dev), eps_all[s:s + batch].to(dev)
        ctx, ctx_u = teacher.contexts(prompts[s:s + batch])
        b = obj.Batch(x0, eps, ctx, ctx_u, actions=_actions(teacher, actions, s, batch, shape[1]))
        x = eps
        with autocast_for(dev):
            for k in range(steps):
                t = grid[k].expand(len(x))
                x = x + (grid[k + 1] - grid[k]) * obj.teacher_velocity(teacher_fn, b, x, t, mask, sp.cfg).float()
        sols.append(x.cpu())
    arrays = {"videos": videos, "prompts": np.array(prompts, dtype=str), "eps": eps_all.numpy(),
              "eps_mid": mid_all.numpy(), "x0_teacher": torch.cat(sols).numpy(), "pattern": np.array(sp.pattern)}
    if actions is not None:
        arrays["actions"] = actions
    import io as _io

    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(out, buf.getvalue())


def _actions(bundle: Bundle, actions, s: int, batch: int, frames: int):
    if actions is None:
        return None
    from ..stream.sample import video_actions

    return video_actions(bundle, actions[s:s + batch], frames, bundle.device)


@torch.no_grad()
def paired_distance(student: Bundle, targets: str | Path | dict, steps=(1, 2), batch: int = 32,
                    n_boot: int = 1000) -> dict:
    """{"paired_rmse@k": (value, low, high)} for each step count k: the student's x̂0 of every chunk against
    the causal teacher's ODE solution, RMSE in pixel levels per clip, 95 % bootstrap interval over clips."""
    t = dict(np.load(targets)) if not isinstance(targets, dict) else targets
    sp = student.sampling
    if not isinstance(sp, FewStep):
        raise ValueError("the paired distance scores few-step students")
    if str(t["pattern"]) != sp.pattern:
        raise ValueError(f"the targets were solved in pattern {t['pattern']}, the student streams {sp.pattern}")
    dev = student.device
    mask = teacher_forcing(sp.pattern)
    nc = obj.NoisyContext(sp.ctx_start, sp.t_ctx) if sp.context == "noisy" else None
    x0_all = student.codec.encode(to_unit(t["videos"]))
    eps_all, mid_all = torch.from_numpy(t["eps"]), torch.from_numpy(t["eps_mid"])
    sol_all = torch.from_numpy(t["x0_teacher"])
    prompts, actions = [str(p) for p in t["prompts"]], t.get("actions")
    n = len(x0_all)
    per_clip = {k: np.empty(n) for k in steps}
    v_fn = obj.net_fns(student.net)[0]
    for s in range(0, n, batch):
        x0, eps, mid = (a[s:s + batch].to(dev) for a in (x0_all, eps_all, mid_all))
        B = len(x0)
        ctx, _ = student.contexts(prompts[s:s + batch])
        a = _actions(student, actions, s, batch, x0.shape[2])
        x_c, t_c = obj.context(x0, mask.pattern, nc, mid)  # the noisy-context draw: a fixed noise as well
        for k in steps:
            times = few_step_times(k, sp.t0, sp.t_ctx if sp.context == "noisy" else None)
            x = times[0] * eps
            with autocast_for(dev):
                for j in range(k):
                    tt = torch.full((B,), times[j], device=dev)
                    v = obj.tf_velocity(v_fn, x_c, t_c, x, tt, ctx, mask, r=_r(student, tt), actions=a).float()
                    x0_hat = x0_from_v(x, tt, v)
                    if j < k - 1:
                        x = noisy(x0_hat, mid, torch.full((B,), times[j + 1], device=dev))
            err = (x0_hat.float().cpu() - sol_all[s:s + batch]) * PIXEL
            per_clip[k][s:s + B] = err.square().flatten(1).mean(1).sqrt().numpy()
    out = {}
    for k in steps:
        vals = per_clip[k]
        out[f"paired_rmse@{k}"] = bootstrap_interval(lambda idx, v=vals: {"m": float(v[idx].mean())}, n,
                                                     n_boot=n_boot)["m"]
    return out


def _r(bundle: Bundle, t: torch.Tensor):
    """MeanFlow students: x̂0 from the average velocity over [0, t] (r = 0)."""
    return torch.zeros_like(t) if bundle.net.cfg.dual_time else None
