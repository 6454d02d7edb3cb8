"""The forward-mode DiT pass against torch.func.jvp of the ordinary forward (fp64) and finite differences."""
import dataclasses

import pytest
import torch
from torch.func import jvp

from causal_rcm.models import WanDiT, block_causal, teacher_forcing

from .conftest import TINY, randomize_

H, W = 6, 10  # 15 tokens per frame
B = 2


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return randomize_(WanDiT(TINY)).double().eval()


def reference(model, x, t, c, x_dot, t_dot, **kw):
    """torch.func.jvp of the ordinary forward, with the differentiable plain-PyTorch attention."""
    return jvp(lambda xx, tt: model(xx, tt, c, attn_backend="math", **kw), (x, t), (x_dot, t_dot))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def tf_inputs(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = rnd(B, TINY.in_dim, 2 * T, H, W)
    t = torch.cat([torch.zeros(B, T, dtype=torch.float64), torch.rand(B, T, generator=g, dtype=torch.float64)], 1)
    x_dot = rnd(B, TINY.in_dim, T, H, W)  # tangents of the noisy half only (the clean half is context)
    return x, t, rnd(B, 5, TINY.text_dim), x_dot


@pytest.mark.parametrize("pattern,T", [("c1-1", 3), ("c3-3", 6), ("c1-4", 5)])
def test_teacher_forcing_jvp_matches_torch_func(model64, pattern, T):
    x, t, c, x_dot = tf_inputs(T)
    mask = teacher_forcing(pattern)
    t_dot = torch.ones(B, T, dtype=torch.float64)
    v, v_dot = model64.forward_jvp(x, t, c, x_dot, t_dot, mask=mask, tangent_from=T)
    zeros = torch.zeros_like(x_dot)
    ref_v, ref_dot = reference(model64, x, t, c, torch.cat([zeros, x_dot], 2),
                               torch.cat([torch.zeros(B, T, dtype=torch.float64), t_dot], 1), mask=mask)
    assert v_dot.shape == x_dot.shape
    assert rel(v, ref_v) < 1e-12
    assert rel(v_dot, ref_dot[:, :, T:]) < 1e-10
    assert ref_dot[:, :, :T].abs().max() == 0  # the context really has zero tangent


@pytest.mark.parametrize("per_frame", [False, True])
def test_full_tangent_jvp_matches_torch_func(model64, per_frame):
    g = torch.Generator().manual_seed(1)
    T = 4
    x = torch.randn(B, TINY.in_dim, T, H, W, generator=g, dtype=torch.float64)
    t = torch.rand(B, T, generator=g, dtype=torch.float64) if per_frame else torch.rand(B, dtype=torch.float64)
    t_dot = torch.randn(t.shape, generator=g, dtype=torch.float64)
    x_dot = torch.randn(x.shape, generator=g, dtype=torch.float64)
    c = torch.randn(B, 5, TINY.text_dim, generator=g, dtype=torch.float64)
    mask = block_causal("c1-1") if per_frame else None
    v, v_dot = model64.forward_jvp(x, t, c, x_dot, t_dot, mask=mask)
    ref_v, ref_dot = reference(model64, x, t, c, x_dot, t_dot, mask=mask)
    assert rel(v, ref_v) < 1e-12 and rel(v_dot, ref_dot) < 1e-10


def test_jvp_matches_finite_difference(model64):
    """dv/dt along the flow (ẋ = v_T, ṫ = 1) against a central difference of the ordinary forward."""
    T = 3
    x, t, c, x_dot = tf_inputs(T, seed=2)
    mask = teacher_forcing("c1-1")
    t_dot = torch.ones(B, T, dtype=torch.float64)
    _, v_dot = model64.forward_jvp(x, t, c, x_dot, t_dot, mask=mask, tangent_from=T)
    h = 1e-6
    dx = torch.cat([torch.zeros_like(x_dot), x_dot], 2)
    dt = torch.cat([torch.zeros(B, T, dtype=torch.float64), t_dot], 1)
    with torch.no_grad():
        fd = (model64(x + h * dx, t + h * dt, c, mask=mask) - model64(x - h * dx, t - h * dt, c, mask=mask)) / (2 * h)
    assert rel(v_dot, fd[:, :, T:]) < 1e-6


def test_full_size_tangent_comes_back_full_size(model64):
    T = 3
    x, t, c, x_dot = tf_inputs(T, seed=3)
    full = torch.cat([torch.zeros_like(x_dot), x_dot], 2)
    t_dot = torch.cat([torch.zeros(B, T, dtype=torch.float64), torch.ones(B, T, dtype=torch.float64)], 1)
    mask = teacher_forcing("c1-1")
    _, a = model64.forward_jvp(x, t, c, full, t_dot, mask=mask, tangent_from=T)
    _, b = model64.forward_jvp(x, t, c, x_dot, t_dot[:, T:], mask=mask, tangent_from=T)
    assert a.shape == x.shape and torch.equal(a[:, :, T:], b) and a[:, :, :T].abs().max() == 0


def test_tangent_structure_is_checked(model64):
    """A prefix that can see tangent frames (dense mask) is rejected, not silently given zero tangents."""
    T = 3
    x = torch.randn(B, TINY.in_dim, T, H, W, dtype=torch.float64)
    with pytest.raises(ValueError):
        model64.forward_jvp(x, torch.rand(B, dtype=torch.float64), torch.randn(B, 5, TINY.text_dim, dtype=torch.float64),
                            torch.randn(B, TINY.in_dim, 1, H, W, dtype=torch.float64),
                            torch.ones(B, 1, dtype=torch.float64), tangent_from=2)


def test_dual_time_jvp(model64):
    """MeanFlow's second time input r: tangents in t and r together."""
    torch.manual_seed(4)
    m = randomize_(WanDiT(dataclasses.replace(TINY, dual_time=True)), seed=4).double().eval()
    T = 3
    x = torch.randn(B, TINY.in_dim, T, H, W, dtype=torch.float64)
    t, r = torch.rand(B, dtype=torch.float64), torch.rand(B, dtype=torch.float64) * 0.5
    c = torch.randn(B, 5, TINY.text_dim, dtype=torch.float64)
    x_dot = torch.randn_like(x)
    t_dot, r_dot = torch.ones(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    v, v_dot = m.forward_jvp(x, t, c, x_dot, t_dot, r=r, r_dot=r_dot)
    ref_v, ref_dot = jvp(lambda xx, tt, rr: m(xx, tt, c, r=rr, attn_backend="math"), (x, t, r), (x_dot, t_dot, r_dot))
    assert rel(v, ref_v) < 1e-12 and rel(v_dot, ref_dot) < 1e-10


def test_bf16_jvp_runs_and_tracks_fp32():
    """Low precision: every operand of the attention JVP keeps one dtype; results stay near fp32."""
    torch.manual_seed(5)
    m = randomize_(WanDiT(TINY), std=0.05, seed=5).eval()
    T = 3
    x, t, c, x_dot = (a.float() for a in tf_inputs(T, seed=5))
    mask = teacher_forcing("c1-1")
    t_dot = torch.ones(B, T)
    _, ref = m.forward_jvp(x, t, c, x_dot, t_dot, mask=mask, tangent_from=T)
    mb = m.to(torch.bfloat16)
    v, low = mb.forward_jvp(x.bfloat16(), t, c.bfloat16(), x_dot.bfloat16(), t_dot, mask=mask, tangent_from=T)
    assert v.dtype == low.dtype == torch.bfloat16
    assert rel(low.float(), ref) < 5e-2
