"""The streaming engine against the same algorithm written with full-sequence block-causal forwards."""
import pytest
import torch

from causal_rcm.flow import euler_times
from causal_rcm.kv_policy import KVPolicy
from causal_rcm.models import ChunkPattern, block_causal
from causal_rcm.stream.engine import CTX_NOISE_TAG, Engine, Noise, stream
from causal_rcm.stream.sampling import EulerCFG, FewStep, few_step_times

from .conftest import TINY

SHAPE = (TINY.in_dim, 5, 6, 10)  # 5 frames of 15 tokens


def reference(net, ctx, ctx_u, noise, how, T=SHAPE[1], policy=KVPolicy()):
    """No cache: every call is a block-causal forward over [finished blocks | current block], the finished
    blocks at the times their context was written (0, or t_ctx for noisy context)."""
    pattern = ChunkPattern.parse(how.pattern)
    C, _, H, W = SHAPE
    mask = block_causal(pattern, policy.window, policy.sink)
    prefix, t_prefix = [], []
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
            grid = euler_times(how.steps_for(b), how.shift)
            for k in range(len(grid) - 1):
                x = x + (grid[k + 1] - grid[k]) * v_of(x, grid[k])
            prefix.append(x)
            t_prefix.append(torch.zeros(B, e - s))
        else:
            times = how.times_for(b)
            x = times[0] * x
            for k in range(len(times) - 1):
                x_in = x
                x0 = x - times[k] * v_of(x, times[k])
                if k < len(times) - 2:
                    x = (1 - times[k + 1]) * x0 + times[k + 1] * noise.draw((b, k + 1), tuple(x.shape[1:]))
            if not how.noisy_write(b):
                prefix.append(x0)
                t_prefix.append(torch.zeros(B, e - s))
            elif times[-2] == how.t_ctx:  # the last step's input sits at t_ctx: its K/V are the context
                prefix.append(x_in)
                t_prefix.append(torch.full((B, e - s), how.t_ctx))
            else:  # x̂0 re-noised to t_ctx
                eps = noise.draw((b, CTX_NOISE_TAG), tuple(x0.shape[1:]))
                prefix.append((1 - how.t_ctx) * x0 + how.t_ctx * eps)
                t_prefix.append(torch.full((B, e - s), how.t_ctx))
            x = x0
        out.append(x)
    return torch.cat(out, 2)


def run(net, ctx, ctx_u, how, ids=(0, 1), T=SHAPE[1], policy=KVPolicy()):
    C, _, H, W = SHAPE
    engine = Engine(net, how, (C, H, W), policy=policy, max_frames=None if policy.window else T)
    state = engine.start(ctx, ctx_u, Noise(7, list(ids), "cpu"))
    return stream(engine, state, T), state


@pytest.mark.parametrize("pattern", ["c1-1", "c1-4"])
@pytest.mark.parametrize("how", [dict(cls=FewStep, steps_first=4, steps=2),
                                 dict(cls=FewStep, steps_first=3, steps=1, context="noisy"),
                                 dict(cls=FewStep, steps_first=2, steps=2, context="noisy"),
                                 dict(cls=EulerCFG, steps=3, cfg=2.0),
                                 dict(cls=EulerCFG, steps=2, cfg=2.0, steps_first=4)])
def test_stream_equals_full_sequence_algorithm(tiny_model, pattern, how):
    how = dict(how)
    how = how.pop("cls")(pattern=pattern, **how)
    g = torch.Generator().manual_seed(0)
    ctx, ctx_u = torch.randn(2, 5, TINY.text_dim, generator=g), torch.zeros(2, 5, TINY.text_dim)
    with torch.no_grad():
        video, state = run(tiny_model, ctx, ctx_u, how)
        ref = reference(tiny_model, ctx, ctx_u, Noise(7, [0, 1], "cpu"), how)
    assert video.shape == (2, *SHAPE)
    assert len(state.seconds) == ChunkPattern.parse(pattern).num_blocks(SHAPE[1])
    assert (video - ref).abs().max() <= 1e-5


