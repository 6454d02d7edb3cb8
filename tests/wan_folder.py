"""A tiny Wan2.1 checkpoint folder in diffusers' layout, built offline from random weights of the real classes:

    ROOT/transformer/   diffusers WanTransformer3DModel (2 blocks of 2 heads × 12, 16 latent channels)
    ROOT/text_encoder/  transformers UMT5EncoderModel (d_model 32 = the DiT's text width)
    ROOT/tokenizer/     a tiny unigram tokenizer that ends prompts with </s> as umT5's does
    ROOT/vae/           diffusers AutoencoderKLWan (8 base channels; strides 4 in time, 8 in space)

What ``configs/wan2.1-1.3b.yaml`` reads from a real Wan2.1-T2V-1.3B-Diffusers folder, at a size the CPU runs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .conftest import TINY, randomize_

PROMPTS = ["a red ball rolls across the floor", "two blue cubes bounce on a table",
           "the camera pans over a green field at dusk", "a cat walks slowly through tall grass"]


def transformer():
    """The folder's diffusers WanTransformer3DModel (diffusers' from_pretrained needs accelerate for it)."""
    from .test_umt5 import TINY as UMT5_TINY
    from .test_wan import diffusers_model

    return diffusers_model(dataclasses.replace(TINY, in_dim=16, out_dim=16, text_dim=UMT5_TINY["d_model"]), seed=1)


def make_wan_folder(root: Path) -> Path:
    import transformers
    from tokenizers import processors

    from .test_codecs import tiny_wan_vae
    from .test_umt5 import TINY as UMT5_TINY, train_tokenizer
    root = Path(root)
    transformer().save_pretrained(str(root / "transformer"))
    torch.manual_seed(2)
    te = randomize_(transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5_TINY)), std=0.1, seed=2)
    te.save_pretrained(str(root / "text_encoder"))
    tk = train_tokenizer()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.T5Tokenizer(tokenizer_object=tk, extra_ids=0).save_pretrained(str(root / "tokenizer"))
    tiny_wan_vae().save_pretrained(str(root / "vae"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root
