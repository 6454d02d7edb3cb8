"""Attention kernels: the dispatch (``attention``, ``attention_jvp``), the PyTorch reference, and the Triton
kernels (imported lazily, so a machine without Triton still runs everything on the reference path)."""
from .attention import attention, attention_jvp
from .reference import attention_math, attention_ref

__all__ = ["attention", "attention_jvp", "attention_ref", "attention_math"]
