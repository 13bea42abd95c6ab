"""Inputs of each op, the implementations compared (ours, fla, SDPA, our torch chunk form) and the float32 reference."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.kernels.shapes import FLA_FUNCTIONS, OUR_FUNCTIONS, Shape


def make_inputs(op: str, shape: Shape, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """Random non-zero inputs of `op`, the same for every impl (seeded by op and shape): q, k, v, dO in
    `dtype`; keys L2-normalised for the delta rule; beta = sigmoid(x) in (0, 1) in `dtype`; g fp32:
    logsigmoid(x) [B, T, H] for lr_scalar and gated_delta, logsigmoid(x) / 16 [B, T, H, K] for gla."""
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(f"{op}/{shape.name}".encode()))

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    inputs = {"q": randn(B, T, H, D).to(dtype), "k": randn(B, T, H, D), "v": randn(B, T, H, D).to(dtype)}
    inputs["k"] = (F.normalize(inputs["k"], dim=-1) if op in ("delta", "gated_delta") else inputs["k"]).to(dtype)
    if op in ("lr_scalar", "gated_delta"):
        inputs["g"] = F.logsigmoid(randn(B, T, H))
    elif op == "gla":
        inputs["g"] = F.logsigmoid(randn(B, T, H, D)) / 16
    if op in ("delta", "gated_delta"):
        inputs["beta"] = torch.sigmoid(randn(B, T, H)).to(dtype)
    inputs["do"] = randn(B, T, H, D).to(dtype)
    return inputs


def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def implementation(op: str, impl: str) -> tuple[Callable, Callable | None]:
    """(fn(q, k, v, g=None, beta=None, scale) -> o, supports(inputs) -> (bool, why) or None) of an impl."""
    if impl.startswith("sdpa"):  # "sdpa": PyTorch's own backend choice (cuDNN on an H100); "sdpa_flash": FlashAttention-2
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa(q, k, v, scale, **_):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if impl == "sdpa_flash" else nullcontext():
                o = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True, scale=scale)
            return o.transpose(1, 2)

        return sdpa, None
    delta = op in ("delta", "gated_delta")
    if impl == "torch_chunk":
        return _torch_chunk(op), None
    if impl == "ours":
        fn = _import(OUR_FUNCTIONS[op])
        supports = _import(OUR_FUNCTIONS[op].rsplit(".", 1)[0] + ".supports")
        if delta:
            def ours(q, k, v, scale, beta, g=None):
                return fn(q, k, v, beta, g, scale=scale)[0]

            def check(x):
                return supports(x["q"], x["v"]), "kernels.delta_rule.supports(q, v) is False"
        else:
            def ours(q, k, v, scale, g=None):
                return fn(q, k, v, g, scale=scale)[0]

            def check(x):
                g = x.get("g")
                shape = "None" if g is None else f"{g.dim()}-D g {tuple(g.shape)} {g.dtype}"
                return supports(x["q"], x["v"], g), f"kernels.linear_recurrence.supports(q, v, g) is False for {shape}"
        return ours, check
    if impl == "fla":
        fn = _import(FLA_FUNCTIONS[op])
        calls = {
            "lr_none": lambda q, k, v, scale, **_: fn(q, k, v, scale=scale, normalize=False)[0],
            "lr_scalar": lambda q, k, v, scale, g, **_: fn(q, k, v, g=g, scale=scale)[0],
            "gla": lambda q, k, v, scale, g, **_: fn(q, k, v, g, scale=scale)[0],
            "delta": lambda q, k, v, scale, beta, **_: fn(q, k, v, beta, scale=scale)[0],
            "gated_delta": lambda q, k, v, scale, g, beta, **_: fn(q, k, v, g, beta, scale=scale)[0],
        }
        return calls[op], None
    raise ValueError(f"unknown impl {impl!r}")


def _torch_chunk(op: str) -> Callable:
    """Our PyTorch chunk form (core.ops ... chunk) with the kernels' call signature (g None -> zeros)."""
    from core.ops.delta_rule.chunk import chunk_delta_rule
    from core.ops.linear_recurrence.chunk import chunk_linear_recurrence

    def zeros_if_none(g, q):
        return torch.zeros(q.shape[:3], device=q.device) if g is None else g

    if op in ("delta", "gated_delta"):
        return lambda q, k, v, scale, beta, g=None: chunk_delta_rule(q, k, v, beta, zeros_if_none(g, q), scale, None, False)[0]
    return lambda q, k, v, scale, g=None: chunk_linear_recurrence(q, k, v, zeros_if_none(g, q), scale, None, False)[0]


LEAVES = ("q", "k", "v", "g", "beta")


def reference(op: str, inputs: dict, scale: float) -> dict:
    """Output and gradients of our chunk form on float32 upcasts (TF32 off), for the relative errors."""
    leaves = {n: inputs[n].float().requires_grad_() for n in LEAVES if n in inputs}
    o = _torch_chunk(op)(**leaves, scale=scale)
    grads = torch.autograd.grad(o, list(leaves.values()), inputs["do"].float())
    return {"o": o.detach(), **{f"d{n}": g for n, g in zip(leaves, grads)}}


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref).norm() / ref.norm()).item()
