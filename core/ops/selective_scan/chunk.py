"""Blocked parallel selective scan in plain PyTorch: the CPU fast path and the oracle for kernels.

The state h (b, D, N) is an elementwise linear recurrence over D * N channels (spec 4.4(b)), but
(b, T, D, N) tensors are large: the sequence is cut into blocks of about `two_level.BLOCK_ELEMENTS`
state values each (cache-sized), and each block runs `two_level.scan_` from the state left by the one
before. Like mamba's kernels, the forward keeps only the states entering the blocks; the backward
recomputes each block (last to first) and runs the adjoint scan, so memory stays O(b T D + b D N T / L).
"""

import torch
from torch import Tensor

from core.ops.dispatch import register
from core.ops.linear_scan.two_level import BLOCK_ELEMENTS, scan_

MIN_BLOCK = 16  # tokens per block at least


@register("selective_scan", "chunk", priority=1)
def chunk_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as `naive_selective_scan`; once differentiable."""
    return _SelectiveScan.apply(u, delta, A, B, C, initial_state)


class _SelectiveScan(torch.autograd.Function):
    """Forward in blocks; backward by recomputation, block by block from the end.

    With a_t = exp(delta_t A), x_t = delta_t u_t B_t, h_t = a_t h_{t-1} + x_t, y_t = h_t C_t and
    g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1} (a reverse scan; g_T-1 also gets dL/dh_T):
      w_t = g_t (h_t - x_t) = dL/d(delta_t A)    (since a_t h_{t-1} = h_t - x_t)
      dA = sum_t w_t delta_t;  ddelta_t = sum_n w_t A + u_t (g_t B_t);  du_t = delta_t (g_t B_t)
      dB_t = sum_{d in group} g_t delta_t u_t;  dC_t = sum_{d in group} dy_t h_t;  dh_0 = a_0 g_0.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        blocks = _Blocks(u, delta, A, B, C)
        y = blocks.u.new_empty(blocks.u.shape)  # [b, T, G, D/G]
        state = h0.view(blocks.state_shape)
        entering = []
        for block in blocks.slices:
            entering.append(state)
            a, h = blocks.decay(block), blocks.input(block)
            scan_(a, h, state)
            y[:, block] = torch.einsum("blgdn,blgn->blgd", h, blocks.C[:, block])
            state = h[:, -1]
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(entering, dim=1))
        return y.flatten(2).transpose(1, 2), state.flatten(1, 2).clone()  # a copy: the block can be freed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor, dh_final: Tensor) -> tuple[Tensor, ...]:
        u, delta, A, B, C, entering = ctx.saved_tensors
        blocks = _Blocks(u, delta, A, B, C)
        dy = dy.transpose(1, 2).unflatten(2, blocks.u.shape[2:]).contiguous()  # [b, T, G, D/G]
        grads = {name: torch.zeros_like(getattr(blocks, name)) for name in ("u", "delta", "B", "C")}
        dA = torch.zeros_like(blocks.A)
        carry = dh_final.view(blocks.state_shape)  # dL/d(the state leaving the block)
        for k, block in reversed(list(enumerate(blocks.slices))):
            a, x = blocks.decay(block), blocks.input(block)
            h = scan_(a, x.clone(), entering[:, k])
            g = dy[:, block, :, :, None] * blocks.C[:, block, :, None, :]  # [b, L, G, D/G, N], dL/dh from y_t
            scan_(blocks.decay(block, shift=True), g, carry, reverse=True)
            carry = a[:, 0] * g[:, 0]
            w = g * (h - x)
            delta, u = blocks.delta[:, block], blocks.u[:, block]
            dA += (w * delta[..., None]).sum((0, 1))
            gB = torch.einsum("blgdn,blgn->blgd", g, blocks.B[:, block])
            grads["delta"][:, block] = (w * blocks.A).sum(-1) + gB * u
            grads["u"][:, block] = gB * delta
            grads["B"][:, block] = ((delta * u).unsqueeze(-2) @ g).squeeze(-2)
            grads["C"][:, block] = (dy[:, block].unsqueeze(-2) @ h).squeeze(-2)
        du, ddelta = (grads[name].flatten(2).transpose(1, 2) for name in ("u", "delta"))
        dB, dC = (grads[name].permute(0, 2, 3, 1) for name in ("B", "C"))
        return du, ddelta, dA.flatten(0, 1), dB, dC, carry.flatten(1, 2)


class _Blocks:
    """The inputs in a time-major layout, cut into blocks along time.

    u, delta: [b, T, G, D/G]; B, C: [b, T, G, N]; A: [G, D/G, N]; state_shape: (b, G, D/G, N).
    """

    def __init__(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        b, D, T = u.shape
        G, N = B.shape[1:3]
        self.u, self.delta = (x.transpose(1, 2).unflatten(2, (G, -1)).contiguous() for x in (u, delta))
        self.B, self.C = (x.permute(0, 3, 1, 2).contiguous() for x in (B, C))
        self.A = A.unflatten(0, (G, -1))
        self.state_shape = (b, G, D // G, N)
        length = max(MIN_BLOCK, BLOCK_ELEMENTS // (b * D * N))
        self.slices = [slice(s, min(s + length, T)) for s in range(0, T, length)]

    def decay(self, block: slice, shift: bool = False) -> Tensor:
        """a_t = exp(delta_t A) [b, L, G, D/G, N]; shift: a_{t+1} instead, and 1 at the block's last token."""
        delta = self.delta[:, block]
        if shift:
            delta = torch.cat([delta[:, 1:], torch.zeros_like(delta[:, :1])], dim=1)
        return (delta[..., None] * self.A).exp_()

    def input(self, block: slice) -> Tensor:
        """x_t = delta_t u_t B_t [b, L, G, D/G, N], a fresh tensor."""
        return (self.delta[:, block] * self.u[:, block])[..., None] * self.B[:, block, :, None, :]
