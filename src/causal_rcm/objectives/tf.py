"""Teacher-forcing objectives (METHOD.md §3–4): tf, df, tf_dcm, tf_scm, tf_meanflow and the ode_init baseline.

Pure functions: a ``Batch``, the times, and networks as callables in; ``(loss, metrics)`` out; no optimiser,
no logging, no ``.item()``. The networks enter with the WanDiT signatures:

    v_fn(x, t, ctx, mask=None, r=None, actions=None) -> v                                   (ordinary forward)
    jvp_fn(x, t, ctx, x_dot, t_dot, mask, tangent_from, r=None, r_dot=None, actions=None) -> (v, v_dot)

Videos are [B, C, T, H, W]; the TF layout packs [context T | noisy T] frames with per-frame times [B, 2T]
(and the same actions on both copies of a frame, §7). "Σ" losses sum over a sample's elements and average
over the batch (METHOD.md writes 100·Σ‖…‖²). Which time sampler feeds which loss is ``tf_methods.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flow import bell_weight, cfg_combine, noisy, shift, x0_from_v
from ..flow import expand_t as expand
from ..masks import ChunkPattern, Mask, block_causal, teacher_forcing
from ..models.conditioning import Actions


@dataclass
class Batch:
    """One training batch: clean videos x0 [B, C, T, H, W], their noise ε (and ε_ctx for noisy context), the
    prompt contexts (ctx_u: the unconditional one, for CFG), the actions of a world model, and for the
    ODE-init baseline the teacher's trajectory states [B, K, C, T, H, W] at ``ode_times`` [K]."""

    x0: torch.Tensor
    eps: torch.Tensor
    ctx: torch.Tensor
    ctx_u: torch.Tensor | None = None
    eps_ctx: torch.Tensor | None = None
    actions: Actions | None = None
    ode_states: torch.Tensor | None = None
    ode_times: torch.Tensor | None = None


def net_fns(net):
    """(v_fn, jvp_fn) of a WanDiT in the signatures the objectives take."""

    def v_fn(x, t, ctx, mask=None, r=None, actions=None):
        return net(x, t, ctx, mask=mask, r=r, actions=actions)

    def jvp_fn(x, t, ctx, x_dot, t_dot, mask, tangent_from, r=None, r_dot=None, actions=None):
        return net.forward_jvp(x, t, ctx, x_dot, t_dot, mask=mask, tangent_from=tangent_from, r=r, r_dot=r_dot,
                               actions=actions)

    return v_fn, jvp_fn


@dataclass(frozen=True)
class NoisyContext:
    """From block ``start`` on, the student's context is the clean prefix noised to ``t_ctx`` (the teacher
    keeps clean context); saves the clean write pass at inference (METHOD.md §4, "Noisy context"). Sampling
    writes its context the same way (``stream/sampling.FewStep``: same ``t_ctx`` and ``ctx_start``)."""

    start: int = 1
    t_ctx: float = 5 / 8


# ----- layout helpers -------------------------------------------------------------------------------------
def per_frame(t: torch.Tensor, T: int) -> torch.Tensor:
    """[B] -> [B, T] (a per-sample time shared by every frame); [B, T] stays."""
    return t[:, None].expand(-1, T) if t.ndim == 1 else t


