"""umT5 text encoder: both weight layouts, Wan's context convention (zeros past each prompt), clear errors.

Everything is built offline: a tiny unigram tokenizer trained on a few sentences and a tiny random
UMT5EncoderModel (one configuration, ``TINY``), saved in the HF layout and rewritten in Wan's official one.
"""
import math
import sys
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from causal_rcm.models.text import (UMT5Config, UMT5TextEncoder, clean_prompt, hf_to_official,  # noqa: E402
                                    official_to_hf)

SENTENCES = ["a red ball rolls across the floor", "two blue cubes bounce on a table",
             "the camera pans over a green field at dusk", "a cat walks slowly through tall grass",
             "waves crash on the rocky shore under a grey sky", "Ein Hund läuft im Park", "一只猫在草地上"]
PROMPTS = ["a red ball rolls across the floor", "", "the cat walks", "waves crash on the rocky shore at dusk"]
MAX_LEN = 48
# 2 blocks, 4 heads of 8, 8 relative buckets (so distances >= 2 already use the log buckets)
TINY = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)


def train_tokenizer():
    """A tiny unigram tokenizer (``tokenizers``), special ids as umT5's: <pad>=0, </s>=1, <unk>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tk.train_from_iterator(SENTENCES * 3, trainer=trainer)
    return tk


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A T5 tokenizer folder (tokenizer.json + tokenizer_config.json) that appends </s> like umT5's."""
    from tokenizers import processors

    tk = train_tokenizer()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path_factory.mktemp("tok")
    transformers.T5Tokenizer(tokenizer_object=tk, extra_ids=0).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def ref():
    """The tiny random encoder (norm weights perturbed too, so swapped names could not go unnoticed)."""
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory, ref):
    """The same weights as an HF folder and as Wan's official .pth."""
    root = tmp_path_factory.mktemp("w")
    ref.save_pretrained(str(root / "hf"))
    torch.save(hf_to_official(ref.state_dict()), root / "models_t5_umt5-xxl-enc-bf16.pth")
    return root


