"""Streaming with the KV cache == the block-causal full forward; the teacher-forcing layout's meaning."""
import pytest
import torch

from causal_rcm.kv_policy import KVPolicy
from causal_rcm.models import ChunkPattern, block_causal, teacher_forcing

from .conftest import TINY

H, W = 6, 10  # 15 tokens per frame: not a multiple of anything convenient
N = (H // 2) * (W // 2)


def inputs(T, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, TINY.in_dim, T, H, W, generator=g), torch.rand(B, T, generator=g),
            torch.randn(B, 5, TINY.text_dim, generator=g))


@pytest.mark.parametrize("pattern,T", [("c1-1", 5), ("c3-3", 9), ("c1-4", 9)])
def test_streaming_equals_block_causal(tiny_model, pattern, T):
    x, t, c = inputs(T)
    p = ChunkPattern.parse(pattern)
    with torch.no_grad():
        full = tiny_model(x, t, c, mask=block_causal(p))
        cache = tiny_model.new_cache(N, p, max_frames=T)
        for s, e in p.blocks(T):
            # a read-only call on other inputs must neither change the cache nor see itself cached
            tiny_model(torch.randn_like(x[:, :, s:e]), t[:, s:e], c, cache=cache)
            out = tiny_model(x[:, :, s:e], t[:, s:e], c, cache=cache, update_cache=True)
            assert (out - full[:, :, s:e]).abs().max() <= 1e-5, (s, e)
    assert cache.cached_frames == T and cache.next_frame == T


@pytest.mark.parametrize("pattern,T,window,sink", [("c1-1", 7, 2, 1), ("c3-3", 15, 2, 1), ("c1-4", 13, 2, 0),
                                                   ("c1-1", 6, 3, 0)])
def test_rolling_window_equals_masked_forward(tiny_model, pattern, T, window, sink):
    x, t, c = inputs(T, seed=1)
    p = ChunkPattern.parse(pattern)
    with torch.no_grad():
        full = tiny_model(x, t, c, mask=block_causal(p, window=window, sink=sink))
        # no length given: a windowed cache serves an endless stream
        cache = tiny_model.new_cache(N, p, KVPolicy(window, sink))
        for s, e in p.blocks(T):
            out = tiny_model(x[:, :, s:e], t[:, s:e], c, cache=cache, update_cache=True)
            assert (out - full[:, :, s:e]).abs().max() <= 1e-5, (s, e)
            assert cache.next_frame == e  # RoPE positions keep growing while old blocks roll out
    assert cache.capacity < T * N  # the window really bounds memory
    assert cache.cached_frames <= (window + sink) * max(p.first, p.chunk)


@pytest.mark.parametrize("pattern,T", [("c1-1", 4), ("c3-3", 9), ("c1-4", 9)])
def test_teacher_forcing_noisy_chunk_equals_block_causal_prefix(tiny_model, pattern, T):
    """Noisy chunk i of the TF layout == block-causal forward of [clean chunks < i, noisy chunk i]."""
    p = ChunkPattern.parse(pattern)
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(2, TINY.in_dim, T, H, W, generator=g)
    noisy = torch.randn(2, TINY.in_dim, T, H, W, generator=g)
    t_noisy = torch.rand(2, T, generator=g)
    c = torch.randn(2, 5, TINY.text_dim, generator=g)
    packed = torch.cat([clean, noisy], dim=2)
    t_packed = torch.cat([torch.zeros(2, T), t_noisy], dim=1)
    with torch.no_grad():
        v_tf = tiny_model(packed, t_packed, c, mask=teacher_forcing(p))
        for s, e in p.blocks(T):
            x = torch.cat([clean[:, :, :s], noisy[:, :, s:e]], dim=2)
            tt = torch.cat([torch.zeros(2, s), t_noisy[:, s:e]], dim=1)
            v = tiny_model(x, tt, c, mask=block_causal(ChunkPattern(p.first, p.chunk)))
            assert (v_tf[:, :, T + s:T + e] - v[:, :, s:e]).abs().max() <= 1e-5
            # the clean half is the ordinary block-causal forward of the clean video
        v_clean = tiny_model(clean, torch.zeros(2, T), c, mask=block_causal(p))
        assert (v_tf[:, :, :T] - v_clean).abs().max() <= 1e-5


