"""The training loop every stage shares: resume, progress, JSONL logs, checkpoints, evaluation, NaN guard.

A stage supplies ``step_fn(step) -> metrics`` (its forward, backward and optimiser updates) and the
objects to checkpoint; the loop owns everything around it. A kill loses at most the steps since the last
checkpoint: ``run_loop`` resumes from ``RUN/checkpoints/latest`` when it exists.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_training_state, save_training_state


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 200
    cooldown: int = 0  # the last `cooldown` steps decay the learning rate linearly to zero
    grad_clip: float = 1.0
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


class NonFiniteLoss(RuntimeError):
    """A step produced a non-finite loss or gradient: the loop skips it (and stops after max_bad_steps)."""


def device_and_autocast(precision: str, device: str | None = None):
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if dev.type == "cuda" and precision in ("bf16", "fp16"):
        dt = torch.bfloat16 if precision == "bf16" else torch.float16
        return dev, lambda: torch.autocast("cuda", dtype=dt)
    return dev, nullcontext


def make_ema(model: torch.nn.Module, cfg: TrainConfig):
    from .ema import EMA

    if cfg.ema_decay > 0:
        return EMA(model, decay=cfg.ema_decay)
    return EMA(model, decay=None, sigma_rel=cfg.ema_sigma_rel)


def lr_lambda(cfg: TrainConfig, warm_from: int = 0) -> Callable[[int], float]:
    """Linear warm-up (from step ``warm_from``: a resume with fresh optimizer moments warms up again),
    constant, then a linear cool-down over the last ``cfg.cooldown`` steps."""
    def f(step: int) -> float:
        warm = min(1.0, (step - warm_from + 1) / max(1, cfg.warmup))
        cool = min(1.0, (cfg.steps - step) / cfg.cooldown) if cfg.cooldown > 0 else 1.0
        return max(0.0, min(warm, cool))
    return f


def optimizer_step(loss: torch.Tensor | None, opt: torch.optim.Optimizer, params, grad_clip: float) -> float:
    """backward (unless ``loss`` is None: gradients are already accumulated), clip, step; returns the
    gradient norm before clipping. Raises on a non-finite loss or gradient."""
    if loss is not None:
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"loss is {loss.item()}")
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"gradient norm is {norm.item()}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


class Stepper:
    """AdamW over ``params`` with the warm-up / cool-down schedule of ``lr_lambda``; after a weights-only
    resume (fresh moments) it warms up again. ``step(loss, i)`` does backward, clipping and the update."""

    def __init__(self, params, cfg: TrainConfig, lr: float | None = None, betas=None):
        self.params = [p for p in params if p.requires_grad]
        self.cfg, self.base_lr = cfg, cfg.lr if lr is None else lr
        self.opt = torch.optim.AdamW(self.params, lr=self.base_lr, betas=betas or cfg.betas,
                                     weight_decay=cfg.weight_decay)
        self.lr_at = lr_lambda(cfg)

    def step(self, loss: torch.Tensor | None, i: int) -> dict:
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * self.lr_at(i)
        return {"grad_norm": optimizer_step(loss, self.opt, self.params, self.cfg.grad_clip),
                "lr": self.opt.param_groups[0]["lr"]}

    def on_resume(self, i: int, extra: dict, name: str = "opt") -> None:
        if name in extra.get("fresh_optimizers", []):
            self.lr_at = lr_lambda(self.cfg, warm_from=i)


class JsonlLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(iterable=None, **kw):
    """tqdm that refreshes often on a terminal and rarely in a log file."""
    import sys

    kw.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)


def run_loop(cfg: TrainConfig, run_dir: str | Path, step_fn: Callable[[int], dict], state: dict,
             optimizers: dict, evaluate: Callable[[int], dict] | None = None, desc: str = "train",
             on_resume: Callable[[int, dict], None] | None = None) -> int:
    """Run steps [start, cfg.steps) (or until ``cfg.time_limit``); returns the number of steps done."""
    run_dir = Path(run_dir)
    log = JsonlLog(run_dir / "metrics.jsonl")
    start, extra = 0, {}
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        start, extra = load_training_state(ckpt, state, optimizers)
        if on_resume is not None:
            on_resume(start, extra)
        tqdm.write(f"[{desc}] resumed from {ckpt} at step {start}")
    if start >= cfg.steps:
        return start

    def run_eval(done: int) -> None:
        scores = evaluate(done)
        log.write({"step": done, **{f"eval/{k}": v for k, v in scores.items()}})
        tqdm.write(f"[{desc}] step {done}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in scores.items() if isinstance(v, float) and math.isfinite(v)))

    if evaluate is not None and cfg.eval_every > 0 and cfg.eval_first and start == 0:
        run_eval(0)
    bad, sums, count = 0, {}, 0
    t0 = time.time()
    bar = progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc)
    step = start
    try:
        for step in bar:
            try:
                metrics = step_fn(step)
                bad = 0
            except NonFiniteLoss as e:
                bad += 1
                log.write({"step": step, "event": "non_finite", "detail": str(e)})
                if bad >= cfg.max_bad_steps:
                    raise RuntimeError(f"{bad} consecutive non-finite steps at step {step} ({e}); lower the "
                                       f"learning rate or check the data; last good checkpoint is kept") from e
                continue
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rec = {k: v / count for k, v in sums.items()}
                rec.update(step=done, time=round(time.time() - t0, 2))
                log.write(rec)
                shown = {k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "grad_norm")}
                bar.set_postfix(shown, refresh=False)
                sums, count = {}, 0
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                save_training_state(run_dir, done, state, optimizers, extra)
            out_of_time = cfg.time_limit > 0 and time.time() - t0 > cfg.time_limit
            if out_of_time and done % cfg.ckpt_every:
                save_training_state(run_dir, done, state, optimizers, extra)
            final = done == cfg.steps or out_of_time
            if evaluate is not None and cfg.eval_every > 0 and (done % cfg.eval_every == 0 or final):
                run_eval(done)
            if out_of_time:
                tqdm.write(f"[{desc}] time limit of {cfg.time_limit:.0f} s reached at step {done}; checkpoint saved")
                return done
    except KeyboardInterrupt:
        tqdm.write(f"[{desc}] interrupted at step {step}: saving a checkpoint")
        save_training_state(run_dir, step, state, optimizers, extra)
        raise
    finally:
        bar.close()
    return cfg.steps
