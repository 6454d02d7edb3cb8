"""The streaming engine against the same algorithm written with full-sequence block-causal forwards."""
import pytest
import torch

from causal_rcm.flow import euler_times
from causal_rcm.models import ChunkPattern, block_causal
from causal_rcm.stream.engine import EulerCFG, FewStep, Noise, few_step_times, stream

from .conftest import TINY, randomize_

SHAPE = (TINY.in_dim, 5, 6, 10)  # 5 frames of 15 tokens


def reference(net, ctx, ctx_u, noise, pattern, how):
    """No cache: every call is a block-causal forward over [finished blocks | current block]."""
    pattern = ChunkPattern.parse(pattern)
    C, T, H, W = SHAPE
    mask = block_causal(pattern)
    prefix, t_prefix = [], []  # what the cache would hold: frames and their times
    out = []
    guided = isinstance(how, EulerCFG)
    for b, (s, e) in enumerate(pattern.blocks(T)):
        x = noise.draw((b, 0), (C, e - s, H, W))
        B = x.shape[0]

        def v_of(x_in, t):
            xs = torch.cat(prefix + [x_in], 2)
            ts = torch.cat(t_prefix + [torch.full((B, e - s), float(t))], 1)
            if guided:
                both = net(torch.cat([xs, xs]), torch.cat([ts, ts]), torch.cat([ctx, ctx_u]), mask=mask)[:, :, s:e]
                v_c, v_u = both.chunk(2)
                return v_u + how.cfg * (v_c - v_u)
            return net(xs, ts, ctx, mask=mask)[:, :, s:e]

        if guided:
            n = how.steps if (b or how.steps_first is None) else how.steps_first
            grid = euler_times(n, how.shift)
            for k in range(n):
                x = x + (grid[k + 1] - grid[k]) * v_of(x, grid[k])
            prefix.append(x)
            t_prefix.append(torch.zeros(B, e - s))
        else:
            times = few_step_times(how.steps_for(b), how.t0)
            x = times[0] * x
            for k in range(len(times) - 1):
                x_in = x
                x0 = x - times[k] * v_of(x, times[k])
                if k < len(times) - 2:
                    x = (1 - times[k + 1]) * x0 + times[k + 1] * noise.draw((b, k + 1), tuple(x.shape[1:]))
            if how.context == "clean":
                prefix.append(x0)
                t_prefix.append(torch.zeros(B, e - s))
            else:
                prefix.append(x_in)
                t_prefix.append(torch.full((B, e - s), float(times[-2])))
            x = x0
        out.append(x)
    return torch.cat(out, 2)


@pytest.mark.parametrize("pattern", ["c1-1", "c1-4"])
@pytest.mark.parametrize("how", [FewStep(4, 2), FewStep(3, 1, context="noisy"), EulerCFG(steps=3, cfg=2.0),
                                 EulerCFG(steps=2, cfg=2.0, steps_first=4)])
def test_stream_equals_full_sequence_algorithm(tiny_model, pattern, how):
    g = torch.Generator().manual_seed(0)
    ctx, ctx_u = torch.randn(2, 5, TINY.text_dim, generator=g), torch.zeros(2, 5, TINY.text_dim)
    with torch.no_grad():
        video, seconds = stream(tiny_model, ctx, ctx_u, Noise(7, [0, 1], "cpu"), SHAPE, pattern, how)
        ref = reference(tiny_model, ctx, ctx_u, Noise(7, [0, 1], "cpu"), pattern, how)
    assert video.shape == (2, *SHAPE)
    assert len(seconds) == ChunkPattern.parse(pattern).num_blocks(SHAPE[1])
    assert (video - ref).abs().max() <= 1e-5


def test_samples_regenerate_alone(tiny_model):
    """Sample i depends on (seed, i) only: generating it alone gives the same video."""
    ctx = torch.randn(3, 5, TINY.text_dim)
    with torch.no_grad():
        batch, _ = stream(tiny_model, ctx, None, Noise(3, [10, 11, 12], "cpu"), SHAPE, "c1-4", FewStep(2, 1))
        alone, _ = stream(tiny_model, ctx[1:2], None, Noise(3, [11], "cpu"), SHAPE, "c1-4", FewStep(2, 1))
    assert (batch[1:2] - alone).abs().max() <= 1e-5


def test_step_counts_are_checked():
    assert few_step_times(2)[1] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="1 to 4"):
        few_step_times(5)


def test_generator_first_chunk_steps_for_causal_teachers_only():
    """A causal teacher bundle takes steps_first (its first block on its own Euler grid); a bidirectional
    teacher refuses it with a clear error instead of ignoring it."""
    import dataclasses

    from causal_rcm.config import preset
    from causal_rcm.generate import Generator
    from causal_rcm.models import WanDiT
    from causal_rcm.models.conditioning import WorldTextEncoder
    from causal_rcm.stages.common import WorldConfig

    world = WorldConfig(size=16, frames=5)
    text = WorldTextEncoder.for_prompts(list(world.prompts()), dim=16, num_layers=1, num_heads=2)
    net = randomize_(WanDiT(dataclasses.replace(preset("blob-tiny"), text_dim=16)))
    sampling = dict(method="causal_euler", pattern="c1-4", steps=2, cfg=2.0, shift=3.0)
    causal = Generator.from_modules(net, text, world, sampling)
    prompt = [world.prompts()[0]]
    a = causal.sample(prompt, seed=0, steps=2, steps_first=3, show_progress=False)
    b = causal.sample(prompt, seed=0, steps=3, show_progress=False)
    c = causal.sample(prompt, seed=0, steps=2, show_progress=False)
    assert (a[:, :1] == b[:, :1]).all()      # first block: 3 steps in both
    assert not (a[:, :1] == c[:, :1]).all()  # ... not the 2 of the plain grid
    bidir = Generator.from_modules(net, text, world, dict(method="euler", steps=2, cfg=2.0, shift=3.0))
    with pytest.raises(ValueError, match="bidirectional"):
        bidir.sample(prompt, seed=0, steps_first=3, show_progress=False)
