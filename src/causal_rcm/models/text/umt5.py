"""The Wan2.1 text encoder: the umT5-XXL encoder, run through ``transformers.UMT5EncoderModel``.

Wan2.1 conditions its DiT on a [512, 4096] context per prompt, made like this (``encode`` does the same):

1. clean the prompt: fix broken Unicode with ``ftfy``, unescape HTML twice, collapse runs of whitespace into
   one space and strip the ends (no lowercasing, no punctuation removal);
2. tokenize with the umT5 tokenizer, special tokens on (so ``</s>`` ends every prompt; "" is just ``</s>``,
   one token), truncated and padded to 512;
3. run the encoder with the attention mask and keep the first ``length`` outputs of each prompt
   (``length`` = the mask's sum, ``</s>`` included); the DiT pads them with zeros back to 512.

So the unconditional context of CFG (the empty prompt) is one non-zero row (the encoded ``</s>``) followed
by 511 zero rows. The DiT attends over all 512 rows, zeros included, so the zero padding is part of the
conditioning and ``max_len`` should stay 512 for a pretrained Wan DiT.

Weights come only from paths the user gives, in either of two layouts, told apart by their names:

- Wan's official ``models_t5_umt5-xxl-enc-bf16.pth`` (names of Wan's own T5 module, mapped by ``RENAMES``);
- Hugging Face ``UMT5EncoderModel`` names (a ``.safetensors`` file or a folder of them, such as the
  ``text_encoder/`` folder of a diffusers Wan2.1 repository); decoder and LM-head tensors of a full
  ``UMT5ForConditionalGeneration`` checkpoint are dropped.

The encoder's shape is read from the tensors; a umt5 ``config.json`` beside HF weights adds the constants
shapes cannot show (norm epsilon, maximum relative distance). The model is built on the meta device and the loaded
tensors are assigned to it, so no float32 copy of the 5.7B parameters (11.4 GB in bf16) is ever made.
"""
from __future__ import annotations

import html
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..conditioning import TextEncoder

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CLEAN_MODES = ("wan", "whitespace", "none")

