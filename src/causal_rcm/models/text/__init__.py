from .umt5 import RENAMES, UMT5Config, UMT5TextEncoder, clean_prompt, hf_to_official, official_to_hf, read_weights

__all__ = ["UMT5Config", "UMT5TextEncoder", "RENAMES", "clean_prompt", "official_to_hf", "hf_to_official",
           "read_weights"]
