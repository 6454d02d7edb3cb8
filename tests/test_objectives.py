"""Teacher-forcing objectives on a tiny model: finite, they descend, and the facts METHOD.md §7 lists."""
import copy
import dataclasses

import pytest
import torch

from causal_rcm.flow import noisy, shift
from causal_rcm.models import ChunkPattern, WanDiT
from causal_rcm.objectives import tf as obj
from causal_rcm.objectives.tf_methods import METHODS, Nets, Objective, StepInfo
from causal_rcm.seeding import SampleRandom

from .conftest import TINY, randomize_

P = ChunkPattern(1, 2)  # T = 5 frames -> blocks [0,1) [1,3) [3,5)
B, T, H, W = 2, 5, 6, 10


fns = obj.net_fns


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return obj.Batch(x0=torch.randn(B, TINY.in_dim, T, H, W, generator=g) * 0.5,
                     eps=torch.randn(B, TINY.in_dim, T, H, W, generator=g),
                     ctx=torch.randn(B, 4, TINY.text_dim, generator=g),
                     ctx_u=torch.zeros(B, 4, TINY.text_dim))


def no_cfg(b):
    return dataclasses.replace(b, ctx_u=None)


def model_pair(dual=False, seed=0):
    torch.manual_seed(seed)
    teacher = randomize_(WanDiT(TINY), std=0.05, seed=seed)
    student = copy.deepcopy(teacher)
    if dual:
        student_dual = WanDiT(dataclasses.replace(TINY, dual_time=True))
        missing = student_dual.load_state_dict(teacher.state_dict(), strict=False).missing_keys
        assert all(k.startswith("r_embedding") for k in missing)
        student = student_dual
    return teacher.eval().requires_grad_(False), student


