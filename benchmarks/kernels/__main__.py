"""python -m benchmarks.kernels: see the package docstring."""

from benchmarks.kernels.run import main

main()
