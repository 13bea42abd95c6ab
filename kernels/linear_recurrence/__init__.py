"""Linear recurrence with a scalar decay per (token, head) as Triton kernels; see README.md."""

from kernels.linear_recurrence.chunk import chunk_linear_recurrence, supports

__all__ = ["chunk_linear_recurrence", "supports"]
