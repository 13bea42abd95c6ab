"""Triton kernels (forward and backward) for the ops of `core.ops`; imports nothing from `core`.

Importing a subpackage imports Triton; `core` does so lazily, only when a kernel is used.
One directory per op: `kernels.linear_recurrence` (chunked, scalar decay). Shared pieces live in
`kernels.common`.
"""