def encoder(weights_path, tok_dir, **kw) -> UMT5TextEncoder:
    return UMT5TextEncoder(UMT5Config(path=str(weights_path), tokenizer=tok_dir, max_len=MAX_LEN,
                                      **{"dtype": "fp32", "clean": "whitespace", **kw}))


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hf_layout_loads_the_same_model(weights, tok_dir, ref):
    enc = encoder(weights / "hf", tok_dir)
    assert same_state(enc.model, ref) and enc.text_dim == TINY["d_model"]
    assert enc.model.shared.weight is enc.model.encoder.embed_tokens.weight
    ids, mask = enc.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(enc.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                           ref(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_official_layout_loads_an_identical_encoder(weights, tok_dir):
    hf = encoder(weights / "hf", tok_dir)
    official = encoder(weights / "models_t5_umt5-xxl-enc-bf16.pth", tok_dir)
    assert same_state(official.model, hf.model)
    assert torch.equal(official.encode(PROMPTS), hf.encode(PROMPTS))


def test_mapping_round_trip_names(ref):
    sd = {k: v for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    official = hf_to_official(ref.state_dict())
    assert "token_embedding.weight" in official and "blocks.1.ffn.gate.0.weight" in official
    assert official_to_hf(official).keys() == sd.keys()


def wan_t5_reference(sd: dict, ids: torch.Tensor, heads: int, buckets: int, max_dist: int = 128):
    """umT5 encoder written from the equations of Wan's T5 on its official names, for one unpadded prompt
    [L]: x += o(softmax(q k^T + bias_l)) v) of rms(x); x += fc2(fc1(y) * gelu_tanh(gate(y))) of y = rms(x)."""
    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    L = ids.shape[0]
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key - query
    half = buckets // 2
    exact = half // 2
    large = exact + (torch.log(rel.abs().clamp(min=1).float() / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), large.clamp(max=half - 1))
    x = sd["token_embedding.weight"][ids]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n_blocks):
        p = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        y = rms(x, p["norm1.weight"])
        q, k, v = (torch.nn.functional.linear(y, p[f"attn.{n}.weight"]).view(L, heads, -1).transpose(0, 1)
                   for n in "qkv")
        bias = p["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)  # [heads, L, L]
        a = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1) @ v  # T5 does not scale by 1/sqrt(d)
        x = x + torch.nn.functional.linear(a.transpose(0, 1).reshape(L, -1), p["attn.o.weight"])
        y = rms(x, p["norm2.weight"])
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(y, p["ffn.gate.0.weight"]), approximate="tanh")
        x = x + torch.nn.functional.linear(torch.nn.functional.linear(y, p["ffn.fc1.weight"]) * gate,
                                           p["ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def test_encoder_matches_wans_t5_equations(weights, tok_dir):
    enc = encoder(weights / "models_t5_umt5-xxl-enc-bf16.pth", tok_dir)
    sd = torch.load(weights / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    ids, mask = enc.tokenize(PROMPTS)
    ctx = enc.encode(PROMPTS)
    for b, n in enumerate(mask.sum(1).tolist()):
        want = wan_t5_reference(sd, ids[b, :n], TINY["num_heads"], TINY["relative_attention_num_buckets"])
        torch.testing.assert_close(ctx[b, :n], want, rtol=1e-5, atol=1e-5)


def test_padding_is_zero_and_prompts_match_unpadded_calls(weights, tok_dir, ref):
    enc = encoder(weights / "hf", tok_dir)
    ids, mask = enc.tokenize(PROMPTS)
    ctx = enc.encode(PROMPTS)
    assert ctx.shape == (len(PROMPTS), MAX_LEN, TINY["d_model"]) and ctx.dtype == torch.float32
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) > 2  # the batch really mixes lengths
    for b, n in enumerate(lengths):
        assert torch.all(mask[b, :n] == 1) and torch.all(mask[b, n:] == 0)
        assert torch.all(ctx[b, n:] == 0) and torch.all(ctx[b, :n].abs().sum(-1) > 0)
        with torch.no_grad():
            alone = ref(input_ids=ids[b:b + 1, :n]).last_hidden_state[0]  # no padding, no mask
        torch.testing.assert_close(ctx[b, :n], alone, rtol=1e-5, atol=1e-5)


def test_empty_prompt_is_eos_then_zeros(weights, tok_dir):
    enc = encoder(weights / "hf", tok_dir)
    ids, mask = enc.tokenize([""])
    eos, pad = enc.tokenizer.eos_token_id, enc.tokenizer.pad_token_id
    assert mask.sum().item() == 1 and ids[0, 0].item() == eos and torch.all(ids[0, 1:] == pad)
    uncond = enc.encode([""])
    assert uncond[0, 0].abs().sum() > 0 and torch.all(uncond[0, 1:] == 0)
    torch.testing.assert_close(enc.encode([PROMPTS[0], ""])[1], uncond[0], rtol=1e-6, atol=1e-6)


def test_long_prompts_are_truncated_keeping_eos(weights, tok_dir):
    enc = encoder(weights / "hf", tok_dir)
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = enc.tokenize([" ".join(SENTENCES)])
    assert mask.sum().item() == MAX_LEN and ids[0, -1].item() == enc.tokenizer.eos_token_id


def test_bf16_on_meta_free_load(weights, tok_dir):
    enc = encoder(weights / "models_t5_umt5-xxl-enc-bf16.pth", tok_dir, dtype="bf16")
    params = list(enc.model.parameters())
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" and not p.requires_grad for p in params)
    ctx = enc.encode(PROMPTS)
    assert ctx.dtype == torch.bfloat16 and torch.isfinite(ctx).all()
    enc.train()
    assert not enc.training and not enc.model.training


def test_full_checkpoint_and_single_file(tmp_path, tok_dir, ref):
    """A safetensors file with only ``shared.weight`` (tied embedding) beside a foreign config.json, and a
    full UMT5 checkpoint whose decoder and LM head are dropped."""
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, str(tmp_path / "enc.safetensors"))
    # another model's config.json beside the file (a diffusers DiT's, say) is not read as umT5's
    (tmp_path / "config.json").write_text('{"_class_name": "WanTransformer3DModel", "num_layers": 30}')
    assert same_state(encoder(tmp_path / "enc.safetensors", tok_dir).model, ref)
    full = transformers.UMT5ForConditionalGeneration(transformers.UMT5Config(**TINY))
    (tmp_path / "full").mkdir()
    save_file({k: v.clone().contiguous() for k, v in full.state_dict().items()},
              str(tmp_path / "full" / "model.safetensors"))
    enc = encoder(tmp_path / "full", tok_dir)
    assert enc.model.state_dict().keys() == ref.state_dict().keys()
    assert torch.equal(enc.model.encoder.block[1].layer[1].DenseReluDense.wo.weight,
                       full.encoder.block[1].layer[1].DenseReluDense.wo.weight)


def test_clear_errors(tmp_path, weights, tok_dir, ref):
    with pytest.raises(FileNotFoundError, match="no umT5 weights"):
        encoder(tmp_path / "nowhere.pth", tok_dir)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        encoder(weights / "hf", str(tmp_path / "no_tokenizer"))
    torch.save({"patch_embedding.weight": torch.zeros(2)}, tmp_path / "dit.pth")
    with pytest.raises(KeyError, match="neither"):
        encoder(tmp_path / "dit.pth", tok_dir)
    official = hf_to_official(ref.state_dict())
    del official["blocks.1.ffn.fc1.weight"]
    official["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "broken.pth")
    with pytest.raises(KeyError, match=r"blocks\.0\.extra\.weight"):
        encoder(tmp_path / "broken.pth", tok_dir)
    del official["blocks.0.extra.weight"]
    torch.save(official, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match=r"missing \['encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight'\]"):
        encoder(tmp_path / "missing.pth", tok_dir)
    no_eos = tmp_path / "no_eos"
    no_eos.mkdir()
    train_tokenizer().save(str(no_eos / "tokenizer.json"))
    (no_eos / "tokenizer_config.json").write_text('{"eos_token": "</s>", "pad_token": "<pad>"}')
    with pytest.raises(ValueError, match="does not end prompts"):
        encoder(weights / "hf", str(no_eos))
    with pytest.raises(ValueError, match="fp16"):
        encoder(weights / "hf", tok_dir, dtype="fp16")
    small = transformers.UMT5EncoderModel(transformers.UMT5Config(**{**TINY, "vocab_size": 16}))
    small.save_pretrained(str(tmp_path / "small"))
    with pytest.raises(ValueError, match="wrong tokenizer"):
        encoder(tmp_path / "small", tok_dir)
    bad = (weights / "hf" / "config.json").read_text().replace('"d_ff": 48', '"d_ff": 64')
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text(bad)
    (tmp_path / "badcfg" / "model.safetensors").write_bytes((weights / "hf" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="d_ff"):
        encoder(tmp_path / "badcfg", tok_dir)


def test_prompt_cleaning(monkeypatch):
    assert clean_prompt("  a\n red\t\tball &amp;amp; cube  ", "whitespace") == "a red ball & cube"
    assert clean_prompt("  a  b ", "none") == "  a  b "
    monkeypatch.setitem(sys.modules, "ftfy", None)  # ftfy not installed
    with pytest.raises(ImportError, match="pip install ftfy"):
        clean_prompt("a", "wan")
    with pytest.raises(ImportError, match="ftfy"):  # at construction, before any weights are read
        UMT5TextEncoder(UMT5Config(path="/nowhere.pth", tokenizer="/nowhere"))
    monkeypatch.setitem(sys.modules, "ftfy", types.SimpleNamespace(fix_text=lambda s: s.replace("，", ",")))
    assert clean_prompt(" 静态，细节 ", "wan") == "静态,细节"


def test_config_round_trip():
    cfg = UMT5Config(path="/w/models_t5_umt5-xxl-enc-bf16.pth", tokenizer="/w/google/umt5-xxl", max_len=256)
    assert UMT5Config.from_dict(cfg.to_dict()) == cfg
    assert UMT5Config().max_len == 512 and UMT5Config().dtype == "bf16" and UMT5Config().clean == "wan"


def test_xxl_shapes_give_wans_umt5_xxl():
    """Wan's umt5_xxl (vocab 256384, dim 4096, ffn 10240, 64 heads, 24 blocks, 32 buckets per block) maps
    onto UMT5EncoderModel; built on the meta device, so nothing is allocated."""
    from causal_rcm.models.text.umt5 import build_encoder, hf_config

    def meta(*shape):
        return torch.empty(shape, device="meta", dtype=torch.bfloat16)

    official = {"token_embedding.weight": meta(256384, 4096), "norm.weight": meta(4096)}
    for i in range(24):
        official.update({f"blocks.{i}.norm1.weight": meta(4096), f"blocks.{i}.norm2.weight": meta(4096),
                         f"blocks.{i}.pos_embedding.embedding.weight": meta(32, 64),
                         f"blocks.{i}.ffn.gate.0.weight": meta(10240, 4096),
                         f"blocks.{i}.ffn.fc1.weight": meta(10240, 4096),
                         f"blocks.{i}.ffn.fc2.weight": meta(4096, 10240),
                         **{f"blocks.{i}.attn.{n}.weight": meta(4096, 4096) for n in "qkvo"}})
    cfg = hf_config(official_to_hf(official))
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == \
        (256384, 4096, 10240, 64, 64, 24)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new" and cfg.layer_norm_epsilon == 1e-6
    model = build_encoder(official_to_hf(official), cfg, torch.bfloat16, device="meta")
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in official.values())  # 5.68e9


def test_wan_cleaning_with_ftfy():
    """With ftfy installed, "wan" cleaning changes what Wan's does: full-width commas of its default
    negative prompt, curly quotes and ligatures become ASCII before tokenization."""
    pytest.importorskip("ftfy")
    assert clean_prompt("色调艳丽，过曝，静态") == "色调艳丽,过曝,静态"
    assert clean_prompt(" “a”  ﬁne &amp;amp; day ") == '"a" fine & day'