def descend(student, loss_of, steps=6, lr=2e-3, key="loss"):
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    values = []
    for _ in range(steps):
        loss, metrics = loss_of()
        assert torch.isfinite(loss)
        values.append(float(metrics[key]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return values


def test_tf_and_df_losses_descend(batch):
    _, student = model_pair()
    v_fn, _ = fns(student)
    t = torch.tensor([0.3, 0.8])
    vals = descend(student, lambda: obj.tf_loss(v_fn, batch, t, P))
    assert vals[-1] < vals[0]
    tb = obj.fopp_block_times(torch.rand(B, P.num_blocks(T), generator=torch.Generator().manual_seed(1)))
    assert (tb[:, 1:] >= tb[:, :-1]).all()
    vals = descend(student, lambda: obj.df_loss(v_fn, batch, tb, P))
    assert vals[-1] < vals[0]


def test_tf_dcm_boundary_and_descent(batch):
    """At u = 1 − 1/N the target time is t1 = 0, where f(x, 0) = x: f⁻ is the teacher's own x̂0, so a student
    equal to the teacher (no CFG) has zero loss there."""
    teacher, student = model_pair()
    v_fn, _ = fns(student)
    t_fn, _ = fns(teacher)
    u = torch.full((B,), 1 - 1 / 48)
    loss, _ = obj.tf_dcm_loss(v_fn, t_fn, no_cfg(batch), u, P, w_cfg=1.0)
    assert loss.abs() < 1e-6
    u = torch.tensor([0.2, 0.6])
    vals = descend(student, lambda: obj.tf_dcm_loss(v_fn, t_fn, batch, u, P))
    assert vals[-1] < vals[0]


def test_tf_scm_zero_at_the_start_and_shrinks_the_residual(batch):
    teacher, student = model_pair()
    v_fn, jvp_fn = fns(student)
    t_fn, _ = fns(teacher)
    t = torch.tensor([0.4, 0.7])
    # student = teacher, no CFG, tangent warm-up r = 0: g = (v_T − v⁻) − 0 = 0
    loss, m = obj.tf_scm_loss(v_fn, jvp_fn, t_fn, no_cfg(batch), t, P, warmup_r=0.0, w_cfg=1.0)
    assert loss.abs() < 1e-6 and m["g_norm"] < 1e-4  # fp32 rounding between the two attention paths
    # with CFG and the full tangent term the consistency residual ‖g‖ goes down under the sCM gradient
    vals = descend(student, lambda: obj.tf_scm_loss(v_fn, jvp_fn, t_fn, batch, t, P, warmup_r=1.0),
                   steps=8, lr=1e-3, key="g_norm")
    assert vals[-1] < vals[0]


def test_tf_scm_nan_guard(batch):
    teacher, student = model_pair()
    v_fn, jvp_fn = fns(student)

    def broken(x, t, ctx, mask=None, r=None, actions=None):
        return torch.full_like(x, float("nan"))

    loss, _ = obj.tf_scm_loss(v_fn, jvp_fn, broken, no_cfg(batch), torch.tensor([0.5, 0.5]), P, warmup_r=1.0,
                              w_cfg=1.0)
    assert torch.isnan(loss)
    loss, _ = obj.tf_dcm_loss(v_fn, broken, no_cfg(batch), torch.tensor([0.5, 0.5]), P, w_cfg=1.0)
    assert torch.isnan(loss)


def test_tf_meanflow_starts_at_the_teacher_and_descends(batch):
    teacher, student = model_pair(dual=True)
    v_fn, jvp_fn = fns(student)
    t_fn, _ = fns(teacher)
    t = torch.tensor([0.5, 0.9])
    # r = t: the average velocity over an empty interval is v itself; the zero-initialised r-embedding makes
    # the initial student the teacher, so the loss vanishes without CFG
    loss, m = obj.tf_meanflow_loss(v_fn, jvp_fn, t_fn, no_cfg(batch), t, t, P, w_cfg=1.0)
    assert m["mse"] < 1e-8
    r = torch.tensor([0.1, 0.3])
    vals = descend(student, lambda: obj.tf_meanflow_loss(v_fn, jvp_fn, t_fn, batch, t, r, P), key="mse",
                   steps=10, lr=5e-4)
    assert vals[-1] < vals[0]


def test_ode_init_descends(batch):
    _, student = model_pair()
    v_fn, _ = fns(student)
    times = torch.tensor([1600 / 1601, 15 / 16, 5 / 6, 5 / 8])
    states = torch.stack([noisy(batch.x0, batch.eps, torch.full((B,), float(tt))) for tt in times], 1)
    b = dataclasses.replace(batch, ode_states=states, ode_times=times)
    k = torch.randint(0, 4, (B, P.num_blocks(T)), generator=torch.Generator().manual_seed(2))
    vals = descend(student, lambda: obj.ode_init_loss(v_fn, b, k, P))
    assert vals[-1] < vals[0]


def test_noisy_context_layout(batch):
    nc = obj.NoisyContext(start=1, t_ctx=5 / 8)
    x_c, t_c = obj.context(batch.x0, P, nc, batch.eps)
    assert torch.equal(x_c[:, :, :1], batch.x0[:, :, :1]) and (t_c[:, :1] == 0).all()
    assert torch.allclose(x_c[:, :, 1:], noisy(batch.x0, batch.eps, t_c)[:, :, 1:])
    assert (t_c[:, 1:] == 5 / 8).all()
    # the student trains with noisy context, the teacher keeps clean context: the loss still runs
    teacher, student = model_pair()
    v_fn, jvp_fn = fns(student)
    t_fn, _ = fns(teacher)
    b = dataclasses.replace(no_cfg(batch), eps_ctx=batch.eps)
    loss, _ = obj.tf_scm_loss(v_fn, jvp_fn, t_fn, b, torch.tensor([0.5, 0.6]), P, warmup_r=1.0, nc=nc)
    assert torch.isfinite(loss)
    assert obj.tangent_warmup(500, 1000) == 0.5 and obj.tangent_warmup(5000, 1000) == 1.0
    assert obj.tangent_warmup(0, 0) == 1.0  # no warm-up: the full sCM objective from the first step
    assert shift(torch.tensor(0.5), 3.0) == pytest.approx(0.75)


def test_method_recipes_draw_the_same_times_split_over_ranks(batch):
    """Each recipe draws its times sample by sample, so two half batches (two ranks) see the same times and
    losses as the whole batch in one process."""
    teacher, student = model_pair()
    v_fn, jvp_fn = fns(student)
    nets = Nets(v_fn, jvp_fn, fns(teacher)[0])
    o = Objective(scm_warmup=0.5)
    info = StepInfo(step=3, steps=10)
    for name in ("tf", "tf_dcm", "tf_scm"):
        m = METHODS[name]
        whole, _ = m.loss(nets, batch, SampleRandom(0, 1, 3, range(2), "cpu"), o, P, info)
        halves = [m.loss(nets, dataclasses.replace(batch, **{f: getattr(batch, f)[j:j + 1] for f in
                                                             ("x0", "eps", "ctx", "ctx_u")}),
                         SampleRandom(0, 1, 3, range(j, j + 1), "cpu"), o, P, info)[0] for j in range(2)]
        assert torch.allclose(whole, sum(halves) / 2, rtol=1e-4), name


def test_scm_warmup_is_a_fraction_of_the_run(batch):
    teacher, student = model_pair()
    v_fn, jvp_fn = fns(student)
    nets = Nets(v_fn, jvp_fn, fns(teacher)[0])
    rng = SampleRandom(0, 1, 0, range(2), "cpu")
    _, m = METHODS["tf_scm"].loss(nets, batch, rng, Objective(scm_warmup=0.1), P, StepInfo(50, 1000))
    assert float(m["warmup_r"]) == pytest.approx(0.5)
    _, m = METHODS["tf_scm"].loss(nets, batch, rng, Objective(), P, StepInfo(0, 1000))
    assert float(m["warmup_r"]) == 1.0
    with pytest.raises(ValueError, match="fraction"):
        Objective(scm_warmup=200)


def test_a_half_depth_student_keeps_the_chosen_blocks():
    from causal_rcm.stages.tf import with_layers
    from causal_rcm.stream.bundle import Bundle
    from causal_rcm.stream.sampling import FewStep
    from causal_rcm.worlds.base import WorldConfig
    from causal_rcm.models.conditioning import WorldTextEncoder

    torch.manual_seed(0)
    net = randomize_(WanDiT(dataclasses.replace(TINY, num_layers=4)))
    text = WorldTextEncoder.for_prompts(["a red ball"], dim=TINY.text_dim, num_layers=1, num_heads=2)
    b = with_layers(Bundle(copy.deepcopy(net), text, FewStep("c1-4"), WorldConfig(size=16, frames=5)), (0, 2))
    assert b.net.cfg.num_layers == 2
    assert torch.equal(b.net.blocks[1].ffn[0].weight, net.blocks[2].ffn[0].weight)
    assert torch.equal(b.net.head.head.weight, net.head.head.weight)
    with pytest.raises(ValueError, match="distinct block indices"):
        with_layers(Bundle(copy.deepcopy(net), text, FewStep("c1-4"), WorldConfig(size=16, frames=5)), (0, 7))
