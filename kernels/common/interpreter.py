"""A fix for Triton's CPU interpreter (TRITON_INTERPRET=1) with NumPy 2.

The interpreter holds scalars as one-element arrays and converts them with int(array), which NumPy 2
refuses for arrays that are not 0-d; a kernel loop `for i in range(n)` over a run-time bound then
fails. Applied on import of `kernels.common`, only when interpreting.
"""

import triton.runtime.interpreter as _interpreter


def _index(tensor) -> int:
    return int(tensor.handle.data.reshape(-1)[0])


def patch_scalar_index() -> None:
    original = _interpreter._patch_lang_tensor
    if getattr(original, "_seqmix_patched", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    patched._seqmix_patched = True
    _interpreter._patch_lang_tensor = patched
