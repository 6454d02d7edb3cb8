"""Masked attention forward + JVP: the Triton kernel (compiled on a GPU, under the interpreter on a CPU)
and the PyTorch reference, both against ``torch.func.jvp`` of the reference in fp64 (METHOD.md §2, §4).

Shapes are tiny (d = 16, frames of 5–13 tokens, 16-row tiles) so that lengths are never tile multiples,
query tiles straddle frame and block boundaries, and the interpreter stays fast.
"""

import pytest
import torch

from causal_rcm.kernels import attention_jvp, attention_math, attention_ref
from causal_rcm.kernels.flash_attn_jvp import KernelConfig, Tiles, flash_attention_jvp
from causal_rcm.masks import block_causal, teacher_forcing

D = 16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative Frobenius error allowed per dtype (fp32: the interpreter's fp32 arithmetic; bf16/fp16: the
# rounding of inputs, of P and P⊙Ṡ before their matmuls, and of the outputs).
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def case(mask, N, T, *, q_offset=0, Lq=None, Lk=None, tangent_rows=0, tangent_keys=0):
    Lk = Lk if Lk is not None else (mask.copies if mask is not None else 1) * T * N
    Lq = Lq if Lq is not None else Lk - q_offset
    return dict(mask=mask, N=N, Lq=Lq, Lk=Lk, q_offset=q_offset, tangent_rows=tangent_rows, tangent_keys=tangent_keys)


CASES = {
    "dense": case(None, None, None, Lq=37, Lk=37),
    "cross_no_key_tangent": case(None, None, None, Lq=29, Lk=19, tangent_keys=19),
    "bc_c1-1": case(block_causal("c1-1"), 9, 4),
    "bc_c3-3": case(block_causal("c3-3"), 13, 6),
    "bc_c1-4": case(block_causal("c1-4"), 9, 5),
    "bc_c1-1_window_sink": case(block_causal("c1-1", window=2, sink=1), 9, 6),
    "bc_c3-3_window_sink": case(block_causal("c3-3", window=1, sink=1), 5, 9),
    "bc_c1-1_window_cached_prefix": case(block_causal("c1-1", window=2, sink=1), 9, 6, q_offset=36),
    "bc_c1-4_offset_mid_frame": case(block_causal("c1-4"), 9, 5, q_offset=13),
    "bc_c1-1_partial_tangents": case(block_causal("c1-1"), 9, 5, tangent_rows=15, tangent_keys=18),
    "tf_c1-1": case(teacher_forcing("c1-1"), 9, 4, tangent_rows=36, tangent_keys=36),
    "tf_c3-3": case(teacher_forcing("c3-3"), 13, 6, tangent_rows=78, tangent_keys=78),
    "tf_c1-4": case(teacher_forcing("c1-4"), 5, 5, tangent_rows=25, tangent_keys=25),
    "tf_c3-3_full_tangents": case(teacher_forcing("c3-3"), 7, 6),
}


def make_inputs(c, dtype=torch.float64, B=1, H=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rnd(L):
        return torch.randn(B, H, L, D, generator=g, dtype=torch.float64).to(dtype).to(device)

    return (rnd(c["Lq"]), rnd(c["Lk"]), rnd(c["Lk"]), rnd(c["Lq"] - c["tangent_rows"]),
            rnd(c["Lk"] - c["tangent_keys"]), rnd(c["Lk"] - c["tangent_keys"]))


def func_jvp_of_ref(c, q, k, v, tq, tk, tv):
    """(O, Ȯ) by forward-mode autodiff of the reference, in fp64, tangents zero-padded to full length."""
    q, k, v, tq, tk, tv = (x.cpu().double() for x in (q, k, v, tq, tk, tv))

    def pad(t, n):
        return torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[-1]), t], dim=-2)

    o, to = torch.func.jvp(lambda q, k, v: attention_math(q, k, v, c["mask"], c["N"], None, c["q_offset"]),
                           (q, k, v), (pad(tq, c["tangent_rows"]), pad(tk, c["tangent_keys"]),
                                       pad(tv, c["tangent_keys"])))
    return o, to[..., c["tangent_rows"]:, :]


def rel(a, b):
    b = b.cpu().double()
    return ((a.cpu().double() - b).norm() / b.norm()).item()


