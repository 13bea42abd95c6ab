"""What the Gluon kernels for Hopper share: a ring of 64 x 64 tiles (16-bit, or float32 for T) in shared memory that a one-warp loader
fills by TMA and the compute warps drain, slot by slot (`issue_tile`, `take_tile`, `free_tile`: tile j of a program's stream
lives in slot j % SLOTS, each slot with a `ready` barrier the TMA completes and an `empty` barrier the compute warps
arrive at), the persistent programs' work items, and the host-side descriptors and checks.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.common.config import warp_specialized

# A kernel runs one compute warpgroup or two (NC), each on every other item of its program, beside the one-warp
# loader. With two, each gets 240 registers per thread and the loader's warpgroup 24, so the launch's limit is 168
# (65536 registers over 3 warpgroups of 128 threads). Which is faster depends on the kernel (H100, B16 T2048 H16
# D128, gated, session 23): the WY backward 472 us with two against 574 with one (its elementwise work waits on one
# warpgroup), the dQ/dK pass 487 us with one against 551 with two (it needs more than 240 registers: spills).
# The wgmma accumulator layout of a 64 x 64 tile over one warpgroup, and its rows' and columns' slices.
MMA = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16]))
MMA_ROWS = gl.constexpr(gl.SliceLayout(1, MMA))
MMA_COLS = gl.constexpr(gl.SliceLayout(0, MMA))
CONSUMER_REGS = gl.constexpr(240)
MAXNREG = 168


def launch_options(consumers: int) -> dict:
    """The launch options of a kernel with 1 or 2 compute warpgroups."""
    return dict(num_warps=4, maxnreg=MAXNREG if consumers == 2 else None)


def hopper_gpu(x: torch.Tensor) -> bool:
    """Whether x lives on a Hopper GPU and the Gluon kernels are on (SEQMIX_GLUON not 0)."""
    return x.is_cuda and warp_specialized() and torch.cuda.get_device_capability(x.device)[0] == 9


def serves(k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
    """Whether the Gluon kernels serve these inputs: a Hopper GPU (SEQMIX_GLUON not 0), 16-bit, K = V = 128, no packing."""
    return (hopper_gpu(k) and k.dtype in (torch.bfloat16, torch.float16) and k.shape[-1] == 128 and v.shape[-1] == 128
            and cu_seqlens is None)


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}


@functools.cache
def _tile_layout(dtype: torch.dtype) -> gl.NVMMASharedLayout:
    """The shared-memory layout of a 64 x 64 tile (5 us to build on the development machine's CPU: built once)."""
    return gl.NVMMASharedLayout.get_default_for([64, 64], _GL_DTYPES[dtype])


def tile_descriptor(x: torch.Tensor, columns: int) -> TensorDescriptor:
    """A TMA descriptor of 64 x 64 tiles over x viewed as (-1, columns) rows (x contiguous, 16-bit or float32)."""
    flat = x.view(-1, columns)
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [64, 64], _tile_layout(x.dtype))


@gluon.jit
def new_ring(desc, SLOTS: gl.constexpr, CONSUMERS: gl.constexpr = 1):
    """SLOTS tiles of desc's block in shared memory, and their `ready` and `empty` barriers (a slot is empty once
    CONSUMERS compute warpgroups have freed it)."""
    bufs = gl.allocate_shared_memory(desc.dtype, [SLOTS] + desc.block_type.shape, desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(SLOTS):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)
    return bufs, ready, empty


BT = 64  # chunk = tile size
SLOTS = 24  # the persistent kernels' ring of 64 x 64 16-bit tiles in shared memory: 192 KB


@gluon.jit
def program_items(n_items):
    """How many of the n_items work items this persistent program takes (items pid, pid + programs, ...)."""
    return gl.cdiv(n_items - gl.program_id(0), gl.num_programs(0))


@gluon.jit
def program_item(it):
    """This persistent program's it-th work item."""
    return gl.program_id(0) + it * gl.num_programs(0)