def test_endless_window_stream_equals_masked_algorithm(tiny_model):
    """A windowed stream needs no length: 13 frames through a cache that holds 3 blocks of 1 frame."""
    how = FewStep("c1-1", 1, 1)
    ctx = torch.randn(1, 5, TINY.text_dim)
    with torch.no_grad():
        video, state = run(tiny_model, ctx, None, how, ids=(0,), T=13, policy=KVPolicy(2, 1))
        ref = reference(tiny_model, ctx, None, Noise(7, [0], "cpu"), how, T=13, policy=KVPolicy(2, 1))
    assert state.cache.cached_frames <= 3 and state.frame == 13
    assert (video - ref).abs().max() <= 1e-5


def test_noisy_context_times_match_training():
    """The context a noisy-context student writes sits at the t_ctx training used, from the same block on:
    2-step chunks sample with mids (t_ctx,), so the last step's input is the context (METHOD.md §4)."""
    from causal_rcm.objectives.tf import NoisyContext
    from causal_rcm.stages.tf import TFConfig, bundle_sampling

    cfg = TFConfig(method="tf_scm")
    cfg = cfg.__class__(**{**cfg.__dict__, "objective": cfg.objective.__class__(noisy_context=True)})
    sp = bundle_sampling(cfg)
    nc = NoisyContext(cfg.objective.nc_start, cfg.objective.t_ctx)
    assert (sp.t_ctx, sp.ctx_start) == (nc.t_ctx, nc.start)
    assert not sp.noisy_write(0) and sp.noisy_write(1)
    assert sp.times_for(1)[-2] == nc.t_ctx and sp.times_for(0)[-2] == nc.t_ctx
    assert FewStep(context="clean").times_for(1)[1] == pytest.approx(5 / 6)


def test_samples_regenerate_alone(tiny_model):
    """Sample i depends on (seed, i) only: generating it alone gives the same video."""
    ctx = torch.randn(3, 5, TINY.text_dim)
    how = FewStep("c1-4", 2, 1)
    with torch.no_grad():
        batch, _ = run(tiny_model, ctx, None, how, ids=(10, 11, 12))
        alone, _ = run(tiny_model, ctx[1:2], None, how, ids=(11,))
    assert (batch[1:2] - alone).abs().max() <= 1e-5


def test_step_counts_are_checked():
    assert few_step_times(2)[1] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="1 to 4"):
        few_step_times(5)
    with pytest.raises(ValueError, match="steps must be an integer 1..4"):
        FewStep(steps=5)
    with pytest.raises(ValueError, match="integer >= 1"):
        EulerCFG(steps=0)


@pytest.mark.parametrize("policy", [KVPolicy(), KVPolicy(2, 1)])
@pytest.mark.parametrize("how", [FewStep("c1-4", 2, 2, context="noisy"), EulerCFG("c1-1", steps=2, cfg=2.0)])
def test_static_cache_stream_equals_the_dynamic_stream(tiny_model, how, policy):
    """The engine on the fixed-shape cache (the path CUDA graphs capture) makes the same video."""
    g = torch.Generator().manual_seed(0)
    ctx, ctx_u = torch.randn(2, 5, TINY.text_dim, generator=g), torch.zeros(2, 5, TINY.text_dim)
    C, _, H, W = SHAPE
    T = 9
    out = []
    with torch.no_grad():
        for static in (False, True):
            engine = Engine(tiny_model, how, (C, H, W), policy=policy, max_frames=None if policy.window else T,
                            static=static)
            out.append(stream(engine, engine.start(ctx, ctx_u, Noise(7, [0, 1], "cpu")), T))
    assert (out[0] - out[1]).abs().max() <= 1e-5