def pack(x_ctx: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    return torch.cat([x_ctx, x_t], dim=2)


def packed_actions(a: Actions | None) -> Actions | None:
    """Actions of the TF layout: frame k's clean and noisy copies carry the same action (§7)."""
    return None if a is None else Actions.cat([a, a], dim=1)


def context(x0: torch.Tensor, pattern: ChunkPattern, nc: NoisyContext | None, eps_ctx: torch.Tensor | None):
    """The student's context frames and their times [B, T]: clean (t = 0), or noisy from block ``nc.start``."""
    B, T = x0.shape[0], x0.shape[2]
    t_ctx = torch.zeros(B, T, device=x0.device)
    if nc is None:
        return x0, t_ctx
    f = pattern.block_bounds(nc.start)[0] if nc.start < pattern.num_blocks(T) else T
    t_ctx[:, f:] = nc.t_ctx
    return noisy(x0, eps_ctx, t_ctx), t_ctx


def tf_velocity(v_fn, x_ctx, t_ctx, x_t, t, ctx, mask: Mask, r=None, actions: Actions | None = None):
    """v of the noisy half from one TF-layout forward; r (MeanFlow) equals t on context frames."""
    T = x_t.shape[2]
    ts = torch.cat([t_ctx, per_frame(t, T)], dim=1)
    rs = None if r is None else torch.cat([t_ctx, per_frame(r, T)], dim=1)
    return v_fn(pack(x_ctx, x_t), ts, ctx, mask=mask, r=rs, actions=packed_actions(actions))[:, :, T:]


def teacher_velocity(teacher_fn, b: Batch, x_t, t, mask: Mask, w_cfg: float):
    """v_T: the causal teacher in the TF layout with clean context and CFG, v_u + w·(v_c − v_u); the
    unconditional rows lose the prompt and the actions."""
    x0 = b.x0
    zeros = torch.zeros(x0.shape[0], x0.shape[2], device=x0.device)
    if b.ctx_u is None or w_cfg == 1.0:
        return tf_velocity(teacher_fn, x0, zeros, x_t, t, b.ctx, mask, actions=b.actions)
    a = None if b.actions is None else Actions.cat([b.actions, b.actions.dropped()])
    both = tf_velocity(teacher_fn, torch.cat([x0, x0]), torch.cat([zeros, zeros]), torch.cat([x_t, x_t]),
                       torch.cat([t, t]), torch.cat([b.ctx, b.ctx_u]), mask, actions=a)
    return cfg_combine(*both.chunk(2), w_cfg)


def sum_sq(x: torch.Tensor) -> torch.Tensor:
    """Σ over each sample's elements of x², [B]."""
    return x.square().flatten(1).sum(1)


def _finite_or_nan(loss: torch.Tensor, *checks: torch.Tensor) -> torch.Tensor:
    """NaN guard: a non-finite intermediate makes the loss NaN, which the loop skips (and counts)."""
    ok = torch.stack([torch.isfinite(c).all() for c in checks]).all()
    return torch.where(ok, loss, torch.full_like(loss, float("nan")))


# ----- stage 1: causal teacher ----------------------------------------------------------------------------
def tf_loss(v_fn, b: Batch, t, pattern: ChunkPattern, weight: str = "bell"):
    """tf (§3): clean context, noisy half x_t, L = w(t)·mean‖v_θ − (ε − x0)‖² on the noisy half."""
    x_t = noisy(b.x0, b.eps, t)
    v = tf_velocity(v_fn, b.x0, torch.zeros(b.x0.shape[0], b.x0.shape[2], device=b.x0.device), x_t, t, b.ctx,
                    teacher_forcing(pattern), actions=b.actions)
    per_sample = (v.float() - (b.eps - b.x0).float()).square().flatten(1).mean(1)
    w = bell_weight(t) if weight == "bell" else torch.ones_like(t)
    loss = (w * per_sample).mean()
    return loss, {"loss": loss.detach(), "mse": per_sample.mean().detach()}


def fopp_block_times(u: torch.Tensor, s: float = 5.0) -> torch.Tensor:
    """Per-block times non-decreasing in the block index ("FoPP"): sorted uniforms u [B, n_blocks], shifted."""
    return shift(u.sort(dim=1).values, s)


def df_loss(v_fn, b: Batch, t_blocks, pattern: ChunkPattern, weight: str = "bell"):
    """df (§3): the noisy video alone, block-causal, one time per block; same velocity loss on every frame."""
    T = b.x0.shape[2]
    t = t_blocks[:, pattern.block_of(torch.arange(T, device=b.x0.device))]   # [B, T]
    x_t = noisy(b.x0, b.eps, t)
    v = v_fn(x_t, t, b.ctx, mask=block_causal(pattern), actions=b.actions)
    per_frame_mse = (v.float() - (b.eps - b.x0).float()).square().mean(dim=(1, 3, 4))  # [B, T]
    w = bell_weight(t) if weight == "bell" else torch.ones_like(t)
    loss = (w * per_frame_mse).mean()
    return loss, {"loss": loss.detach(), "mse": per_frame_mse.mean().detach()}


# ----- stage 2: few-step students -------------------------------------------------------------------------
def tf_dcm_loss(v_fn, teacher_fn, b: Batch, u, pattern: ChunkPattern, n: int = 48, s: float = 3.0,
                w_cfg: float = 3.0, nc: NoisyContext | None = None):
    """TF-dCM (§4): t0 = shift(1 − u), t1 = shift(1 − u − 1/N); x_t1 = x_t0 + (t1 − t0)·v_T (one teacher
    Euler step with CFG); f⁻ = sg(f_θ(x_t1, t1)) from the online student; L = 100·Σ‖f_θ(x_t0, t0) − f⁻‖².
    f_θ(x, t) = x − t·v_θ(x, t) is the consistency function (f_θ(x, 0) = x)."""
    mask = teacher_forcing(pattern)
    t0, t1 = shift(1 - u, s), shift((1 - u - 1 / n).clamp(min=0), s)
    x_t0 = noisy(b.x0, b.eps, t0)
    x_c, t_c = context(b.x0, pattern, nc, b.eps_ctx)
    with torch.no_grad():
        v_T = teacher_velocity(teacher_fn, b, x_t0, t0, mask, w_cfg).float()
        x_t1 = x_t0 + expand(t1 - t0, x_t0) * v_T
        f_minus = x0_from_v(x_t1, t1, tf_velocity(v_fn, x_c, t_c, x_t1, t1, b.ctx, mask, actions=b.actions).float())
    f = x0_from_v(x_t0, t0, tf_velocity(v_fn, x_c, t_c, x_t0, t0, b.ctx, mask, actions=b.actions).float())
    per_sample = sum_sq(f - f_minus)
    loss = _finite_or_nan(100 * per_sample.mean(), v_T)
    return loss, {"loss": loss.detach(), "f_gap": per_sample.mean().sqrt().detach()}


def _tangent_pass(v_fn, jvp_fn, teacher_fn, b: Batch, t, pattern, w_cfg, nc, r=None):
    """What TF-sCM and TF-MeanFlow share: x_t, the packed student input, v_T, and the no-grad forward-mode
    pass with tangents (v_T, 1) on the noisy half and (0, 0) on the context (r: ṙ = 0)."""
    mask = teacher_forcing(pattern)
    T = b.x0.shape[2]
    x_t = noisy(b.x0, b.eps, t)
    x_c, t_c = context(b.x0, pattern, nc, b.eps_ctx)
    xs = pack(x_c, x_t)
    ts = torch.cat([t_c, per_frame(t, T)], dim=1)
    rs = None if r is None else torch.cat([t_c, per_frame(r, T)], dim=1)
    with torch.no_grad():
        v_T = teacher_velocity(teacher_fn, b, x_t, t, mask, w_cfg)
        v_minus, J = jvp_fn(xs, ts, b.ctx, v_T.to(x_t.dtype), torch.ones(b.x0.shape[0], T, device=b.x0.device),
                            mask, T, r=rs, r_dot=None if rs is None else torch.zeros_like(rs),
                            actions=packed_actions(b.actions))
    return mask, x_t, xs, ts, rs, v_T, v_minus[:, :, T:], J


def tf_scm_loss(v_fn, jvp_fn, teacher_fn, b: Batch, t, pattern: ChunkPattern, warmup_r: float,
                w_cfg: float = 3.0, c: float = 0.1, nc: NoisyContext | None = None):
    """TF-sCM (§4): v_T from the teacher (CFG); one no-grad forward-mode pass of the student with tangents
    (v_T, 1) on noisy tokens and (0, 0) on context gives v⁻ and J = dv⁻/dt;
    g = (v_T − v⁻) − r·t·J (r: tangent warm-up), ĝ = g / (‖g‖ + c) per sample in fp64;
    L = 100·Σ‖v_θ − sg(v_θ) − ĝ‖² from a separate ordinary forward with gradients."""
    mask, x_t, xs, ts, _, v_T, v_minus, J = _tangent_pass(v_fn, jvp_fn, teacher_fn, b, t, pattern, w_cfg, nc)
    T = b.x0.shape[2]
    with torch.no_grad():
        tt = expand(t, x_t).double()
        g = (v_T.double() - v_minus.double()) - warmup_r * tt * J.double()
        g_norm = g.flatten(1).norm(dim=1)
        g_hat = g / (g_norm.view(-1, *([1] * (g.ndim - 1))) + c)
        # the residual the run has to remove once the warm-up is over (r = 1), logged whatever r is
        g1_norm = ((v_T.double() - v_minus.double()) - tt * J.double()).flatten(1).norm(dim=1)
    v = v_fn(xs, ts, b.ctx, mask=mask, actions=packed_actions(b.actions))[:, :, T:]
    per_sample = sum_sq(v.double() - v.detach().double() - g_hat)
    loss = _finite_or_nan(100 * per_sample.mean(), g_norm)
    return loss.float(), {"loss": loss.detach().float(), "g_norm": g_norm.mean().float(),
                          "g_norm_r1": g1_norm.mean().float(), "J_norm": J.float().flatten(1).norm(dim=1).mean(),
                          "warmup_r": torch.tensor(float(warmup_r))}


def tf_meanflow_loss(v_fn, jvp_fn, teacher_fn, b: Batch, t, r, pattern: ChunkPattern, w_cfg: float = 3.0,
                     p: float = 1.0, c: float = 1e-3, nc: NoisyContext | None = None):
    """TF-MeanFlow (§4): u_θ(x_t, r, t) is the average velocity over [r, t]; u = v − (t − r)·du/dt with
    du/dt = ∂u/∂x·v_T + ∂u/∂t (tangents (v_T, 0 for r, 1 for t)); target sg(v_T − (t − r)·J_u);
    L = w·Σ‖u_θ − target‖² with MeanFlow's adaptive weight w = sg(1 / (Σ‖Δ‖² + c)^p) (p = 1 as its paper)."""
    mask, x_t, xs, ts, rs, v_T, _, J_u = _tangent_pass(v_fn, jvp_fn, teacher_fn, b, t, pattern, w_cfg, nc, r=r)
    T = b.x0.shape[2]
    target = v_T.float() - expand(t - r, x_t).float() * J_u.float()
    u = v_fn(xs, ts, b.ctx, mask=mask, r=rs, actions=packed_actions(b.actions))[:, :, T:].float()
    per_sample = sum_sq(u - target)
    w = 1.0 / (per_sample.detach() + c) ** p
    loss = _finite_or_nan((w * per_sample).mean(), target)
    return loss, {"loss": loss.detach(), "mse": (per_sample / u[0].numel()).mean().detach()}


def ode_init_loss(v_fn, b: Batch, k: torch.Tensor, pattern: ChunkPattern):
    """ODE init baseline (§4): block-causal student on a video whose block j is the teacher's ODE state at
    sampling time ``ode_times[k[:, j]]``; regress x̂0 = x − t·v onto the ODE's x0 (b.x0). k [B, n_blocks]."""
    states, times = b.ode_states, b.ode_times
    B, K, C, T = states.shape[:4]
    k_frames = k[:, pattern.block_of(torch.arange(T, device=states.device))]      # [B, T]
    x = torch.gather(states, 1, k_frames[:, None, None, :, None, None].expand(-1, 1, C, -1, *states.shape[4:]))
    x = x[:, 0].to(b.x0.dtype)
    t = times.to(b.x0.device)[k_frames]
    v = v_fn(x, t, b.ctx, mask=block_causal(pattern), actions=b.actions)
    per_sample = (x0_from_v(x, t, v).float() - b.x0.float()).square().flatten(1).mean(1)
    loss = per_sample.mean()
    return loss, {"loss": loss.detach()}


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """r = min(1, step / N_warm) (METHOD.md §4); N_warm = 0 trains the full sCM objective from the start."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


__all__ = ["Batch", "net_fns", "NoisyContext", "tf_loss", "df_loss", "fopp_block_times", "tf_dcm_loss",
           "tf_scm_loss", "tf_meanflow_loss", "ode_init_loss", "tangent_warmup"]