def test_cache_errors(tiny_model):
    x, t, c = inputs(5)
    cache = tiny_model.new_cache(N, "c1-4", max_frames=5)
    with pytest.raises(ValueError, match="expects block 0"):
        tiny_model(x[:, :, :2], t[:, :2], c, cache=cache)
    with pytest.raises(ValueError, match="either a mask"):
        tiny_model(x, t, c, mask=block_causal("c1-4"), cache=cache)
    with pytest.raises(ValueError, match="endless stream needs a window"):
        tiny_model.new_cache(N, "c1-4")
    with pytest.raises(ValueError, match="sized for 5 frames"):
        for s, e in ChunkPattern.parse("c1-4").blocks(9):
            tiny_model(torch.randn(2, TINY.in_dim, e - s, H, W), t[:, :1].expand(-1, e - s), c, cache=cache,
                       update_cache=True)


def test_gradient_flows_through_current_block_only(tiny_model):
    """With grad enabled the current block's K/V stay in the graph; the cached prefix is a constant."""
    x, t, c = inputs(5)
    p = ChunkPattern.parse("c1-4")
    cache = tiny_model.new_cache(N, p, max_frames=5)
    with torch.no_grad():
        tiny_model(x[:, :, :1], t[:, :1], c, cache=cache, update_cache=True)
    x1 = x[:, :, 1:5].clone().requires_grad_(True)
    out = tiny_model(x1, t[:, 1:5], c, cache=cache, update_cache=True)
    out.square().sum().backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all() and x1.grad.abs().sum() > 0
    with torch.no_grad():
        full = tiny_model(x, t, c, mask=block_causal(p))
    assert (out.detach() - full[:, :, 1:5]).abs().max() <= 1e-5


@pytest.mark.parametrize("pattern,T,policy", [("c1-1", 6, KVPolicy()), ("c3-3", 9, KVPolicy()),
                                               ("c1-4", 13, KVPolicy(2, 1)), ("c1-1", 9, KVPolicy(3, 0))])
def test_static_cache_equals_the_dynamic_cache(tiny_model, pattern, T, policy):
    """The fixed-shape cache (every slot attended with a key mask, blocks written into ring slots) gives the
    dynamic cache's outputs, read-only calls included."""
    x, t, c = inputs(T, seed=3)
    p = ChunkPattern.parse(pattern)
    H_, W_ = x.shape[-2:]
    with torch.no_grad():
        dyn = tiny_model.new_cache(N, p, policy, max_frames=None if policy.window else T)
        sta = tiny_model.new_cache(N, p, policy, max_frames=None if policy.window else T, static=True)
        for s, e in p.blocks(T):
            sta.prepare(tiny_model, H_ // 2, W_ // 2, x.device)
            noise = torch.randn_like(x[:, :, s:e])
            a = tiny_model(noise, t[:, s:e], c, cache=dyn)
            b = tiny_model(noise, t[:, s:e], c, cache=sta)
            assert (a - b).abs().max() <= 1e-5, (s, e)
            a = tiny_model(x[:, :, s:e], t[:, s:e], c, cache=dyn, update_cache=True)
            b = tiny_model(x[:, :, s:e], t[:, s:e], c, cache=sta, update_cache=True)
            assert (a - b).abs().max() <= 1e-5, (s, e)
    assert sta.capacity <= max(p.first, p.chunk) * N * (policy.capacity_blocks or p.num_blocks(T))
    with pytest.raises(ValueError, match="call prepare"):
        with torch.no_grad():
            tiny_model(x[:, :, :p.first], t[:, :p.first], c, cache=tiny_model.new_cache(N, p, max_frames=T, static=True))