@gluon.jit
def item_coords(item, T, NT, H: gl.constexpr):
    """(first token of the item's sequence, chunk in it, head, global chunk number) of item = global chunk * H + head."""
    i_h = item % H
    i_c = item // H
    i_b = i_c // NT
    return i_b * T, i_c % NT, i_h, i_c


@gluon.jit
def item_rows(item, T, NT, H: gl.constexpr, K: gl.constexpr):
    """(first row of the item's chunk in the (B·T, H·D) token views, first row of its state in the (chunks·H·K, V)
    state views, head): where a loader's tiles of the item start."""
    bos, i_t, i_h, i_c = item_coords(item, T, NT, H)
    return bos + i_t * 64, (i_c * H + i_h) * K, i_h


@gluon.jit
def issue_tile(desc, r, c, bufs, ready, empty, j, SLOTS: gl.constexpr):
    """Load the tile at (r, c) of desc into ring slot j % SLOTS once the compute warps have freed it."""
    s = j % SLOTS
    mbarrier.wait(empty.index(s), ((j // SLOTS) & 1) ^ 1)
    mbarrier.expect(ready.index(s), desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [r, c], ready.index(s), bufs.index(s))


@gluon.jit
def issue_pairs(a_desc, b_desc, row, col, bufs, ready, empty, j, SLOTS: gl.constexpr):
    """Tiles j .. j + 3: the 64-column halves of a and b at (row, col), interleaved (a, b, a + 64, b + 64)."""
    issue_tile(a_desc, row, col, bufs, ready, empty, j, SLOTS)
    issue_tile(b_desc, row, col, bufs, ready, empty, j + 1, SLOTS)
    issue_tile(a_desc, row, col + 64, bufs, ready, empty, j + 2, SLOTS)
    issue_tile(b_desc, row, col + 64, bufs, ready, empty, j + 3, SLOTS)


@gluon.jit
def issue_halves(desc, row, col, bufs, ready, empty, j, SLOTS: gl.constexpr):
    """Tiles j, j + 1: the two 64-column halves of desc at (row, col)."""
    issue_tile(desc, row, col, bufs, ready, empty, j, SLOTS)
    issue_tile(desc, row, col + 64, bufs, ready, empty, j + 1, SLOTS)


@gluon.jit
def issue_state(desc, hrow, bufs, ready, empty, j, SLOTS: gl.constexpr):
    """Tiles j .. j + 3: the four 64 x 64 blocks of a 128 x 128 state at row hrow, row-major (keys 0..63 first)."""
    issue_halves(desc, hrow, 0, bufs, ready, empty, j, SLOTS)
    issue_halves(desc, hrow + 64, 0, bufs, ready, empty, j + 2, SLOTS)


@gluon.jit
def take_tile(bufs, ready, j, SLOTS: gl.constexpr):
    """Wait for tile j and return its slot."""
    s = j % SLOTS
    mbarrier.wait(ready.index(s), (j // SLOTS) & 1)
    return bufs.index(s)


@gluon.jit
def free_tile(empty, j, SLOTS: gl.constexpr):
    fence_async_shared()
    mbarrier.arrive(empty.index(j % SLOTS), count=1)


@gluon.jit
def mma2(a0, b0, a1, b1):
    """a0 b0 + a1 b1 for 64 x 64 shared-memory operands, float32 [64, 64] in the wgmma layout."""
    acc = warpgroup_mma(a0, b0, gl.zeros([64, 64], gl.float32, MMA), use_acc=False, is_async=True)
    return warpgroup_mma(a1, b1, acc, is_async=True)


@gluon.jit
def store_tile(ptr, row0, n_rows, stride, col0, x):
    """Store x [64, 64] (any layout) at ptr + (row0 + r) * stride + col0 + c for the rows r < n_rows, in 16-byte
    pieces: converted to a row-major layout first, so that no thread holds 64-bit addresses for 32 scattered pairs."""
    wide: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    y = gl.convert_layout(x.to(ptr.dtype.element_ty), wide)
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, wide))
    c = gl.arange(0, 64, layout=gl.SliceLayout(0, wide))
    gl.store(ptr + ((row0 + r[:, None]) * stride + col0 + c[None, :]), y, mask=(r[:, None] < n_rows) & (c[None, :] < 64))
