"""Linear recurrence with a decay per (token, head), per key channel (GLA) or none, as Triton kernels; see README.md."""

from kernels.linear_recurrence.chunk import chunk_linear_recurrence, supports

__all__ = ["chunk_linear_recurrence", "supports"]
