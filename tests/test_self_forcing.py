"""Self-forcing rollout and DMD: replayed backprop == plain backprop (fp64), rollout == inference, DMD facts."""
import pytest
import torch

from causal_rcm.models import WanDiT
from causal_rcm.objectives.dmd import critic_loss, dmd_loss, dmd_target
from causal_rcm.objectives.self_forcing import exit_steps, replay_blocks, rollout
from causal_rcm.stream.engine import Engine, Noise, stream
from causal_rcm.stream.sampling import FewStep

from .conftest import TINY, randomize_

SHAPE = (TINY.in_dim, 5, 6, 10)
PATTERN = "c1-2"


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return randomize_(WanDiT(TINY), std=0.1).double()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("iteration", [0, 1, 3])
@pytest.mark.parametrize("context", ["clean", "noisy"])
def test_replayed_backprop_equals_plain(model64, iteration, context):
    how = FewStep(PATTERN, 4, 2, context=context)
    ctx = torch.randn(2, 5, TINY.text_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model64.zero_grad()
    ro = rollout(model64, ctx, Noise(5, [0, 1], "cpu", torch.float64), SHAPE, how, iteration)
    dmd_loss(ro.video, target).backward()
    plain = grads(model64)
    model64.zero_grad()
    with torch.no_grad():
        ro2 = rollout(model64, ctx, Noise(5, [0, 1], "cpu", torch.float64), SHAPE, how, iteration,
                      replay=True)
    assert torch.equal(ro2.video, ro.video.detach())
    total = replay_blocks(model64, ctx, ro2, PATTERN, target,
                          lambda x0, tb: (x0.double() - tb).square().flatten(1).sum(1).mean())
    replayed = grads(model64)
    assert torch.isclose(total, dmd_loss(ro.video.detach(), target))
    assert ((replayed - plain).norm() / plain.norm()) <= 1e-5
    model64.zero_grad()


def test_full_exit_rollout_is_inference(model64):
    """With the exit step at its maximum the rollout is exactly the streaming sampler."""
    how = FewStep(PATTERN, 4, 2)
    ctx = torch.randn(2, 5, TINY.text_dim, dtype=torch.float64)
    C, T, H, W = SHAPE
    with torch.no_grad():
        ro = rollout(model64, ctx, Noise(9, [3, 4], "cpu", torch.float64), SHAPE, how, iteration=3, replay=True)
        engine = Engine(model64, how, (C, H, W), max_frames=T)
        video = stream(engine, engine.start(ctx, None, Noise(9, [3, 4], "cpu", torch.float64)), T)
    assert ro.steps == [4, 2, 2]
    assert (ro.video - video).abs().max() <= 1e-12


def test_exit_steps_cycle():
    how = FewStep(PATTERN, 4, 2)
    assert [exit_steps(i, how, 3) for i in range(5)] == [[1, 1, 1], [2, 2, 2], [3, 2, 2], [4, 2, 2], [1, 1, 1]]


def test_dmd_target_and_critic():
    torch.manual_seed(3)
    real = randomize_(WanDiT(TINY), std=0.05).eval()
    G = torch.randn(2, *SHAPE, requires_grad=True)
    eps, t = torch.randn(2, *SHAPE), torch.tensor([0.3, 0.8])
    ctx = torch.randn(2, 5, TINY.text_dim)

    def fn(x, tt, c, actions=None):
        return real(x, tt, c)

    # fake == real and no guidance: the DMD gradient vanishes, the target is G itself
    target, m = dmd_target(G, fn, fn, t, eps, ctx, torch.zeros_like(ctx), w_real=1.0)
    assert torch.allclose(target, G.detach().double(), atol=1e-5) and m["dmd_grad_norm"] < 1e-4
    loss = dmd_loss(G, target + 1.0)
    loss.backward()
    assert torch.allclose(G.grad, torch.full_like(G, -1.0), atol=1e-5)  # ∂/∂G mean_b Σ‖G − (G + 1)‖² = −2/B
    critic = randomize_(WanDiT(TINY), std=0.05, seed=4)
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3)
    values = []
    for _ in range(6):
        loss, _ = critic_loss(lambda x, tt, c, actions=None: critic(x, tt, c), G, t, eps, ctx)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < values[0]
