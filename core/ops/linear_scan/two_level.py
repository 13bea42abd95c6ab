"""The in-place two-level scan shared by the parallel elementwise recurrences (linear_scan, selective_scan)."""

from torch import Tensor


BLOCK_ELEMENTS = 1 << 18  # values of h per block of tokens (1 MiB in float32): the block stays in cache


def scan_(a: Tensor, h: Tensor, state: Tensor, reverse: bool = False) -> Tensor:
    """Run an elementwise linear recurrence along dim 1 of h in place, without autograd; returns h.

    Forward:  h_t <- h_t + a_t * h_{t-1}, with h_{-1} = state.
    Reverse:  h_t <- h_t + a_t * h_{t+1}, with h_T = state (the adjoint recurrence, for backward
              passes, takes a_t = the forward a_{t+1}).
    a, h: [B, T, ...] (real or complex; a may be a broadcast view), state: [B, ...]. Every update is
    an in-place op on a view of h, so h may have any strides.
    The tokens are cut into cache-sized blocks, run one after the other; within a block, sub-chunks
    of c ~ sqrt(L) tokens first scan themselves, all at once (c - 1 vectorised steps), then a loop
    over the L / c sub-chunks adds the state entering each, times the running product of a. About
    2 sqrt(L) steps per block instead of L, and no division, so any a (zero, negative, complex) is fine.
    """
    T = h.shape[1]
    length = max(1, BLOCK_ELEMENTS // h[:, :1].numel())
    starts = range(0, T, length)
    for start in reversed(starts) if reverse else starts:
        block = slice(start, min(start + length, T))
        state = _two_level_(a[:, block], h[:, block], state, reverse)
    return h


def _two_level_(a: Tensor, h: Tensor, state: Tensor, reverse: bool) -> Tensor:
    """`scan_` on one block (a view of h, updated in place); returns the state leaving the block (a view of h)."""
    T = h.shape[1]
    c = 1 << ((T - 1).bit_length() + 1) // 2  # the power of two nearest above sqrt(T)
    n = T // c
    main = slice(T - n * c, T) if reverse else slice(0, n * c)
    a_c, h_c = a[:, main].unflatten(1, (n, c)), h[:, main].unflatten(1, (n, c))  # [B, n, c, ...]
    running = a_c.clone()  # becomes the product of a from the sub-chunk's edge to each token
    order = range(c - 2, -1, -1) if reverse else range(1, c)
    step = 1 if reverse else -1  # offset of the neighbour that a token reads
    a_r, h_r, running_r = a_c.unbind(2), h_c.unbind(2), running.unbind(2)  # one op for all the views
    for r in order:
        h_r[r].addcmul_(a_r[r], h_r[r + step])
        running_r[r].mul_(running_r[r + step])
    edge = 0 if reverse else c - 1
    chunks = list(zip(h_c.unbind(1), running.unbind(1)))
    for h_i, running_i in reversed(chunks) if reverse else chunks:
        h_i.addcmul_(running_i, state.unsqueeze(1))
        state = h_i[:, edge]
    for t in range(T - n * c - 1, -1, -1) if reverse else range(n * c, T):
        h[:, t].addcmul_(a[:, t], state)
        state = h[:, t]
    return state
