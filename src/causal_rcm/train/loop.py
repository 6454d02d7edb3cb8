"""The training loop every stage shares: resume, progress, JSONL logs, checkpoints, evaluation, NaN guard.

A stage supplies ``step_fn(step) -> metrics`` (its forward, backward and optimiser updates) and the objects
to checkpoint; the loop owns everything around it:

- resume from the newest checkpoint that verifies (``train/checkpoint.py``), refusing one written with other
  settings (``train.resume=force`` accepts it); the log keeps each step once and its time is cumulative;
- a kill loses at most the steps since the last checkpoint; Ctrl-C saves one and stops with ``Interrupted``;
- a non-finite loss or gradient skips the step; ``max_bad_steps`` of them in a row stop with ``Diverged``;
- ``RUN/summary.json`` at the end (steps, final loss, time, checkpoint), which the CLI prints.
Only the main process writes logs (``is_main``); the metrics it logs are the mean over processes
(``reduce``). Checkpoints are written by every process together (sharded training state: ``train/sharded_state.py``);
which checkpoint to resume and whether the time is up are decided once for all (``train/distributed.py``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.distributed.tensor import DTensor

from ..io import JsonlLog, progress, say, write_json
from . import distributed as D
from .checkpoint import checkpoint_meta, latest_checkpoint, load_training_state, save_training_state

# settings a resumed run may change: budgets, schedules of side work, and where it runs
RESUMABLE_KEYS = ("world_size", "train.steps", "train.time_limit", "train.ckpt_every", "train.eval_every",
                  "train.eval_first", "train.log_every", "train.num_workers", "train.resume", "train.cooldown", "eval.",
                  "parallel.")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 200
    cooldown: int = 0  # the last `cooldown` steps decay the learning rate linearly to zero
    grad_clip: float = 0.0  # > 0: clip the gradient norm at this value (sums of ~1e5 make a fixed one rescale every step)
    clip_relative: float = 3.0  # > 0: clip at this multiple of the median norm of the last 100 steps (spikes only)
    ema_decay: float = 0.0  # > 0: plain EMA with this decay; else the EDM2 power EMA with ema_sigma_rel
    ema_sigma_rel: float = 0.05
    ckpt_every: int = 500
    eval_every: int = 1000
    eval_first: bool = False  # also evaluate before the first step (the starting point of a curve)
    log_every: int = 25
    seed: int = 0
    precision: str = "bf16"  # autocast dtype on GPU; CPUs always run fp32
    num_workers: int = 4
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    time_limit: float = 0.0  # seconds; > 0 stops early (with a checkpoint) once exceeded
    resume: str = "auto"  # auto: resume a run written with the same settings; force: whatever they were

    def __post_init__(self):
        for name in ("steps", "batch", "ckpt_every", "log_every", "max_bad_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup", "cooldown", "eval_every", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise ValueError(f"train.{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "clip_relative", "time_limit", "ema_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"train.precision must be bf16, fp16 or fp32, got {self.precision!r}")
        if self.resume not in ("auto", "force"):
            raise ValueError(f"train.resume must be auto or force, got {self.resume!r}")


class NonFiniteLoss(RuntimeError):
    """A step produced a non-finite loss or gradient: the loop skips it (and stops after max_bad_steps)."""


class Diverged(ValueError):
    """Too many non-finite steps in a row: the run stopped; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved; rerunning the command resumes."""


def make_ema(model: torch.nn.Module, cfg: TrainConfig, copy=None):
    """The run's EMA of ``model``; ``copy`` makes the averaged copy (``Placement.replica`` for sharded nets)."""
    from .ema import EMA

    kw = {} if copy is None else {"copy": copy}
    if cfg.ema_decay > 0:
        return EMA(model, decay=cfg.ema_decay, **kw)
    return EMA(model, decay=None, sigma_rel=cfg.ema_sigma_rel, **kw)


