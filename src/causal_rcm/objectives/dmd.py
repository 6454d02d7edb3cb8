"""Distribution matching distillation on self-forcing rollouts (METHOD.md §5).

Real score: the bidirectional teacher with CFG at the scale its synthetic data were drawn with; fake score:
the critic, a bidirectional network trained by flow matching on the generator's (no-grad) rollouts. Pure
functions; networks enter as callables ``fn(x, t, ctx, actions=None) -> v`` on whole videos.
"""
from __future__ import annotations

import torch

from ..flow import cfg_combine, expand_t, noisy, x0_from_v
from ..models.conditioning import Actions


def dmd_target(G: torch.Tensor, real_fn, fake_fn, t_D: torch.Tensor, eps: torch.Tensor, ctx, ctx_u,
               w_real: float, actions: Actions | None = None):
    """sg(G − grad): x_D = (1 − t_D)·G + t_D·ε; x̂0_real from the teacher (CFG w_real), x̂0_fake from the
    critic; w = mean|G − x̂0_real| (≥ 1e-5) per sample; grad = (x̂0_fake − x̂0_real) / w. fp64.
    Both scores see the rollout's actions (the teacher's unconditional rows: none). t_D is [B] or per frame
    [B, T]: given first frames sit at t_D = 0, where x̂0 = G and the gradient vanishes."""
    with torch.no_grad():
        G0 = G.detach()
        x_D = noisy(G0, eps, t_D)
        a2 = None if actions is None else Actions.cat([actions, actions.dropped()])
        v_c, v_u = real_fn(torch.cat([x_D, x_D]), torch.cat([t_D, t_D]), torch.cat([ctx, ctx_u]),
                           actions=a2).float().chunk(2)
        x0_real = x0_from_v(x_D, t_D, cfg_combine(v_c, v_u, w_real)).double()
        x0_fake = x0_from_v(x_D, t_D, fake_fn(x_D, t_D, ctx, actions=actions).float()).double()
        w = (G0.double() - x0_real).abs().flatten(1).mean(1).clamp(min=1e-5)
        grad = (x0_fake - x0_real) / expand_t(w, x0_real)
        target = G0.double() - grad
    return target, {"dmd_grad_norm": grad.flatten(1).norm(dim=1).mean().float(), "dmd_w": w.mean().float()}


def dmd_loss(G: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = Σ‖G − sg(G − grad)‖² per sample, mean over the batch (fp64): ∂L/∂G = 2·grad."""
    return (G.double() - target).square().flatten(1).sum(1).mean()


def critic_loss(fake_fn, G: torch.Tensor, t_D: torch.Tensor, eps: torch.Tensor, ctx, actions: Actions | None = None,
                given: int = 0):
    """Flow matching of the fake score on rollouts: mean‖v_fake(x_D, t_D) − (ε − G)‖², G detached; the first
    ``given`` frames (a prefilled start, at t_D = 0) are context, not part of the loss."""
    G = G.detach()
    x_D = noisy(G, eps, t_D)
    err = (fake_fn(x_D, t_D, ctx, actions=actions).float() - (eps - G).float()).square()
    loss = err[:, :, given:].mean()
    return loss, {"critic_loss": loss.detach()}


__all__ = ["dmd_target", "dmd_loss", "critic_loss"]
