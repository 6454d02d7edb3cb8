"""Teacher-forcing objectives (METHOD.md §3–4): tf, df, tf_dcm, tf_scm, tf_meanflow and the ode_init baseline.

Pure functions: tensors and callables in, ``(loss, metrics)`` out; no optimiser, no logging, no ``.item()``.
The networks enter as callables with the WanDiT signatures:

    v_fn(x, t, ctx, mask=None, r=None) -> v                      (ordinary forward)
    jvp_fn(x, t, ctx, x_dot, t_dot, mask, tangent_from, r=None, r_dot=None) -> (v, v_dot)   (no grad)

Videos are [B, C, T, H, W]; the TF layout packs [context T | noisy T] frames with per-frame times [B, 2T].
"Σ" losses sum over a sample's elements and average over the batch (METHOD.md writes 100·Σ‖…‖²).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flow import bell_weight, noisy, shift
from ..flow import expand_t as expand
from ..models.masks import ChunkPattern, Mask, block_causal, teacher_forcing

# ----- layout helpers -------------------------------------------------------------------------------------


def net_fns(net):
    """(v_fn, jvp_fn) of a WanDiT in the signatures the objectives take."""

    def v_fn(x, t, ctx, mask=None, r=None):
        return net(x, t, ctx, mask=mask, r=r)

    def jvp_fn(x, t, ctx, x_dot, t_dot, mask, tangent_from, r=None, r_dot=None):
        return net.forward_jvp(x, t, ctx, x_dot, t_dot, mask=mask, tangent_from=tangent_from, r=r, r_dot=r_dot)

    return v_fn, jvp_fn


@dataclass(frozen=True)
class NoisyContext:
    """From block ``start`` on, the student's context is the clean prefix noised to ``t_ctx`` (the teacher
    keeps clean context); saves the clean write pass at inference (METHOD.md §4, "Noisy context")."""

    start: int = 1
    t_ctx: float = 5 / 8


def per_frame(t: torch.Tensor, T: int) -> torch.Tensor:
    """[B] -> [B, T] (a per-sample time shared by every frame); [B, T] stays."""
    return t[:, None].expand(-1, T) if t.ndim == 1 else t


def pack(x_ctx: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    return torch.cat([x_ctx, x_t], dim=2)


def context(x0: torch.Tensor, pattern: ChunkPattern, nc: NoisyContext | None, eps_ctx: torch.Tensor | None):
    """The student's context frames and their times [B, T]: clean (t = 0), or noisy from block ``nc.start``."""
    B, T = x0.shape[0], x0.shape[2]
    t_ctx = torch.zeros(B, T, device=x0.device)
    if nc is None:
        return x0, t_ctx
    f = pattern.block_bounds(nc.start)[0] if nc.start < pattern.num_blocks(T) else T
    t_ctx[:, f:] = nc.t_ctx
    return noisy(x0, eps_ctx, t_ctx), t_ctx


def tf_velocity(v_fn, x_ctx, t_ctx, x_t, t, ctx, mask: Mask, r=None):
    """v of the noisy half from one TF-layout forward; r (MeanFlow) equals t on context frames."""
    T = x_t.shape[2]
    ts = torch.cat([t_ctx, per_frame(t, T)], dim=1)
    rs = None if r is None else torch.cat([t_ctx, per_frame(r, T)], dim=1)
    return v_fn(pack(x_ctx, x_t), ts, ctx, mask=mask, r=rs)[:, :, T:]


def teacher_velocity(teacher_fn, x0, x_t, t, ctx, ctx_u, mask: Mask, w_cfg: float):
    """v_T: the causal teacher in the TF layout with clean context and CFG, v_u + w·(v_c − v_u)."""
    T = x_t.shape[2]
    zeros = torch.zeros(x0.shape[0], T, device=x0.device)
    if ctx_u is None or w_cfg == 1.0:
        return tf_velocity(teacher_fn, x0, zeros, x_t, t, ctx, mask)
    both = tf_velocity(teacher_fn, torch.cat([x0, x0]), torch.cat([zeros, zeros]), torch.cat([x_t, x_t]),
                       torch.cat([t, t]), torch.cat([ctx, ctx_u]), mask)
    v_c, v_u = both.chunk(2)
    return v_u + w_cfg * (v_c - v_u)


def sum_sq(x: torch.Tensor) -> torch.Tensor:
    """Σ over each sample's elements of x², [B]."""
    return x.square().flatten(1).sum(1)


# ----- stage 1: causal teacher ----------------------------------------------------------------------------


def tf_loss(v_fn, x0, eps, t, ctx, pattern: ChunkPattern, weight: str = "bell"):
    """tf (§3): clean context, noisy half x_t, L = w(t)·mean‖v_θ − (ε − x0)‖² on the noisy half."""
    x_t = noisy(x0, eps, t)
    v = tf_velocity(v_fn, x0, torch.zeros(x0.shape[0], x0.shape[2], device=x0.device), x_t, t, ctx,
                    teacher_forcing(pattern))
    per_sample = (v.float() - (eps - x0).float()).square().flatten(1).mean(1)
    w = bell_weight(t) if weight == "bell" else torch.ones_like(t)
    loss = (w * per_sample).mean()
    return loss, {"loss": loss.detach(), "mse": per_sample.mean().detach()}


