"""WanDiT against diffusers' WanTransformer3DModel (external reference), weight loading and presets."""
import pytest
import torch

from causal_rcm.config import WanConfig, apply_overrides, preset
from causal_rcm.models import WanDiT
from causal_rcm.models.loading import to_wan_names

from .conftest import TINY, randomize_

diffusers = pytest.importorskip("diffusers")


def diffusers_model(cfg: WanConfig, seed=0):
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=64)
    return randomize_(ref, seed=seed).eval()


def run_ref(ref, x, t, context):
    """diffusers takes 1000·t; per-frame times go in as per-token times (its Wan2.2 path)."""
    if t.ndim == 2:
        pt, ph, pw = ref.config.patch_size
        tokens = (x.shape[3] // ph) * (x.shape[4] // pw)
        t = t.repeat_interleave(tokens, dim=1)
    return ref(x, 1000 * t, context, return_dict=False)[0]


CASES = [  # (config changes, batch, frames, height, width, per-frame times)
    ({}, 2, 5, 6, 10, False),
    ({}, 1, 3, 10, 6, True),
    (dict(num_heads=3, dim=36, patch_size=(1, 2, 2)), 3, 4, 4, 14, False),
    (dict(patch_size=(2, 2, 2), num_layers=3), 2, 6, 6, 6, True),
]


@pytest.mark.parametrize("changes,B,Fr,H,W,per_frame", CASES)
def test_parity_with_diffusers(changes, B, Fr, H, W, per_frame):
    cfg = WanConfig.from_dict({**TINY.to_dict(), **changes})
    ref = diffusers_model(cfg)
    ours = WanDiT.from_state_dict(ref).eval()
    assert ours.cfg == cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, cfg.in_dim, Fr, H, W, generator=g)
    t = torch.rand(B, Fr // cfg.patch_size[0], generator=g) if per_frame else torch.rand(B, generator=g)
    context = torch.randn(B, 7, cfg.text_dim, generator=g)
    with torch.no_grad():
        out, expected = ours(x, t, context), run_ref(ref, x, t, context)
    assert out.shape == expected.shape == (B, cfg.out_dim, Fr, H, W)
    assert (out - expected).abs().max() <= 1e-5


def test_official_layout_loads_to_same_model():
    ref = diffusers_model(TINY)
    official = to_wan_names(ref.state_dict())
    assert "blocks.0.self_attn.q.weight" in official and "head.head.weight" in official
    assert "blocks.1.norm3.weight" in official and "blocks.0.ffn.0.weight" in official
    prefixed = {"model." + k: v for k, v in official.items()}
    a = WanDiT.from_state_dict(ref).eval()
    b = WanDiT.from_state_dict(prefixed, num_heads=TINY.num_heads).eval()
    x, t, c = torch.randn(2, 4, 3, 6, 6), torch.rand(2), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(a(x, t, c), b(x, t, c))


def test_loading_files(tmp_path):
    from safetensors.torch import save_file

    ref = diffusers_model(TINY)
    official = {k: v.contiguous() for k, v in to_wan_names(ref.state_dict()).items()}
    save_file({"net." + k: v for k, v in official.items()}, tmp_path / "w.safetensors")
    torch.save({"generator": official}, tmp_path / "w.pth")
    ref.save_pretrained(tmp_path / "diffusers")
    x, t, c = torch.randn(1, 4, 2, 4, 4), torch.rand(1), torch.randn(1, 3, 16)
    outs = []
    for src in [tmp_path / "w.safetensors", tmp_path / "w.pth", tmp_path / "diffusers"]:
        m = WanDiT.from_state_dict(src, num_heads=None if src.name == "diffusers" else 2).eval()
        with torch.no_grad():
            outs.append(m(x, t, c))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_bad_state_dicts_name_the_keys():
    sd = WanDiT(TINY).state_dict()
    sd.pop("blocks.1.ffn.2.bias")
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys.*blocks\.1\.ffn\.2\.bias.*unknown keys.*blocks\.0\.extra"):
        WanDiT.from_state_dict(sd, num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        WanDiT.from_state_dict(WanDiT(TINY).state_dict())
    with pytest.raises(KeyError, match="not a Wan2.1"):
        WanDiT.from_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        WanDiT.from_state_dict("/nonexistent/model.safetensors")


def test_wan_1_3b_parameter_count_matches_diffusers():
    cfg = preset("wan2.1-1.3b")
    with torch.device("meta"):
        ref = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)
        ours = WanDiT(cfg)
    n_ref = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_ref == cfg.num_params()
    assert 1.2e9 < n_ref < 1.5e9
    with torch.device("meta"):
        assert sum(p.numel() for p in WanDiT(preset("wan2.1-14b")).parameters()) == preset("wan2.1-14b").num_params()


@pytest.mark.slow
def test_wan_1_3b_loads_official_names_with_random_tensors():
    """A state dict with the official key names and shapes (random bf16 tensors) loads into the preset."""
    cfg = preset("wan2.1-1.3b")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    assert "blocks.29.cross_attn.norm_k.weight" in shapes and shapes["head.head.weight"] == (64, 1536)
    g = torch.Generator().manual_seed(0)
    sd = {"model." + k: torch.empty(s, dtype=torch.bfloat16).normal_(generator=g) for k, s in shapes.items()}
    model = WanDiT.from_state_dict(sd)
    assert model.cfg == cfg
    got = model.state_dict()
    for k in ["blocks.17.self_attn.q.weight", "head.modulation", "patch_embedding.weight"]:
        assert torch.equal(got[k], sd["model." + k])


def test_presets_and_overrides():
    assert preset("tiny").dim == 24
    blob = preset("blob-s")
    assert 2e6 < blob.num_params() < 6e6
    cfg = apply_overrides(blob, ["num_layers=4", "patch_size=(1,2,2)", "qk_norm=false"])
    assert (cfg.num_layers, cfg.patch_size, cfg.qk_norm) == (4, (1, 2, 2), False)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("wan3")
    with pytest.raises(ValueError, match="unknown config key 'layers'"):
        apply_overrides(blob, ["layers=3"])
    with pytest.raises(ValueError, match="cannot parse"):
        apply_overrides(blob, ["dim=big"])


def test_bf16_forward_close_to_fp32(tiny_model):
    x, t, c = torch.randn(2, 4, 3, 6, 6), torch.rand(2), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = tiny_model(x, t, c)
        low = tiny_model.to(torch.bfloat16)(x.bfloat16(), t, c.bfloat16()).float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 3e-2


def test_time_scale_is_the_timestep_input_scale():
    """time_scale·t is the timestep input (Wan: 1000): the same weights at time_scale s and time t equal the
    Wan-scaled model at s·t/1000, and ∂v/∂t scales with s (what sCM's tangent t·∂v/∂t sees)."""
    torch.manual_seed(0)
    wan = randomize_(WanDiT(TINY), seed=0).eval()
    small = WanDiT(WanConfig.from_dict({**TINY.to_dict(), "time_scale": 10.0})).eval()
    small.load_state_dict(wan.state_dict())
    x, t, c = torch.randn(2, 4, 3, 6, 6), torch.rand(2), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.allclose(small(x, t, c), wan(x, t * 10 / 1000, c), atol=1e-5)
        zero = torch.zeros_like(x)
        _, dv_small = small.forward_jvp(x, t, c, zero, torch.ones(2))
        _, dv_wan = wan.forward_jvp(x, t * 10 / 1000, c, zero, torch.ones(2))
    assert torch.allclose(dv_small, dv_wan * 10 / 1000, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="time_scale"):
        WanConfig(time_scale=0.0)