def kw(c):
    return dict(q_offset=c["q_offset"], tangent_rows=c["tangent_rows"], tangent_keys=c["tangent_keys"])


@pytest.mark.parametrize("name", list(CASES))
def test_reference_tangent_is_func_jvp(name):
    c = CASES[name]
    x = make_inputs(c)
    o, to = attention_ref(*x, c["mask"], c["N"], **kw(c))
    o_ad, to_ad = func_jvp_of_ref(c, *x)
    assert to.shape == (1, 2, c["Lq"] - c["tangent_rows"], D)
    assert rel(o, o_ad) < 1e-12 and rel(to, to_ad) < 1e-12


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_fp32(name):
    c = CASES[name]
    x = make_inputs(c, torch.float32, device=DEVICE)
    o, to = attention_jvp(*x, c["mask"], c["N"], **kw(c), backend="triton")
    o_ad, to_ad = func_jvp_of_ref(c, *x)
    assert o.dtype == torch.float32 and to.shape == to_ad.shape
    assert rel(o, o_ad) < TOL[torch.float32] and rel(to, to_ad) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["tf_c3-3", "bc_c1-1_window_cached_prefix", "cross_no_key_tangent"])
def test_kernel_half_precision(name, dtype):
    c = CASES[name]
    x = make_inputs(c, dtype, seed=1, device=DEVICE)
    o, to = attention_jvp(*x, c["mask"], c["N"], **kw(c), backend="triton")
    o_ad, to_ad = func_jvp_of_ref(c, *x)
    assert o.dtype == dtype and to.dtype == dtype
    assert rel(o, o_ad) < TOL[dtype] and rel(to, to_ad) < TOL[dtype]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["tf_c1-1", "bc_c3-3_window_sink", "bc_c1-1_partial_tangents"])
def test_kernel_other_tiles(name, fused):
    """Query and key tiles of different sizes, one launch or two, and a padded head_dim (12 -> 16)."""
    c = CASES[name]
    x = make_inputs(c, torch.float32, seed=2, device=DEVICE)
    q, k, v, tq, tk, tv = (t[..., :12].contiguous() for t in x)
    cfg = KernelConfig(Tiles(32, 16, 1, 1), Tiles(32, 32, 1, 1), fused) if fused else \
        KernelConfig(Tiles(16, 32, 1, 1), Tiles(32, 16, 1, 1), fused)
    o, to = flash_attention_jvp(q, k, v, tq, tk, tv, c["mask"], c["N"], 0.3, **kw(c), config=cfg)
    o_ad, to_ad = torch.func.jvp(lambda q, k, v: attention_math(q, k, v, c["mask"], c["N"], 0.3, c["q_offset"]),
                                 *_padded(c, q, k, v, tq, tk, tv))
    assert rel(o, o_ad) < 1e-5 and rel(to, to_ad[..., c["tangent_rows"]:, :]) < 1e-5


def _padded(c, q, k, v, tq, tk, tv):
    def pad(t, n):
        return torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[-1]), t], dim=-2).cpu().double()

    return ((q.cpu().double(), k.cpu().double(), v.cpu().double()),
            (pad(tq, c["tangent_rows"]), pad(tk, c["tangent_keys"]), pad(tv, c["tangent_keys"])))


@pytest.mark.parametrize("name", ["window", "teacher_forcing"])
def test_never_visible_keys_are_never_read(name):
    """NaN in every key (and key tangent) that no query row may see leaves the outputs finite and right."""
    if name == "window":  # the last two frames after a cache: frames 1..3 are outside window and sink
        c = case(block_causal("c1-1", window=2, sink=1), 9, 6, q_offset=36)
        f = torch.arange(c["Lk"]) // 9
        hidden = (f >= 1) & (f < 3)
    else:  # the noisy rows of block 2 of c1-1: they see clean frames 0, 1 and noisy frame 2 only
        c = case(teacher_forcing("c1-1"), 9, 4, q_offset=54, Lq=9, tangent_keys=36)
        f = torch.arange(c["Lk"]) // 9
        hidden = ~((f < 2) | (f == 6))
    q, k, v, tq, tk, tv = make_inputs(c, torch.float32, seed=3, device=DEVICE)
    hidden = hidden.to(DEVICE)
    o_ad, to_ad = func_jvp_of_ref(c, q, k, v, tq, tk, tv)
    nan = float("nan")
    k, v = k.masked_fill(hidden[:, None], nan), v.masked_fill(hidden[:, None], nan)
    hidden_t = hidden[c["tangent_keys"]:, None]
    tk, tv = tk.masked_fill(hidden_t, nan), tv.masked_fill(hidden_t, nan)
    o, to = attention_jvp(q, k, v, tq, tk, tv, c["mask"], c["N"], **kw(c), backend="triton")
    assert torch.isfinite(o).all() and torch.isfinite(to).all()
    assert rel(o, o_ad) < 1e-5 and rel(to, to_ad) < 1e-5


