"""Parallelism applied outside the model, in torchtitan's manner: per block, activation checkpointing →
``torch.compile`` → FSDP2, in that fixed order, then the root; the model is built on the meta device and
each rank materialises only its own shards from the checkpoint file (``models/loading.load_into``).

Order matters: checkpointing wraps the block's computation, compile traces that wrapped computation, and
FSDP2's hooks sit outside both (on the block's ``__call__``), so the all-gather before a block and the
reduce-scatter after its backward stay eager, and a recomputation in backward finds the parameters
gathered. The wrappers replace the block's ``forward`` (an instance attribute) rather than nesting the
block in a wrapper module, so parameter names stay those of the checkpoint (``blocks.3.ffn.0.weight``).

Every network path goes through module calls. A block is one FSDP unit; its extra entry points
(``forward_jvp``, ``context_kv``) are registered as FSDP forward methods so they gather the block's weights
too; so are the root's (``forward_jvp``, ``context_kv``), whose unit holds the embeddings, the time
projection and the head. The root is not resharded after a forward with gradients (its backward comes at
once, and the root's own ``context_kv`` runs nested inside its ``forward``); blocks are.

Mixed precision (CUDA): blocks gather bf16 weights (``param_dtype``) and reduce gradients in fp32
(``reduce_dtype``); the root keeps fp32 weights, so the time embedding and the AdaLN projection stay fp32
(STYLE.md habit 6); block inputs are not cast (the fp32 modulation ``e0`` stays fp32). Sharded parameters and
optimiser states are fp32 everywhere. The CPU runs fp32 (autocast is CUDA-only in this project).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..kernels.attention import MASKED_CUDA_BACKENDS, SDPA_ORDERS
from ..models.wan import WanDiT

AC_MODES = ("none", "full", "selective")
FSDP_MODES = ("auto", "on", "off")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
BLOCK_METHODS = ("forward_jvp", "context_kv")
ROOT_METHODS = ("forward_jvp", "context_kv")

# FSDP2 warns when a unit returns a view (an in-place op on it would skip the pre-backward hook); the DiT's
# blocks return views of fresh tensors and no caller modifies a block's or the root's output in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


@dataclass(frozen=True)
class ParallelConfig:
    """Where and how a stage's networks run (the ``parallel`` sub-config of every training stage)."""

    ac: str = "none"            # activation checkpointing per block: none | full | selective
    compile: bool = False       # torch.compile each block's forward (CUDA)
    fsdp: str = "auto"          # FSDP2 per block: auto (when world > 1) | on (also one process) | off
    grad_accum: int = 1         # micro-batches per optimiser step: train.batch = world × micro-batch × grad_accum
    param_dtype: str = "bf16"   # the gathered block weights' dtype on CUDA (the CPU runs fp32)
    reduce_dtype: str = "fp32"  # gradient reduce-scatter dtype
    attention: str = "flex"     # masked attention on CUDA: flex (FlexAttention) | split (dense SDPA pieces)
    sdpa: str = "default"       # SDPA kernel order on CUDA: default (flash first) | cudnn (cuDNN's fused first)

    def __post_init__(self):
        if self.attention not in MASKED_CUDA_BACKENDS:
            raise ValueError(f"parallel.attention must be one of {MASKED_CUDA_BACKENDS}, got {self.attention!r}")
        if self.sdpa not in SDPA_ORDERS:
            raise ValueError(f"parallel.sdpa must be one of {SDPA_ORDERS}, got {self.sdpa!r}")
        if self.ac not in AC_MODES:
            raise ValueError(f"parallel.ac must be one of {AC_MODES}, got {self.ac!r}")
        if self.fsdp not in FSDP_MODES:
            raise ValueError(f"parallel.fsdp must be one of {FSDP_MODES}, got {self.fsdp!r}")
        if isinstance(self.grad_accum, bool) or int(self.grad_accum) != self.grad_accum or self.grad_accum < 1:
            raise ValueError(f"parallel.grad_accum must be an integer >= 1, got {self.grad_accum!r}")
        for name in ("param_dtype", "reduce_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"parallel.{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")


# ----- activation checkpointing ---------------------------------------------------------------------------
def _ops() -> tuple[set, set]:
    """(matmuls, attention kernels): the ops whose outputs selective checkpointing may keep."""
    aten = torch.ops.aten
    matmuls = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
    attention = set()
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(aten, name):
            attention.add(getattr(aten, name).default)
    if hasattr(torch.ops.higher_order, "flex_attention"):
        attention.add(torch.ops.higher_order.flex_attention)
    return matmuls, attention


def _policy(width: int):
    """Keep attention outputs and the matmul outputs at most ``width`` (the model width) wide; recompute
    the feed-forward's up-projection (its ffn_dim-wide output is the block's largest activation, and only a
    sixth of the block's matmul FLOPs), norms, RoPE, modulation and other elementwise work (cheap, and fused
    when the block is compiled)."""
    matmuls, attention = _ops()

    def policy(ctx, op, *args, **kwargs):
        if op in attention or (op in matmuls and args[-1].shape[-1] <= width):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE
    return policy


def _checkpointed(forward, mode: str, width: int):
    """``forward`` recomputed in backward (non-reentrant checkpointing), all of it (``full``) or all but
    the outputs ``_policy`` keeps (``selective``). Without gradients (rollouts, frozen nets) it runs as is."""
    context_fn = None
    if mode == "selective":
        context_fn = functools.partial(create_selective_checkpoint_contexts, _policy(width))

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if context_fn is None:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)
    return run


def apply_ac(model: WanDiT, mode: str) -> None:
    """Checkpoint every block's forward: ``full`` keeps the block's inputs only, ``selective`` also its
    attention and model-width matmul outputs (``_policy``)."""
    if mode == "none":
        return
    for blk in model.blocks:
        blk.forward = _checkpointed(blk.forward, mode, model.cfg.dim)


def apply_compile(model: WanDiT) -> None:
    """``torch.compile`` each block's forward (the blocks are identical: one graph serves them all)."""
    for blk in model.blocks:
        blk.forward = torch.compile(blk.forward)


# ----- FSDP2 ------------------------------------------------------------------------------------------------
def _policies(cfg: ParallelConfig, device: torch.device) -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """(block policy, root policy); on the CPU plain fp32 (no mixed precision)."""
    if device.type != "cuda":
        return MixedPrecisionPolicy(), MixedPrecisionPolicy()
    reduce = DTYPES[cfg.reduce_dtype]
    return (MixedPrecisionPolicy(param_dtype=DTYPES[cfg.param_dtype], reduce_dtype=reduce, cast_forward_inputs=False),
            MixedPrecisionPolicy(reduce_dtype=reduce, cast_forward_inputs=False))


def apply_fsdp(model: nn.Module, mesh, cfg: ParallelConfig, device: torch.device) -> None:
    """``fully_shard`` each DiT block, then the root (the DiT, or any other module as one unit)."""
    block_mp, root_mp = _policies(cfg, device)
    if isinstance(model, WanDiT):
        for blk in model.blocks:
            fully_shard(blk, mesh=mesh, mp_policy=block_mp, reshard_after_forward=True)
            for name in BLOCK_METHODS:
                register_fsdp_forward_method(blk, name)
    fully_shard(model, mesh=mesh, mp_policy=root_mp, reshard_after_forward=False)
    if isinstance(model, WanDiT):
        for name in ROOT_METHODS:
            register_fsdp_forward_method(model, name)


def parallelize(model: nn.Module, cfg: ParallelConfig, device: torch.device, mesh=None, trainable: bool = False,
                compile: bool = True) -> nn.Module:
    """Apply activation checkpointing (trainable DiTs), compile (DiTs), then FSDP2 (``mesh`` given), in that
    order, to a meta-device or materialised model; a ``ModuleDict`` is parallelised child by child."""
    if isinstance(model, nn.ModuleDict):
        for child in model.values():
            parallelize(child, cfg, device, mesh, trainable, compile)
        return model
    if isinstance(model, WanDiT):
        if trainable:
            apply_ac(model, cfg.ac)
        if cfg.compile and compile:
            apply_compile(model)
    if mesh is not None:
        apply_fsdp(model, mesh, cfg, device)
    return model
