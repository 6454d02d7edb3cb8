"""The analytic FLOP count (models/flops.py) against PyTorch's FLOP counter on the tiny DiT: forward,
forward + backward, and the prompt's k, v once per call."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from causal_rcm.masks import ChunkPattern, teacher_forcing
from causal_rcm.models import WanDiT
from causal_rcm.models.flops import FlopCounter, attention_pairs

from .conftest import TINY, randomize_


def measured(fn) -> int:
    with FlopCounterMode(display=False) as m:
        fn()
    return m.get_total_flops()


def test_bidirectional_forward_and_backward_match_pytorchs_count():
    torch.manual_seed(0)
    net = randomize_(WanDiT(TINY))
    x, t, ctx = torch.randn(2, 4, 3, 6, 8), torch.rand(2), torch.randn(2, 5, TINY.text_dim)
    with FlopCounter(net) as c, torch.no_grad():
        want = measured(lambda: net(x, t, ctx, attn_backend="math"))  # attention as matmuls
    assert c.total == want
    with FlopCounter(net) as c:
        want = measured(lambda: net(x, t, ctx, attn_backend="math").sum().backward())
    assert c.total == want  # backward = 2 × forward for every matmul


def test_masked_pairs_count_the_visible_keys_only():
    mask = teacher_forcing(ChunkPattern.parse("c1-2"))
    (all_pairs,) = attention_pairs(mask, 10, 3)
    assert all_pairs == int(mask.dense(3, 5).sum())
    _, with_query, both = attention_pairs(mask, 10, 3, tangent_from=5)
    dense = mask.dense(3, 5)
    assert with_query == int(dense[15:].sum()) and both == int(dense[15:, 15:].sum())
