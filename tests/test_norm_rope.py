"""The fused RMSNorm + RoPE kernel (Triton; the interpreter on CPU) against the PyTorch composition."""
import pytest
import torch

from causal_rcm.models.layers import RMSNorm, apply_rope, rope_freqs, rope_tables

triton = pytest.importorskip("triton")


@pytest.mark.parametrize("heads,head_dim,frames,hw", [(2, 12, 3, (2, 5)), (3, 16, 2, (3, 3))])
def test_fused_matches_composition(heads, head_dim, frames, hw):
    from causal_rcm.kernels.norm_rope import rmsnorm_rope

    D = heads * head_dim
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, frames * hw[0] * hw[1], D, generator=g).to(dev)
    norm = RMSNorm(D, 1e-6).to(dev)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(D, generator=g) + 0.5)
    cos, sin = rope_tables(rope_freqs(head_dim), torch.arange(frames) + 4, *hw, dev)
    ref = apply_rope(norm(u).unflatten(-1, (heads, head_dim)), cos, sin).flatten(-2)
    out = rmsnorm_rope(u, norm.weight, cos, sin, head_dim, 1e-6)
    assert (out - ref).abs().max() < 1e-5
