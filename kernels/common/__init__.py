"""Pieces shared by the kernels: chunk coordinates, cumulative sums, launch configs, the decode step (`step.py`)."""

from kernels.common.config import interpreting

if interpreting():
    from kernels.common.interpreter import patch_scalar_index

    patch_scalar_index()
