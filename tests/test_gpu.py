"""GPU paths agree with the CPU ones: FlexAttention vs dense masks, the Triton JVP inside the DiT, bf16."""
import pytest
import torch

from causal_rcm.kernels.attention import attention
from causal_rcm.models import WanDiT, block_causal, teacher_forcing

from .conftest import TINY, randomize_, requires_cuda

pytestmark = [requires_cuda, pytest.mark.gpu]


@pytest.mark.parametrize("mask", [block_causal("c3-3"), block_causal("c1-4", window=2, sink=1),
                                  teacher_forcing("c1-1"), teacher_forcing("c3-3")])
def test_flex_matches_dense_mask(mask):
    N, T = 37, 9
    L = mask.seq_frames(T) * N
    q, k, v = (torch.randn(2, 4, L, 64, device="cuda") for _ in range(3))
    flex = attention(q, k, v, mask, N, backend="flex")
    dense = attention(q, k, v, mask, N, backend="sdpa")
    assert ((flex - dense).norm() / dense.norm()) < 1e-3


@pytest.mark.parametrize("mask", [teacher_forcing("c3-3"), block_causal("c1-4", window=2, sink=1)])
def test_split_matches_flex_forward_and_backward_bf16(mask):
    """The split backend (dense SDPA pieces: flash or cuDNN) against FlexAttention in bf16, values and
    gradients, at a frame size (37 tokens) that is no tile multiple."""
    N, T = 37, 9
    L = mask.seq_frames(T) * N
    q, k, v = (torch.randn(2, 4, L, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    w = torch.randn(2, 4, L, 64, device="cuda", dtype=torch.bfloat16)
    outs = {}
    for backend in ("flex", "split"):
        o = attention(q, k, v, mask, N, backend=backend)
        outs[backend] = (o, *torch.autograd.grad(o, (q, k, v), w))
    for a, b in zip(outs["split"], outs["flex"]):
        assert ((a.float() - b.float()).norm() / b.float().norm()) < 1e-2


def test_dit_forward_and_jvp_on_gpu_match_cpu():
    torch.manual_seed(0)
    m = randomize_(WanDiT(TINY)).eval()
    T = 3
    x = torch.randn(2, 4, 2 * T, 6, 10)
    t = torch.cat([torch.zeros(2, T), torch.rand(2, T)], 1)
    c = torch.randn(2, 5, 16)
    x_dot, t_dot = torch.randn(2, 4, T, 6, 10), torch.ones(2, T)
    mask = teacher_forcing("c1-1")
    v_cpu, d_cpu = m.forward_jvp(x, t, c, x_dot, t_dot, mask=mask, tangent_from=T)
    g = m.cuda()
    v_gpu, d_gpu = g.forward_jvp(x.cuda(), t.cuda(), c.cuda(), x_dot.cuda(), t_dot.cuda(), mask=mask, tangent_from=T)
    assert ((v_gpu.cpu() - v_cpu).norm() / v_cpu.norm()) < 1e-3
    assert ((d_gpu.cpu() - d_cpu).norm() / d_cpu.norm()) < 1e-3
    with torch.no_grad():
        v_fwd = g(x.cuda(), t.cuda(), c.cuda(), mask=mask)
    assert ((v_fwd.cpu() - v_cpu).norm() / v_cpu.norm()) < 1e-3


def test_fused_norm_rope_path_matches_plain():
    torch.manual_seed(1)
    m = randomize_(WanDiT(TINY)).cuda().eval()
    x, t, c = torch.randn(2, 4, 3, 6, 10).cuda(), torch.rand(2).cuda(), torch.randn(2, 5, 16).cuda()
    with torch.no_grad():
        fused = m(x, t, c)  # the default on CUDA without gradients
        plain = m.use_fused_norm_rope(False)(x, t, c)
    assert ((fused - plain).norm() / plain.norm()) < 1e-4


def assert_streams_agree(make_engines, ctx, frames: int, ids: list[int]) -> None:
    """The engines ``make_engines()`` builds (afresh per precision: graphs are captured per dtype) stream the
    first one's frames: in fp32 (TF32 off) within 1e-4, under bf16 autocast within 2e-2 (relative Frobenius
    error; the paths use different kernels, so bf16 rounding differences compound over the blocks)."""
    from causal_rcm.stream.engine import Noise, stream

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            out = []
            for engine in make_engines():
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    out.append(stream(engine, engine.start(ctx, None, Noise(1, ids, "cuda")), frames).float())
            for other in out[1:]:
                rel = ((other - out[0]).norm() / out[0].norm()).item()
                assert rel < tol, (dtype, rel)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@requires_cuda
@pytest.mark.gpu
def test_compiled_graph_captured_stream_equals_eager():
    """Engine(graphs=True, compile=True): the blocks compiled around their attention (Inductor's kernels inside
    the captured graphs) stream the eager network's frames, in fp32 up to kernel rounding and under bf16
    autocast within bf16's rounding (a c3-3 stream of 9 frames: block shapes 3 and 3, cache layouts 3)."""
    import copy

    from causal_rcm.stream.engine import Engine
    from causal_rcm.stream.sampling import FewStep

    torch.manual_seed(0)
    net = randomize_(WanDiT(TINY)).cuda().eval()
    compiled = copy.deepcopy(net)
    ctx = torch.randn(1, 5, TINY.text_dim, device="cuda")
    how = FewStep("c3-3", 2, 2)
    assert_streams_agree(lambda: [Engine(net, how, (TINY.in_dim, 6, 10), max_frames=9, static=True),
                                  Engine(compiled, how, (TINY.in_dim, 6, 10), max_frames=9, graphs=True,
                                         compile=True)], ctx, 9, [0])


@requires_cuda
@pytest.mark.gpu
def test_graph_captured_stream_equals_eager():
    """Engine(graphs=True) replays one captured per-chunk forward; its frames equal the eager static stream's
    and the dynamic stream's: in fp32 (TF32 off) up to kernel rounding, under bf16 autocast within bf16's
    rounding of a 12-block stream (relative Frobenius error; the three paths use different attention kernels,
    so bf16 rounding differences compound over the blocks)."""
    from causal_rcm.kv_policy import KVPolicy
    from causal_rcm.stream.engine import Engine
    from causal_rcm.stream.sampling import FewStep

    torch.manual_seed(0)
    net = randomize_(WanDiT(TINY)).cuda().eval()
    ctx = torch.randn(2, 5, TINY.text_dim, device="cuda")
    how, policy = FewStep("c1-1", 2, 2), KVPolicy(3, 1)
    assert_streams_agree(lambda: [Engine(net, how, (TINY.in_dim, 6, 10), policy=policy, **kw)
                                  for kw in (dict(), dict(static=True), dict(graphs=True))], ctx, 12, [0, 1])


@requires_cuda
@pytest.mark.gpu
def test_realtime_videos_with_a_compiled_wan_vae_stop_compiling():
    """A compiled Wan VAE codec streamed by real-time videos of one engine reaches a state where a video
    compiles nothing (the warm-up ``stream_latency.py`` repeats until then): every later video runs compiled
    code only, and each video delivers all its frames."""
    import dataclasses

    from torch._dynamo.utils import counters

    from causal_rcm.models.vae import channels_last_
    from causal_rcm.stream.codec import WanVAECodec
    from causal_rcm.stream.engine import Engine, Noise
    from causal_rcm.stream.realtime import realtime_frames
    from causal_rcm.stream.sampling import FewStep
    from .test_codecs import tiny_wan_vae

    torch.manual_seed(0)
    net = randomize_(WanDiT(dataclasses.replace(TINY, in_dim=16, out_dim=16))).cuda().eval()
    codec = WanVAECodec(channels_last_(tiny_wan_vae().cuda()), compile=True)
    engine = Engine(net, FewStep("c3-3", 2, 2, context="noisy"), (16, 6, 10), codec, max_frames=6, graphs=True)
    ctx = torch.randn(1, 5, TINY.text_dim, device="cuda")
    videos, compiled = [], []
    with torch.no_grad():
        for seed in range(4):
            graphs = counters["stats"]["unique_graphs"]
            got = list(realtime_frames(engine, engine.start(ctx, None, Noise(seed, [0], "cuda")), 6))
            videos.append(sum(f.shape[1] for _, f, _ in got))
            compiled.append(counters["stats"]["unique_graphs"] - graphs)
    assert videos == [1 + 4 * 5] * 4  # every frame of 6 latent frames, each time
    assert compiled[0] > 0 and compiled[-2:] == [0, 0], compiled