# Wan's official encoder names -> Hugging Face UMT5EncoderModel names; "{i}" is the block index. Wan's
# feed-forward is fc2(fc1(x) * gelu(gate(x))), HF's is wo(gelu(wi_0(x)) * wi_1(x)): gate is wi_0, fc1 is wi_1.
# umT5 has its own relative-position bias in every block (Wan: shared_pos=False).
RENAMES: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    ("blocks.{i}.pos_embedding.embedding.weight",
     "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)
EMBED, TIED_EMBED = "shared.weight", "encoder.embed_tokens.weight"  # HF ties the encoder's embedding to shared


@dataclass(frozen=True)
class UMT5Config:
    """Where the umT5 encoder and its tokenizer live, and how prompts are turned into context.

    path: Wan's ``models_t5_umt5-xxl-enc-bf16.pth``, or HF ``UMT5EncoderModel`` weights (a ``.safetensors``
      file or a folder of them). tokenizer: a HF tokenizer folder of google/umt5-xxl (Wan ships it as
      ``google/umt5-xxl/``). max_len: context length Lc (Wan: 512). dtype: "bf16" (Wan) or "fp32".
    clean: "wan" (ftfy + HTML unescape + whitespace, as Wan; needs ``ftfy``), "whitespace" (the same
      without ftfy) or "none".
    """

    path: str = ""
    tokenizer: str = ""
    max_len: int = 512
    dtype: str = "bf16"
    clean: str = "wan"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UMT5Config":
        return cls(**d)


# ----- prompt cleaning --------------------------------------------------------------------------------

def clean_prompt(text: str, mode: str = "wan") -> str:
    """The prompt text as Wan tokenizes it (its tokenizer's ``clean='whitespace'``): ftfy's fix_text (which
    also turns full-width punctuation such as "，" into ","), HTML unescaped twice, whitespace collapsed."""
    if mode not in CLEAN_MODES:
        raise ValueError(f"clean={mode!r}: choose one of {CLEAN_MODES}")
    if mode == "none":
        return text
    if mode == "wan":
        try:
            import ftfy
        except ImportError as e:
            raise ImportError("Wan's prompt cleaning needs ftfy: `pip install ftfy` (or set clean='whitespace' "
                              "to skip its Unicode fixes, which changes tokens of some non-ASCII prompts)") from e
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# ----- weights: reading, layouts, config ----------------------------------------------------------------

def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_OFFICIAL_RE = [(_template_regex(o), h) for o, h in RENAMES]
_HF_RE = [(_template_regex(h), o) for o, h in RENAMES]


def _rename(sd: dict[str, torch.Tensor], table, what: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in sd.items():
        for pattern, target in table:
            if m := pattern.match(key):
                out[target.replace("{i}", m.group(1)) if m.groups() else target] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} keys are not {what} umT5 encoder names: {sorted(unknown)[:20]}")
    return out


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan official names -> HF ``UMT5EncoderModel`` names (``shared.weight`` only; the tied
    ``encoder.embed_tokens.weight`` is re-tied when the model is built)."""
    return _rename(sd, _OFFICIAL_RE, "Wan official")


def hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``UMT5EncoderModel`` names -> Wan official names (the inverse of ``official_to_hf``)."""
    sd = dict(sd)
    tied = sd.pop(TIED_EMBED, None)
    if EMBED not in sd and tied is not None:
        sd[EMBED] = tied
    return _rename(sd, _HF_RE, "Hugging Face")


def _layout(sd: dict[str, torch.Tensor], path: Path) -> str:
    if "token_embedding.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "official"
    if EMBED in sd or any(k.startswith("encoder.") for k in sd):
        return "hf"
    raise KeyError(f"{path} holds neither Wan's official umT5 names (token_embedding.weight, blocks.N...) nor "
                   f"HF UMT5EncoderModel names (shared.weight, encoder.block.N...); first keys: "
                   f"{sorted(sd)[:8]}")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """HF-named encoder tensors of a Wan ``.pth`` / a ``.safetensors`` file / a folder of safetensors, and
    the HF umt5 ``config.json`` found beside them (None if there is none, or it is another model's).
    Tensors stay memory-mapped where the format allows, so reading costs page cache, not a copy in RAM."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no umT5 weights at {path}: give Wan's models_t5_umt5-xxl-enc-bf16.pth or a "
                                f"folder / .safetensors file of HF UMT5EncoderModel weights")
    from safetensors.torch import load_file

    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path} (for Wan's .pth, give the file itself)")
        sd = {k: v for f in files for k, v in load_file(str(f)).items()}
        config_file = path / "config.json"
    elif path.suffix == ".safetensors":
        sd, config_file = load_file(str(path)), path.parent / "config.json"
    elif path.suffix in (".pth", ".pt", ".bin"):
        sd, config_file = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True), None
    else:
        raise ValueError(f"unsupported umT5 weights file {path.name!r}: use .pth or .safetensors")
    if _layout(sd, path) == "official":
        return official_to_hf(sd), None
    # the encoder of a full UMT5 checkpoint: its decoder and LM head are not needed
    sd = {k: v for k, v in sd.items() if not k.startswith(("decoder.", "lm_head."))}
    if EMBED not in sd and TIED_EMBED in sd:
        sd[EMBED] = sd[TIED_EMBED]
    sd.pop(TIED_EMBED, None)
    hf_cfg = json.loads(config_file.read_text()) if config_file and config_file.is_file() else None
    return sd, hf_cfg if isinstance(hf_cfg, dict) and hf_cfg.get("model_type") == "umt5" else None


def hf_config(sd: dict[str, torch.Tensor], file_cfg: dict | None = None):
    """``transformers.UMT5Config`` of HF-named encoder tensors.

    Shapes give vocab × d_model (embedding), d_ff (wi_0), the layer count, buckets × heads (each block's
    relative_attention_bias) and d_kv (q rows / heads). The rest are umT5's constants (as in Wan's T5:
    RMS-norm eps 1e-6, relative distances bucketed up to 128, gated tanh-GELU), unless ``file_cfg`` (an HF
    config.json) says otherwise; a config.json that disagrees with the shapes is an error.
    """
    from transformers import UMT5Config as HFUMT5Config

    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))]
    bias_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    need = [EMBED, bias_key, "encoder.block.0.layer.0.SelfAttention.q.weight",
            "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    if not blocks or any(k not in sd for k in need):
        raise KeyError(f"not a umT5 encoder (gated FFN, relative bias per block): missing "
                       f"{[k for k in need if k not in sd]}")
    vocab, d_model = sd[EMBED].shape
    num_buckets, num_heads = sd[bias_key].shape
    shape = dict(vocab_size=vocab, d_model=d_model, num_layers=max(blocks) + 1, num_heads=num_heads,
                 d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // num_heads,
                 d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
                 relative_attention_num_buckets=num_buckets)
    base = dict(feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, relative_attention_max_distance=128)
    if file_cfg is not None:
        wrong = {k: (file_cfg[k], v) for k, v in shape.items() if k in file_cfg and file_cfg[k] != v}
        if wrong:
            raise ValueError(f"config.json disagrees with the tensor shapes (config, tensors): {wrong}")
        base.update({k: file_cfg[k] for k in base if k in file_cfg})
    # dropout off: the encoder is frozen and only ever used for inference. Attention is transformers' default
    # for UMT5 (SDPA in v5); in bf16 it rounds differently from Wan's einsum + fp32 softmax, within bf16 noise.
    return HFUMT5Config(**shape, **base, dropout_rate=0.0)


def build_encoder(sd: dict[str, torch.Tensor], cfg, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """A frozen ``UMT5EncoderModel`` holding exactly the tensors of ``sd`` (HF names), in ``dtype`` on
    ``device``. Built on the meta device, then the tensors are assigned, each cast and moved one at a time:
    peak memory is one copy of the weights in ``dtype`` on ``device``. Every parameter is kept in ``dtype``
    (Wan runs the whole encoder in bf16; HF's from_pretrained would keep ``wo`` in fp32)."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED_EMBED}
    missing, unknown = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k])
    if missing or unknown or wrong:
        raise KeyError(f"weights do not fit a umT5 encoder (d_model={cfg.d_model}, layers={cfg.num_layers}): "
                       f"missing {missing[:20]}; unknown {unknown[:20]}; shape mismatches "
                       f"{[(k, tuple(sd[k].shape), tuple(expected[k])) for k in wrong[:10]]}")
    weights = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    weights[TIED_EMBED] = weights[EMBED]
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()  # assign=True gave embed_tokens its own Parameter object; share shared's again
    return model.eval().requires_grad_(False)


