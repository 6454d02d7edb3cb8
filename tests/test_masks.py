"""Masks against a direct transcription of METHOD.md §2 (explicit block lists, no shared arithmetic)."""
import pytest
import torch

from causal_rcm.masks import ChunkPattern, block_causal, teacher_forcing


def blocks_by_hand(first, chunk, T):
    """Block of each frame, by walking the frames (METHOD.md §2: block 0 has `first` frames, later `chunk`)."""
    ids, b, left = [], 0, first
    for _ in range(T):
        if left == 0:
            b, left = b + 1, chunk
        ids.append(b)
        left -= 1
    return ids


def dense_by_hand(kind, first, chunk, T, N, window=None, sink=0):
    blk = blocks_by_hand(first, chunk, T)
    if kind == "bc":
        L = T * N
        m = torch.zeros(L, L, dtype=torch.bool)
        for i in range(L):
            for j in range(L):
                bq, bk = blk[i // N], blk[j // N]
                ok = bk <= bq and (window is None or bk > bq - window or bk < sink)
                m[i, j] = ok
        return m
    L = 2 * T * N
    m = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            qn, kn = i >= T * N, j >= T * N
            bq, bk = blk[(i % (T * N)) // N], blk[(j % (T * N)) // N]
            if not qn:
                m[i, j] = (not kn) and bk <= bq  # clean block i sees clean blocks <= i
            else:
                m[i, j] = ((not kn) and bk < bq) or (kn and bk == bq)  # clean < i, own noisy block
    return m


@pytest.mark.parametrize("first,chunk,T", [(1, 1, 4), (3, 3, 9), (1, 4, 9), (2, 3, 8)])
@pytest.mark.parametrize("N", [1, 3])
def test_block_causal_dense(first, chunk, T, N):
    p = ChunkPattern(first, chunk)
    assert torch.equal(block_causal(p).dense(N, T), dense_by_hand("bc", first, chunk, T, N))
    for window, sink in [(1, 0), (2, 1), (3, 2)]:
        got = block_causal(p, window=window, sink=sink).dense(N, T)
        assert torch.equal(got, dense_by_hand("bc", first, chunk, T, N, window, sink))


@pytest.mark.parametrize("first,chunk,T", [(1, 1, 4), (3, 3, 9), (1, 4, 9)])
@pytest.mark.parametrize("N", [1, 2])
def test_teacher_forcing_dense(first, chunk, T, N):
    m = teacher_forcing(ChunkPattern(first, chunk)).dense(N, T)
    assert m.shape == (2 * T * N, 2 * T * N)
    assert torch.equal(m, dense_by_hand("tf", first, chunk, T, N))


def test_pattern_parsing_and_errors():
    assert ChunkPattern.parse("c1-4") == ChunkPattern(1, 4)
    assert ChunkPattern(3, 3).name == "c3-3" and ChunkPattern(3, 3).num_blocks(21) == 7
    assert ChunkPattern(1, 4).blocks(9) == [(0, 1), (1, 5), (5, 9)]
    with pytest.raises(ValueError, match="c<first>-<chunk>"):
        ChunkPattern.parse("chunk3")
    with pytest.raises(ValueError, match="do not split"):
        block_causal("c3-3").dense(2, 7)
    with pytest.raises(ValueError, match="window"):
        block_causal("c1-1", window=0)
    with pytest.raises(ValueError, match="multiple of 2"):
        teacher_forcing("c1-1").video_frames(5)


def test_teacher_forcing_positions_restart():
    pos = teacher_forcing("c1-1").frame_positions(3)
    assert pos.tolist() == [0, 1, 2, 0, 1, 2]
    assert block_causal("c1-1").frame_positions(3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("mask,T,q_offset", [
    (teacher_forcing("c3-3"), 9, 0), (teacher_forcing("c1-1"), 4, 0), (teacher_forcing("c1-4"), 9, 0),
    (block_causal("c3-3"), 9, 0), (block_causal("c1-1", window=2, sink=1), 6, 0),
    (block_causal("c3-3"), 9, 7 * 5),  # queries start mid-frame behind a cached prefix
])
def test_split_attention_matches_fp64_reference(mask, T, q_offset):
    """The split backend (dense SDPA pieces, no mask) equals the masked softmax in fp64: outputs and the
    gradients of q, k and v, at a frame size (7 tokens) and head size (12) that are no block multiples."""
    from causal_rcm.kernels.attention import attention

    N, F = 7, mask.seq_frames(T)
    Lk = F * N
    Lq = Lk - q_offset
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, L, 12, generator=g, dtype=torch.float64, requires_grad=True)
               for L in (Lq, Lk, Lk))
    w = torch.randn(2, 3, Lq, 12, generator=g, dtype=torch.float64)
    dense = mask.dense(N, T)[q_offset:]
    s = (q @ k.transpose(-1, -2)) * 12 ** -0.5
    ref = s.masked_fill(~dense, float("-inf")).softmax(-1) @ v
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    out = attention(q, k, v, mask, N, q_offset=q_offset, backend="split")
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_split_attention_traces_without_graph_breaks():
    """Inside a compiled block the split plan is a constant: one graph, no break (a break per call would
    split every compiled block in pieces)."""
    import torch._dynamo as dynamo

    from causal_rcm.kernels.attention import attention

    mask, N, T = teacher_forcing("c3-3"), 5, 6
    q, k, v = (torch.randn(1, 2, mask.seq_frames(T) * N, 16) for _ in range(3))
    explained = dynamo.explain(lambda q, k, v: attention(2 * q, k, v, mask, N, backend="split") + 1)(q, k, v)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.skipif(not hasattr(torch._C, "_get_sdp_priority_order"), reason="this torch has no SDPA priority order")
def test_sdpa_order_puts_cudnn_first_and_restores_the_default():
    from torch.nn.attention import SDPBackend

    from causal_rcm.kernels.attention import use_sdpa_order

    default = list(torch._C._get_sdp_priority_order())
    use_sdpa_order("cudnn")
    try:
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.CUDNN_ATTENTION)
        use_sdpa_order("cudnn")  # choosing again stacks nothing
    finally:
        use_sdpa_order("default")
    assert list(torch._C._get_sdp_priority_order()) == default
    with pytest.raises(ValueError, match="'default' or 'cudnn'"):
        use_sdpa_order("flash")
