"""RMSNorm with an optional SiLU gate, normalised in groups, forward and backward, as one kernel each.

x, z (N, D) with unit channel stride (a slice of a projection is read in place when its row stride is a multiple of
16, see aligned_rows), weight (D,),
groups of G = group_size channels (D = n_groups * G), computed in float32:
- norm_before_gate: y = w * rms(x) * silu(z)   (fla's FusedRMSNormGated)
- otherwise:        y = w * rms(x * silu(z))   (Mamba-2)
- no z:             y = w * rms(x).
One program normalises a [rows, G] tile of one group; the backward recomputes the norm from x and z (nothing is
saved but the inputs) and writes per-tile partial sums of dw, summed in PyTorch (deterministic, no atomics).
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.common.config import aligned_rows
from kernels.common.ops import call, eager_function, empty_for_none, fake_grads, saved_inputs_autograd

TILE = 4096  # elements per program: rows = TILE // G (at least 1)
MAX_GROUP = 16384  # the widest group one program holds


@triton.jit
def _normalised(x, z, w, rows, cols, i_g, N, sx, sz, eps,
                G: tl.constexpr, HAS_Z: tl.constexpr, BEFORE_GATE: tl.constexpr):
    """(u_hat = u rms(u), gate, w, x, z, 1 / rms) of a tile, u = x or x silu(z); float32."""
    m_r, m_c = rows < N, cols < G
    m = m_r[:, None] & m_c[None, :]
    ch = i_g * G + cols
    b_x = tl.load(x + rows[:, None].to(tl.int64) * sx + ch[None, :], mask=m, other=0).to(tl.float32)
    b_w = tl.load(w + ch, mask=m_c, other=0).to(tl.float32)
    b_z = tl.zeros_like(b_x)
    gate = tl.full(b_x.shape, 1.0, tl.float32)
    if HAS_Z:
        b_z = tl.load(z + rows[:, None].to(tl.int64) * sz + ch[None, :], mask=m, other=0).to(tl.float32)
        gate = b_z * tl.sigmoid(b_z)
    u = b_x * gate if HAS_Z and not BEFORE_GATE else b_x
    r = 1 / tl.sqrt(tl.sum(u * u, axis=1) / G + eps)
    return u * r[:, None], gate, b_w, b_x, b_z, r


@triton.jit
def _norm_fwd_kernel(x, z, w, y, N, D, sx, sz, eps,
                     G: tl.constexpr, BG: tl.constexpr, BN: tl.constexpr, HAS_Z: tl.constexpr, BEFORE_GATE: tl.constexpr):
    i_n, i_g = tl.program_id(0), tl.program_id(1)
    rows, cols = i_n * BN + tl.arange(0, BN), tl.arange(0, BG)
    u_hat, gate, b_w, _, _, _ = _normalised(x, z, w, rows, cols, i_g, N, sx, sz, eps, G, HAS_Z, BEFORE_GATE)
    out = u_hat * b_w[None, :]
    if HAS_Z and BEFORE_GATE:
        out = out * gate
    m = (rows < N)[:, None] & (cols < G)[None, :]
    tl.store(y + rows[:, None].to(tl.int64) * D + (i_g * G + cols)[None, :], out.to(y.dtype.element_ty), mask=m)


@triton.jit
def _norm_bwd_kernel(x, z, w, dy, dx, dz, dw_part, N, D, sx, sz, eps,
                     G: tl.constexpr, BG: tl.constexpr, BN: tl.constexpr, HAS_Z: tl.constexpr, BEFORE_GATE: tl.constexpr):
    i_n, i_g = tl.program_id(0), tl.program_id(1)
    rows, cols = i_n * BN + tl.arange(0, BN), tl.arange(0, BG)
    u_hat, gate, b_w, b_x, b_z, r = _normalised(x, z, w, rows, cols, i_g, N, sx, sz, eps, G, HAS_Z, BEFORE_GATE)
    m = (rows < N)[:, None] & (cols < G)[None, :]
    offsets = rows[:, None].to(tl.int64) * D + (i_g * G + cols)[None, :]
    b_dy = tl.load(dy + offsets, mask=m, other=0).to(tl.float32)
    d_hat = b_dy * b_w[None, :]
    if HAS_Z and BEFORE_GATE:
        d_hat = d_hat * gate
    du = r[:, None] * (d_hat - u_hat * (tl.sum(d_hat * u_hat, axis=1) / G)[:, None])
    if HAS_Z:
        s = tl.sigmoid(b_z)
        dsilu = s * (1 + b_z * (1 - s))
        if BEFORE_GATE:
            b_dz = b_dy * b_w[None, :] * u_hat * dsilu
            b_dx = du
        else:
            b_dz = du * b_x * dsilu
            b_dx = du * gate
        tl.store(dz + offsets, b_dz.to(dz.dtype.element_ty), mask=m)
    else:
        b_dx = du
    tl.store(dx + offsets, b_dx.to(dx.dtype.element_ty), mask=m)
    dw = b_dy * u_hat * gate if HAS_Z and BEFORE_GATE else b_dy * u_hat
    tl.store(dw_part + i_n * D + i_g * G + cols, tl.sum(dw, axis=0), mask=cols < G)


def _rows(x: Tensor) -> Tensor:
    """x (..., D) as (N, D) with a unit channel stride, copied only when it cannot be viewed so."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def _launch(x: Tensor, group_size: int) -> tuple[tuple[int, int], dict]:
    N, D = x.shape
    BG = triton.next_power_of_2(group_size)
    BN = max(1, TILE // BG)
    return (triton.cdiv(N, BN), D // group_size), dict(G=group_size, BG=BG, BN=BN)


def gated_rms_norm_forward(
    x: Tensor, weight: Tensor, z: Tensor | None, eps: float, group_size: int, norm_before_gate: bool
) -> Tensor:
    """y in x's dtype and shape (contiguous); x, z (..., D), weight (D,)."""
    shape, x = x.shape, _rows(x)
    z = None if z is None else _rows(z)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grid, sizes = _launch(x, group_size)
    _norm_fwd_kernel[grid](
        x, z, weight.contiguous(), y, x.shape[0], x.shape[1], x.stride(0), 0 if z is None else z.stride(0), eps,
        HAS_Z=z is not None, BEFORE_GATE=norm_before_gate, **sizes,
    )
    return y.view(shape)


def gated_rms_norm_backward(
    x: Tensor, weight: Tensor, z: Tensor | None, eps: float, group_size: int, norm_before_gate: bool, dy: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dx, dweight, dz or None), each in its input's dtype and shape."""
    shape, x = x.shape, _rows(x)
    z = None if z is None else _rows(z)
    dy = dy.reshape(x.shape).contiguous()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dz = None if z is None else torch.empty(z.shape, dtype=z.dtype, device=x.device)
    grid, sizes = _launch(x, group_size)
    dw_part = torch.empty(grid[0], x.shape[1], dtype=torch.float32, device=x.device)
    _norm_bwd_kernel[grid](
        x, z, weight.contiguous(), dy, dx, dz, dw_part, x.shape[0], x.shape[1], x.stride(0), 0 if z is None else z.stride(0),
        eps, HAS_Z=z is not None, BEFORE_GATE=norm_before_gate, **sizes,
    )
    return dx.view(shape), dw_part.sum(0).to(weight.dtype), None if dz is None else dz.view(shape)


# --- the public op: a torch.library custom op under torch.compile, an autograd.Function over the same forward and
# backward in eager mode (kernels/common/ops.py says why) -------------------------------------------------------------

_norm_op = torch.library.custom_op("seqmix::gated_rms_norm", mutates_args=())(gated_rms_norm_forward)


@_norm_op.register_fake
def _(x, weight, z, eps, group_size, norm_before_gate):
    return x.new_empty(x.shape)  # contiguous, as the kernel writes it


@torch.library.custom_op("seqmix::gated_rms_norm_backward", mutates_args=())
def _norm_backward_op(
    x: Tensor, weight: Tensor, z: Tensor | None, eps: float, group_size: int, norm_before_gate: bool, dy: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dz); dz is an empty tensor without z (a custom op cannot return None)."""
    return empty_for_none(x, *gated_rms_norm_backward(x, weight, z, eps, group_size, norm_before_gate, dy))


@_norm_backward_op.register_fake
def _(x, weight, z, eps, group_size, norm_before_gate, dy):
    return fake_grads(x, x, weight, z)


_setup_context, _backward = saved_inputs_autograd(tensors=3)
torch.library.register_autograd(_norm_op, functools.partial(_backward, grads=_norm_backward_op), setup_context=_setup_context)
_GatedRMSNorm = eager_function("_GatedRMSNorm", gated_rms_norm_forward, _setup_context, functools.partial(_backward, grads=gated_rms_norm_backward))


def gated_rms_norm(
    x: Tensor, weight: Tensor, z: Tensor | None = None, *, eps: float = 1e-5, group_size: int | None = None,
    norm_before_gate: bool = True,
) -> Tensor:
    """Gated RMSNorm on the GPU; see the module docstring. x, z (..., D) float32, bfloat16 or float16; weight (D,);
    group_size divides D (None: D), at most MAX_GROUP. Returns y (..., D) in x's dtype. Differentiable in x, weight
    and z; under torch.compile the custom op "seqmix::gated_rms_norm"."""
    z = None if z is None else aligned_rows(z)
    return call(_norm_op, _GatedRMSNorm, aligned_rows(x), weight, z, eps, group_size or x.shape[-1], norm_before_gate)