def lr_lambda(cfg: TrainConfig, warm_from: int = 0) -> Callable[[int], float]:
    """Linear warm-up (from step ``warm_from``: a resume with fresh optimizer moments warms up again),
    constant, then a linear cool-down over the last ``cfg.cooldown`` steps."""
    def f(step: int) -> float:
        warm = min(1.0, (step - warm_from + 1) / max(1, cfg.warmup))
        cool = min(1.0, (cfg.steps - step) / cfg.cooldown) if cfg.cooldown > 0 else 1.0
        return max(0.0, min(warm, cool))
    return f


class Stepper:
    """AdamW over ``params`` with the warm-up / cool-down schedule of ``lr_lambda`` and gradient clipping
    (fixed, relative to the recent median norm, or none); after a weights-only resume (fresh moments) it
    warms up again. ``step(loss, i)`` does backward, clipping and the update; the norm it reports is the
    one before clipping. Gradient accumulation: ``backward(loss, 1 / n)`` per micro-batch, then
    ``step(None, i)``. Sharded parameters: the norm is the global one (every rank clips alike), and a
    non-finite loss on any rank makes every rank skip the step."""

    def __init__(self, params, cfg: TrainConfig, lr: float | None = None, betas=None):
        self.params = [p for p in params if p.requires_grad]
        self.cfg, self.base_lr = cfg, cfg.lr if lr is None else lr
        self.opt = torch.optim.AdamW(self.params, lr=self.base_lr, betas=betas or cfg.betas,
                                     weight_decay=cfg.weight_decay)
        self.lr_at = lr_lambda(cfg)
        self.norms: list[float] = []

    def threshold(self) -> float:
        limits = [self.cfg.grad_clip] if self.cfg.grad_clip > 0 else []
        if self.cfg.clip_relative > 0 and len(self.norms) >= 10:
            limits.append(self.cfg.clip_relative * sorted(self.norms)[len(self.norms) // 2])
        return min(limits) if limits else float("inf")

    def backward(self, loss: torch.Tensor, scale: float = 1.0) -> None:
        """(scale · loss).backward(), unless the loss is non-finite on some rank: then drop the gradients."""
        if not D.all_finite(loss):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss("the loss is not finite on another process" if bool(torch.isfinite(loss))
                                else f"loss is {loss.item()}")
        (loss * scale if scale != 1.0 else loss).backward()

    def step(self, loss: torch.Tensor | None, i: int) -> dict:
        """backward (unless ``loss`` is None: gradients are already accumulated), clip, update."""
        if loss is not None:
            self.backward(loss)
        limit = self.threshold()
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not math.isfinite(norm):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"gradient norm is {norm}")
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * self.lr_at(i)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.norms = (self.norms + [norm])[-100:]
        return {"grad_norm": norm, "clipped": float(norm > limit), "lr": self.opt.param_groups[0]["lr"]}

    def on_resume(self, i: int, extra: dict, name: str = "opt") -> None:
        if name in extra.get("fresh_optimizers", []):
            self.lr_at = lr_lambda(self.cfg, warm_from=i)


def _flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """Settings that differ between two resolved configs, leaving out what a resumed run may change."""
    a, b = _flat_config(old), _flat_config(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                  and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def run_loop(cfg: TrainConfig, run_dir: str | Path, step_fn: Callable[[int], dict], state: dict,
             optimizers: dict, evaluate: Callable[[int], dict] | None = None, desc: str = "train",
             on_resume: Callable[[int, dict], None] | None = None, config: dict | None = None,
             is_main: bool = True, reduce: Callable[[dict], dict] | None = None) -> int:
    """Run steps [start, cfg.steps) (or until ``cfg.time_limit``); returns the number of steps done.
    ``config``: the run's resolved config, stored with every checkpoint and compared on resume."""
    run_dir = Path(run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(run_dir / "metrics.jsonl")
    start, extra, elapsed = 0, {"config": config or {}}, 0.0
    ckpt = D.broadcast_object(latest_checkpoint(run_dir) if is_main else None)
    if ckpt is not None:
        saved = checkpoint_meta(ckpt)["extra"].get("config") or {}
        changes = config_changes(saved, config or {}) if config is not None and saved else []
        if changes and cfg.resume != "force":
            raise ValueError(f"{run_dir} holds a run started with other settings ({'; '.join(changes[:6])}); "
                             "rerun with the same settings to resume it, use a new --out, or add train.resume=force")
        start, extra = load_training_state(ckpt, state, optimizers)
        extra["config"] = config or extra.get("config", {})
        elapsed = float(extra.get("elapsed", 0.0))
        if on_resume is not None:
            on_resume(start, extra)
        if is_main:
            log.truncate_after(start)
            say(f"[{desc}] resumed from {ckpt} at step {start}")
    elif is_main:
        log.truncate_after(0)  # a fresh run (no usable checkpoint) starts a fresh log
    if is_main and config is not None:  # the record of the settings this run goes on with
        write_json(run_dir / "config.json", config)
    summary = {"stage": desc, "steps_done": start, "steps": cfg.steps, "run_dir": str(run_dir)}
    if start >= cfg.steps:
        return start
    t0 = time.time() - elapsed

    def save(done: int) -> None:
        extra["elapsed"] = time.time() - t0
        path = save_training_state(run_dir, done, state, optimizers, extra, is_main=is_main)
        summary["checkpoint"] = str(path)

    def run_eval(done: int) -> None:
        scores = evaluate(done)
        if is_main:
            log.write({"step": done, **{f"eval/{k}": v for k, v in scores.items()}})
            say(f"[{desc}] step {done}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in scores.items() if isinstance(v, float) and math.isfinite(v)))

    if evaluate is not None and cfg.eval_every > 0 and cfg.eval_first and start == 0:
        run_eval(0)
    bad, sums, count = 0, {}, 0
    bar = progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, disable=not is_main)
    step, stopped = start, False
    try:
        for step in bar:
            try:
                metrics = step_fn(step)
                bad = 0
            except NonFiniteLoss as e:
                bad += 1
                if is_main:
                    log.write({"step": step + 1, "event": "non_finite", "detail": str(e)})
                if bad >= cfg.max_bad_steps:
                    kept = latest_checkpoint(run_dir)
                    raise Diverged(f"{bad} consecutive non-finite steps at step {step} ({e}); lower the learning "
                                   "rate or check the data; " + (f"the last good checkpoint is kept: {kept}" if kept
                                                                 else "no checkpoint was written yet")) from None
                continue
            for k, v in (reduce(metrics) if reduce is not None else metrics).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rec = {k: v / count for k, v in sums.items()}
                rec.update(step=done, time=round(time.time() - t0, 2))
                if is_main:
                    log.write(rec)
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "grad_norm")}, refresh=False)
                summary["final_loss"] = rec.get("loss")
                sums, count = {}, 0
            out_of_time = cfg.time_limit > 0 and D.any_rank(time.time() - t0 > cfg.time_limit)
            if done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time:
                save(done)
            summary["steps_done"] = done
            if evaluate is not None and cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.steps
                                                                  or out_of_time):
                run_eval(done)
            if out_of_time:
                say(f"[{desc}] time limit of {cfg.time_limit:.0f} s reached at step {done}; checkpoint saved")
                stopped = True
                break
    except KeyboardInterrupt:
        bar.close()
        save(step)
        raise Interrupted(f"interrupted at step {step}; checkpoint saved in {run_dir}/checkpoints: rerun the "
                          "same command to resume") from None
    finally:
        bar.close()
        summary["seconds"] = round(time.time() - t0, 1)
        if is_main:
            write_json(run_dir / "summary.json", summary)
    return summary["steps_done"] if stopped else cfg.steps
