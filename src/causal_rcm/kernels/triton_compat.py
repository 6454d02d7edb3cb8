"""Compatibility shims for the Triton versions this project runs on, each gated to the versions that need it."""
from __future__ import annotations

import os

import triton


def _interpreter_loop_bounds_fix() -> None:
    """Triton 3.6's interpreter turns run-time loop bounds into ints with int(array of shape (1,)), which
    NumPy >= 2.4 refuses (triton-lang/triton#9171); apply the upstream fix (squeeze first). Applied only to
    that combination of versions."""
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor
    if getattr(patch, "squeezes_index", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.squeezes_index = True
    interpreter._patch_lang_tensor = patched


def _needs_loop_bounds_fix() -> bool:
    import numpy

    major_minor = lambda v: tuple(int(x) for x in v.split(".")[:2])  # noqa: E731
    return major_minor(triton.__version__) == (3, 6) and major_minor(numpy.__version__) >= (2, 4)


def apply() -> None:
    """Install the shims this process needs (called where the kernels are defined)."""
    if os.environ.get("TRITON_INTERPRET") == "1" and _needs_loop_bounds_fix():
        _interpreter_loop_bounds_fix()