def test_structure_is_validated():
    tf = teacher_forcing("c1-1")
    N, T = 5, 4
    c = case(tf, N, T, tangent_rows=T * N + N, tangent_keys=T * N)  # noisy frame 0: no tangent, sees itself
    x = make_inputs(c, torch.float32, device=DEVICE)
    for backend in ("ref", "triton"):
        with pytest.raises(ValueError, match="tangent_rows"):
            attention_jvp(*x, tf, N, **kw(c), backend=backend)
    dense = case(None, None, None, Lq=8, Lk=8, tangent_rows=2, tangent_keys=4)
    with pytest.raises(ValueError, match="dense"):
        attention_jvp(*make_inputs(dense), None, None, **kw(dense))
    q, k, v, tq, tk, tv = make_inputs(CASES["tf_c1-1"])
    with pytest.raises(ValueError, match="tq must have shape"):
        attention_jvp(q, k, v, q, tk, tv, tf, 9, tangent_rows=36, tangent_keys=36)
    with pytest.raises(ValueError, match="whole frames"):
        attention_jvp(q, k[..., :-1, :], v[..., :-1, :], tq, tk, tv, tf, 9, tangent_rows=36, tangent_keys=36)


def test_default_backend_on_cpu_is_the_reference():
    c = CASES["tf_c1-1"]
    x = make_inputs(c, torch.float32)
    o, to = attention_jvp(*x, c["mask"], c["N"], **kw(c))
    o_ref, to_ref = attention_ref(*x, c["mask"], c["N"], **kw(c))
    assert torch.equal(o, o_ref) and torch.equal(to, to_ref)
    with pytest.raises(ValueError, match="backend"):
        attention_jvp(*x, c["mask"], c["N"], **kw(c), backend="flash")


def test_reference_chunks_query_rows(monkeypatch):
    """The chunked reference equals one dense pass (chunking only bounds its memory)."""
    from causal_rcm.kernels import reference as ref
    c = CASES["tf_c3-3"]
    x = make_inputs(c)
    whole = attention_ref(*x, c["mask"], c["N"], **kw(c))
    monkeypatch.setattr(ref, "REF_CHUNK_ELEMENTS", 2 * c["Lk"] * 7)  # 7 rows per chunk
    chunked = attention_ref(*x, c["mask"], c["N"], **kw(c))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-13) for a, b in zip(whole, chunked))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["tf_c3-3", "bc_c1-1_window_cached_prefix", "cross_no_key_tangent", "dense"])
def test_kernel_gpu_default_tiles(name):
    """The H100 tile table on small shapes (multi-tile rows come from a larger frame size)."""
    c = dict(CASES[name])
    if c["mask"] is not None:
        scale = 160 // c["N"] + 1
        c = case(c["mask"], c["N"] * scale, c["Lk"] // c["N"] // c["mask"].copies,
                 q_offset=c["q_offset"] * scale, tangent_rows=c["tangent_rows"] * scale,
                 tangent_keys=c["tangent_keys"] * scale)
    g = torch.Generator().manual_seed(4)
    x = [torch.randn(1, 3, n, 128, generator=g).cuda().bfloat16()
         for n in (c["Lq"], c["Lk"], c["Lk"], c["Lq"] - c["tangent_rows"], c["Lk"] - c["tangent_keys"],
                   c["Lk"] - c["tangent_keys"])]
    o, to = attention_jvp(*x, c["mask"], c["N"], **kw(c))
    o_ref, to_ref = attention_ref(*(t.double() for t in x), c["mask"], c["N"], **kw(c))
    assert rel(o, o_ref) < 1e-2 and rel(to, to_ref) < 2e-2