def fopp_block_times(B: int, n_blocks: int, generator=None, device=None, s: float = 5.0) -> torch.Tensor:
    """Per-block times non-decreasing in the block index ("FoPP"): sorted shifted uniforms, [B, n_blocks]."""
    u = torch.rand(B, n_blocks, generator=generator, device=device).sort(dim=1).values
    return shift(u, s)


def df_loss(v_fn, x0, eps, t_blocks, ctx, pattern: ChunkPattern, weight: str = "bell"):
    """df (§3): the noisy video alone, block-causal, one time per block; same velocity loss on every frame."""
    T = x0.shape[2]
    idx = pattern.block_of(torch.arange(T, device=x0.device))
    t = t_blocks[:, idx]                                    # [B, T]
    x_t = noisy(x0, eps, t)
    v = v_fn(x_t, t, ctx, mask=block_causal(pattern))
    per_frame_mse = (v.float() - (eps - x0).float()).square().mean(dim=(1, 3, 4))  # [B, T]
    w = bell_weight(t) if weight == "bell" else torch.ones_like(t)
    loss = (w * per_frame_mse).mean()
    return loss, {"loss": loss.detach(), "mse": per_frame_mse.mean().detach()}


# ----- stage 2: few-step students -------------------------------------------------------------------------


def tf_dcm_loss(v_fn, teacher_fn, x0, eps, u, ctx, ctx_u, pattern: ChunkPattern, n: int = 48, s: float = 3.0,
                w_cfg: float = 3.0, nc: NoisyContext | None = None, eps_ctx=None):
    """TF-dCM (§4): t0 = shift(1 − u), t1 = shift(1 − u − 1/N); x_t1 = x_t0 + (t1 − t0)·v_T (one teacher
    Euler step with CFG); f⁻ = sg(f_θ(x_t1, t1)) from the online student; L = 100·Σ‖f_θ(x_t0, t0) − f⁻‖².
    f_θ(x, t) = x − t·v_θ(x, t) is the consistency function (f_θ(x, 0) = x)."""
    mask = teacher_forcing(pattern)
    t0, t1 = shift(1 - u, s), shift((1 - u - 1 / n).clamp(min=0), s)
    x_t0 = noisy(x0, eps, t0)
    x_c, t_c = context(x0, pattern, nc, eps_ctx)
    with torch.no_grad():
        v_T = teacher_velocity(teacher_fn, x0, x_t0, t0, ctx, ctx_u, mask, w_cfg).float()
        x_t1 = x_t0 + expand(t1 - t0, x_t0) * v_T
        f_minus = x_t1 - expand(t1, x_t1) * tf_velocity(v_fn, x_c, t_c, x_t1, t1, ctx, mask).float()
    f = x_t0 - expand(t0, x_t0) * tf_velocity(v_fn, x_c, t_c, x_t0, t0, ctx, mask).float()
    per_sample = sum_sq(f - f_minus)
    loss = 100 * per_sample.mean()
    return loss, {"loss": loss.detach(), "f_gap": per_sample.mean().sqrt().detach()}


def tf_scm_loss(v_fn, jvp_fn, teacher_fn, x0, eps, t, ctx, ctx_u, pattern: ChunkPattern, warmup_r: float,
                w_cfg: float = 3.0, c: float = 0.1, nc: NoisyContext | None = None, eps_ctx=None):
    """TF-sCM (§4): v_T from the teacher (CFG); one no-grad forward-mode pass of the student with tangents
    (v_T, 1) on noisy tokens and (0, 0) on context gives v⁻ and J = dv⁻/dt;
    g = (v_T − v⁻) − r·t·J (r: tangent warm-up), ĝ = g / (‖g‖ + c) per sample in fp64;
    L = 100·Σ‖v_θ − sg(v_θ) − ĝ‖² from a separate ordinary forward with gradients."""
    mask = teacher_forcing(pattern)
    T = x0.shape[2]
    x_t = noisy(x0, eps, t)
    x_c, t_c = context(x0, pattern, nc, eps_ctx)
    xs = pack(x_c, x_t)
    ts = torch.cat([t_c, per_frame(t, T)], dim=1)
    with torch.no_grad():
        v_T = teacher_velocity(teacher_fn, x0, x_t, t, ctx, ctx_u, mask, w_cfg)
        v_minus, J = jvp_fn(xs, ts, ctx, v_T.to(x_t.dtype), torch.ones(x0.shape[0], T, device=x0.device), mask, T)
        v_minus = v_minus[:, :, T:]  # the pass returns v for the whole packed sequence, J for the noisy half
        g = (v_T.double() - v_minus.double()) - warmup_r * expand(t, x_t).double() * J.double()
        g_norm = g.flatten(1).norm(dim=1)
        g_hat = g / (g_norm.view(-1, *([1] * (g.ndim - 1))) + c)
    v = v_fn(xs, ts, ctx, mask=mask)[:, :, T:]
    per_sample = sum_sq(v.double() - v.detach().double() - g_hat)
    loss = 100 * per_sample.mean()
    finite = torch.isfinite(g_norm).all()
    loss = torch.where(finite, loss, torch.full_like(loss, float("nan")))  # NaN guard: the loop skips the step
    return loss.float(), {"loss": loss.detach().float(), "g_norm": g_norm.mean().float(),
                          "J_norm": J.float().flatten(1).norm(dim=1).mean()}