@pytest.mark.parametrize("policy", [KVPolicy(), KVPolicy(2, 1)])
def test_a_new_stream_reusing_a_finished_ones_static_cache_is_a_fresh_stream(tiny_model, policy):
    """``start(reuse=old)`` takes over a finished stream's static cache (and graphs): another prompt and seed
    give exactly the video a fresh static stream gives, and the dynamic stream's up to rounding; the cache
    attends to its visible prefix only (the layout grows, then stays once the cache is full)."""
    g = torch.Generator().manual_seed(1)
    ctx_a, ctx_b = torch.randn(2, 5, TINY.text_dim, generator=g), torch.randn(2, 5, TINY.text_dim, generator=g)
    C, _, H, W = SHAPE
    T = 9
    how = FewStep("c1-4", 2, 2, context="noisy")
    kw = dict(policy=policy, max_frames=None if policy.window else T)
    with torch.no_grad():
        static = Engine(tiny_model, how, (C, H, W), static=True, **kw)
        first = static.start(ctx_a, None, Noise(3, [0, 1], "cpu"))
        stream(static, first, T)
        cache = first.cache
        layouts = []
        second = static.start(ctx_b, None, Noise(4, [0, 1], "cpu"), reuse=first)
        assert second.cache is cache and first.cache is None  # taken over; the old state cannot step
        out = []
        while second.frame < T:
            static._prepare(second)
            layouts.append(second.cache.layout)
            out.append(static.step(second)[0])
        reused = torch.cat(out, dim=2)
        fresh = stream(static, static.start(ctx_b, None, Noise(4, [0, 1], "cpu")), T)
        dynamic = Engine(tiny_model, how, (C, H, W), **kw)
        ref = stream(dynamic, dynamic.start(ctx_b, None, Noise(4, [0, 1], "cpu")), T)
    assert torch.equal(reused, fresh)
    assert (reused - ref).abs().max() <= 1e-5
    visible = [v for v, _ in layouts]
    assert visible == sorted(visible) and visible[-1] <= cache.capacity
    assert layouts[0] == (cache.frame_tokens, False)  # block 0 sees its own frame: dense attention
    assert layouts[1][1]  # c1-4: block 0 (1 frame) leaves its 4-frame slot partly empty: masked from then on


def test_realtime_frames_hand_over_every_block_of_the_stream(tiny_model):
    """The real-time loop (decode per block, frames out at once) delivers the stream's own frames."""
    from causal_rcm.stream.realtime import realtime_frames

    how = FewStep("c1-4", 2, 1)
    ctx = torch.randn(1, 5, TINY.text_dim)
    C, T, H, W = SHAPE
    with torch.no_grad():
        ref, _ = run(tiny_model, ctx, None, how, ids=(0,))
        engine = Engine(tiny_model, how, (C, H, W), max_frames=T)
        got = list(realtime_frames(engine, engine.start(ctx, None, Noise(7, [0], "cpu")), T))
    assert [b for b, _, _ in got] == [0, 1]
    times = [t for _, _, t in got]
    assert times == sorted(times)
    frames = torch.from_numpy(__import__("numpy").concatenate([f for _, f, _ in got], axis=1))
    assert frames.shape == (1, T, H, W, C)  # the tiny model's 4 channels pass the identity codec as they are
    want = ((ref + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert torch.equal(frames, want)


@pytest.mark.parametrize("how", [FewStep("c1-4", 2, 1), FewStep("c1-4", 3, 2, context="noisy"),
                                 EulerCFG("c1-4", steps=2, cfg=2.0)])
def test_emit_hands_over_each_blocks_latents_before_its_context_write(tiny_model, how):
    """``emit`` gets a block's x̂0 as soon as it exists: the cache does not hold the block yet where a context
    write (a forward only the next block needs) follows; a noisy-context student whose last step's input
    sits at t_ctx wrote it in that step already. And it is the block ``step`` returns."""
    C, T, H, W = SHAPE
    ctx = torch.randn(1, 5, TINY.text_dim)
    engine = Engine(tiny_model, how, (C, H, W), max_frames=T)
    state = engine.start(ctx, torch.zeros_like(ctx) if isinstance(how, EulerCFG) else None, Noise(7, [0], "cpu"))
    seen = []
    with torch.no_grad():
        while state.frame < T:
            b, before = state.block, state.cache.cached_frames
            x, state = engine.step(state, decode=False,
                                   emit=lambda x0: seen.append((x0.clone(), state.cache.cached_frames)))
            assert torch.equal(seen[-1][0], x)
            written_in_last_step = isinstance(how, FewStep) and how.noisy_write(b) and how.times_for(b)[-2] == how.t_ctx
            assert seen[-1][1] == (state.cache.cached_frames if written_in_last_step else before)
            assert before < state.cache.cached_frames
    assert len(seen) == 2