def load_tokenizer(path: str | Path):
    """The umT5 tokenizer of a local HF tokenizer folder (never downloads).

    A folder with ``tokenizer.json`` (Wan's ``google/umt5-xxl/`` has one) is run verbatim by the
    ``tokenizers`` library, as the transformers-4 ``T5TokenizerFast`` of Wan's code runs it; newer
    transformers' ``T5Tokenizer`` would rebuild the pipeline from the vocabulary instead. Without it the
    folder goes through ``AutoTokenizer`` (spiece.model; needs the protobuf package). Either way the
    tokenizer must end a prompt with ``</s>`` and pad with a pad token, as Wan's context relies on both.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no umT5 tokenizer folder at {path}: give the google/umt5-xxl folder that Wan "
                                f"ships (tokenizer.json, tokenizer_config.json, spiece.model)")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if (path / "tokenizer.json").is_file():
            tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ValueError(f"could not load a tokenizer from {path} ({type(e).__name__}: {e}); the folder needs "
                         f"tokenizer.json (or spiece.model with the protobuf package)") from e
    if tok.pad_token_id is None or tok("", add_special_tokens=True).input_ids != [tok.eos_token_id]:
        raise ValueError(f"the tokenizer at {path} does not end prompts with its eos token or has no pad token "
                         f"(the empty prompt gives {tok('', add_special_tokens=True).input_ids}, eos is "
                         f"{tok.eos_token_id}, pad is {tok.pad_token_id}): not a umT5 tokenizer folder")
    return tok


# ----- the encoder --------------------------------------------------------------------------------------

class UMT5TextEncoder(TextEncoder):
    """Frozen umT5 encoder: prompts -> Wan2.1 context [B, max_len, d_model] (XXL: [B, 512, 4096]).

    ``encode`` runs under no_grad: its output is a constant input of the DiT. The encoder stays in eval
    mode whatever ``train()`` is called with (it has no dropout anyway). A bundle refers to it by its paths
    (``kind``, ``cfg``) and never stores its weights (``stored``).
    """

    kind = "umt5"
    stored = False

    def __init__(self, cfg: UMT5Config, device: torch.device | str = "cpu"):
        super().__init__()
        if cfg.dtype not in DTYPES:
            raise ValueError(f"dtype={cfg.dtype!r}: choose one of {sorted(DTYPES)} (fp16 overflows in "
                             f"T5-XXL activations; Wan runs bf16)")
        clean_prompt("", cfg.clean)  # an unknown mode or a missing ftfy stops here, before 11 GB are read
        if cfg.max_len < 1:
            raise ValueError(f"max_len={cfg.max_len} must be positive (Wan: 512)")
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        sd, file_cfg = read_weights(cfg.path)
        hf_cfg = hf_config(sd, file_cfg)
        if len(self.tokenizer) > hf_cfg.vocab_size:
            raise ValueError(f"the tokenizer at {cfg.tokenizer} has {len(self.tokenizer)} tokens, more than "
                             f"the encoder's {hf_cfg.vocab_size} embeddings: wrong tokenizer for these weights")
        self.model = build_encoder(sd, hf_cfg, DTYPES[cfg.dtype], device)
        self.text_dim = hf_cfg.d_model

    def train(self, mode: bool = True) -> "UMT5TextEncoder":
        return super().train(False)  # frozen: always eval

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, max_len] (long), as Wan makes them: cleaned text, ``</s>``
        appended, truncated (keeping ``</s>`` last) and padded with ``<pad>`` to max_len."""
        texts = [clean_prompt(p, self.cfg.clean) for p in prompts]
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.cfg.max_len,
                               add_special_tokens=True, return_tensors="pt")
        full = [p for p, n in zip(prompts, batch.attention_mask.sum(1).tolist()) if n == self.cfg.max_len]
        if full:
            warnings.warn(f"{len(full)} prompt(s) fill all {self.cfg.max_len} tokens and may have been truncated "
                          f"(as Wan truncates them): {[p[:60] for p in full]}", stacklevel=2)
        return batch.input_ids, batch.attention_mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Context [B, L, d_model] of token ids and mask [B, L]; rows where mask is 0 are exactly zero.

        The encoder only runs on the first max(length) positions: keys beyond a prompt's length are masked
        out, so its first ``length`` outputs do not depend on how much padding follows (Wan runs all 512,
        which gives the same values up to float rounding, at up to 512/length times the cost)."""
        device = self.model.shared.weight.device
        ids, mask = ids.to(device), mask.to(device)
        n = max(int(mask.sum(1).max()), 1)
        h = self.model(input_ids=ids[:, :n], attention_mask=mask[:, :n]).last_hidden_state  # [B, n, D]
        keep = mask[:, :n, None].bool()
        context = h.new_zeros(ids.shape[0], ids.shape[1], h.shape[-1])  # [B, L, D]
        context[:, :n] = torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=device))
        return context

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Wan2.1 context of the prompts, [B, max_len, d_model] in the encoder's dtype on its device; each
        row beyond the prompt's token count (``</s>`` included) is zero. "" gives CFG's unconditional
        context: row 0 is the encoded ``</s>``, the rest zero."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a string")
        return self(*self.tokenize(list(prompts)))