def sample_t_r(B: int, mean: float, std: float, p_equal: float, generator=None, device=None):
    """MeanFlow's (t, r), r ≤ t: two logit-normal times sorted; with probability p_equal r = t."""
    a = torch.sigmoid(mean + std * torch.randn(B, 2, generator=generator, device=device))
    t, r = a.max(dim=1).values, a.min(dim=1).values
    same = torch.rand(B, generator=generator, device=device) < p_equal
    return t, torch.where(same, t, r)


def tf_meanflow_loss(v_fn, jvp_fn, teacher_fn, x0, eps, t, r, ctx, ctx_u, pattern: ChunkPattern,
                     w_cfg: float = 3.0, p: float = 1.0, c: float = 1e-3, nc: NoisyContext | None = None,
                     eps_ctx=None):
    """TF-MeanFlow (§4): u_θ(x_t, r, t) is the average velocity over [r, t]; u = v − (t − r)·du/dt with
    du/dt = ∂u/∂x·v_T + ∂u/∂t (tangents (v_T, 0 for r, 1 for t)); target sg(v_T − (t − r)·J_u);
    L = w·Σ‖u_θ − target‖² with MeanFlow's adaptive weight w = sg(1 / (Σ‖Δ‖² + c)^p) (p = 1 as its paper)."""
    mask = teacher_forcing(pattern)
    T = x0.shape[2]
    B = x0.shape[0]
    x_t = noisy(x0, eps, t)
    x_c, t_c = context(x0, pattern, nc, eps_ctx)
    xs = pack(x_c, x_t)
    ts = torch.cat([t_c, per_frame(t, T)], dim=1)
    rs = torch.cat([t_c, per_frame(r, T)], dim=1)
    with torch.no_grad():
        v_T = teacher_velocity(teacher_fn, x0, x_t, t, ctx, ctx_u, mask, w_cfg)
        _, J_u = jvp_fn(xs, ts, ctx, v_T.to(x_t.dtype), torch.ones(B, T, device=x0.device), mask, T,
                        r=rs, r_dot=torch.zeros_like(rs))
        target = v_T.float() - expand(t - r, x_t).float() * J_u.float()
    u = v_fn(xs, ts, ctx, mask=mask, r=rs)[:, :, T:].float()
    per_sample = sum_sq(u - target)
    w = 1.0 / (per_sample.detach() + c) ** p
    loss = (w * per_sample).mean()
    return loss, {"loss": loss.detach(), "mse": (per_sample / u[0].numel()).mean().detach()}


def ode_init_loss(v_fn, states, times, x0_end, ctx, pattern: ChunkPattern, generator=None):
    """ODE init baseline (§4): block-causal student on a video whose block b is the teacher's ODE state at
    one of the student's sampling times (chosen per block); regress x̂0 = x − t·v onto the ODE's x0.
    states [B, K, C, T, H, W] at ``times`` [K]; x0_end [B, C, T, H, W]."""
    B, K, C, T = states.shape[:4]
    nb = pattern.num_blocks(T)
    k = torch.randint(0, K, (B, nb), generator=generator, device=states.device)
    k_frames = k[:, pattern.block_of(torch.arange(T, device=states.device))]      # [B, T]
    x = torch.gather(states, 1, k_frames[:, None, None, :, None, None].expand(-1, 1, C, -1, *states.shape[4:]))
    x = x[:, 0].to(x0_end.dtype)
    t = times.to(x0_end.device)[k_frames]
    v = v_fn(x, t, ctx, mask=block_causal(pattern))
    x0_hat = x - t[:, None, :, None, None] * v
    per_sample = (x0_hat.float() - x0_end.float()).square().flatten(1).mean(1)
    loss = per_sample.mean()
    return loss, {"loss": loss.detach()}


def tangent_warmup(step: int, steps: int = 1000) -> float:
    """r = min(1, step / steps) (METHOD.md §4)."""
    return min(1.0, step / max(1, steps))


__all__ = ["net_fns", "NoisyContext", "tf_loss", "df_loss", "fopp_block_times", "tf_dcm_loss", "tf_scm_loss", "sample_t_r",
           "tf_meanflow_loss", "ode_init_loss", "tangent_warmup"]
