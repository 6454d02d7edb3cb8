from .attention_ref import attention_jvp_ref, attention_ref
from .flash_attn_jvp import attention_jvp

__all__ = ["attention_jvp", "attention_ref", "attention_jvp_ref"]
