"""Triton kernels (forward and backward) for the ops of `core.ops`; imports nothing from `core`.

Importing a subpackage imports Triton; `core` does so lazily, only when a kernel is used.
One directory per op: `kernels.linear_recurrence` (chunked, scalar decay), `kernels.delta_rule`
(chunked, DeltaNet and Gated DeltaNet; it reuses the linear recurrence's output and gradient
kernels), `kernels.layers` (the fused short causal convolution and gated RMSNorm around them). Shared pieces live in
`kernels.common`.
"""
