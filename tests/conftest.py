"""Shared test set-up: one tiny model configuration, GPU skipping, Triton's interpreter on CPU machines."""
import os

import torch

# Triton kernels run under the interpreter wherever no GPU is present; this must be set before any
# module that defines a Triton kernel is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from causal_rcm.config import preset  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# The tiny configuration every model test uses: 2 heads of 12 channels (RoPE split 4/4/4), 2 layers.
TINY = preset("tiny")


def randomize_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (Wan zero-initialises the head, which would make outputs trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model


@pytest.fixture
def tiny_model():
    from causal_rcm.models import WanDiT

    torch.manual_seed(0)
    return randomize_(WanDiT(TINY)).eval()
