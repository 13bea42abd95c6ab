"""(Gated) delta rule as Triton kernels (DeltaNet, Gated DeltaNet); see README.md."""

from kernels.delta_rule.chunk import chunk_delta_rule, supports

__all__ = ["chunk_delta_rule", "supports"]
