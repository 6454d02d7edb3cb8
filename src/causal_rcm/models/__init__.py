from ..masks import C1_1, C1_4, C3_3, BlockCausal, ChunkPattern, Mask, TeacherForcing, block_causal, teacher_forcing
from .kv_cache import KVCache
from .wan import WanDiT

__all__ = ["WanDiT", "KVCache", "ChunkPattern", "Mask", "BlockCausal", "TeacherForcing", "block_causal",
           "teacher_forcing", "C1_1", "C3_3", "C1_4"]
