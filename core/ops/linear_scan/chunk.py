"""Parallel elementwise linear recurrence in plain PyTorch: the CPU fast path and the oracle for kernels.

`chunk_linear_scan` is the two-level scan of `two_level.scan_` with its own backward (a reverse
scan, so autograd stores only a and h). `chunk_log_linear_scan` takes positive inputs in log space
(minGRU) and runs the same scan on their exponentials.
"""

import torch
from torch import Tensor

from core.ops.dispatch import register
from core.ops.linear_scan.two_level import scan_


@register("linear_scan", "chunk", priority=1)
def chunk_linear_scan(a: Tensor, b: Tensor, initial_state: Tensor) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t: a, b [B, T, D] (real or complex), initial_state [B, D] -> h [B, T, D].

    Same contract as `naive_linear_scan`. The backward needs no second derivatives (once differentiable).
    """
    return _LinearScan.apply(a, b, initial_state)


class _LinearScan(torch.autograd.Function):
    """With g_t = dL/dh_t summed over all paths, g_t = dh_t + conj(a_{t+1}) g_{t+1}: a reverse scan.
    Then dL/db_t = g_t, dL/da_t = g_t conj(h_{t-1}) and dL/dh_0 = conj(a_1) g_1 (complex: PyTorch's
    conjugate Wirtinger convention; conj is the identity on real tensors)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = scan_(a, b.clone(memory_format=torch.contiguous_format), h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1).conj()
        g = scan_(a_next, dh.clone(memory_format=torch.contiguous_format), torch.zeros_like(h0), reverse=True)
        da = g * torch.cat([h0[:, None], h[:, :-1]], dim=1).conj() if ctx.needs_input_grad[0] else None
        dh0 = a[:, 0].conj() * g[:, 0] if ctx.needs_input_grad[2] else None
        return da, g, dh0


@register("log_linear_scan", "chunk", priority=1)
def chunk_log_linear_scan(log_a: Tensor, log_b: Tensor, initial_state: Tensor) -> Tensor:
    """h_t = exp(log_a_t) h_{t-1} + exp(log_b_t); same contract as `naive_log_linear_scan`.

    The two-level scan never divides by a running product, so running it on exp(log_a), exp(log_b) is as
    stable as the log-space form (Heinsen's logcumsumexp) without its cost: a product of gates that
    underflows to 0 is exact enough, and exp(log_b) overflows only where h itself would.
    """
    return chunk_linear_scan(log_a.exp(), log_b.exp(), initial_state)
