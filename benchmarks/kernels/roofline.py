"""The roofline model of each op: minimum bytes moved and FLOPs, and the rates a time achieves against it."""

from __future__ import annotations

import math

import torch

from benchmarks.kernels.shapes import CHUNK, SUB_CHUNK, Shape
from kernels.common.config import multiprocessors
from kernels.delta_rule.chunk import output_in_state_pass

H100_MULTIPROCESSORS = 132  # what the model assumes without a GPU


def roofline_model(op: str, shape: Shape, chunk: int = CHUNK, sub_chunk: int = SUB_CHUNK, sms: int | None = None) -> dict:
    """Minimum bytes and FLOPs of an op's forward and forward + backward at bf16 (g fp32, beta bf16).

    Bytes: every input read once, every output written once (forward: q, k, v, g, beta in, o out;
    backward: q, k, v, g, beta, dO in, their gradients out); SDPA also writes and reads its fp32
    log-sum-exp. FLOPs: the matmuls of the chunked algorithm, per (chunk of C = 64 tokens, head),
    with 2CKV for a [C, K] x [K, V] product (from kernels/linear_recurrence/README.md and
    kernels/delta_rule/README.md):
    - linear recurrence, forward: state update, Q h (2 x 2CKV), Q K^T (2C^2K), A V (2C^2V); backward:
      recomputed state, dh, K dh, dO h^T, V dh^T (5 x 2CKV), four C^2K and three C^2V products.
    - GLA (decay per key channel): the same matmul FLOPs as the scalar decay, plus the sub-chunk work
      of the score matrix: its diagonal S x S blocks (S = 16, fla's sub-chunk; in the sub-chunk dots, or
      elementwise where the gate is steep), 2 FLOPs per (pair, channel), 2CSK per chunk forward and twice
      that backward (dq, dk); exps and the O(CK) gate scalings are not counted.
    - delta rule, forward: K K^T, K h, U~ = T X (X = Diag(beta) (V - e^gamma K h)), the state update, Q h, Q K^T,
      A U~ (3 x 2CKV + 2 x 2C^2K + 2 x 2C^2V); backward 2.5 x the forward.
    - causal attention: 4 T(T+1)/2 D per (batch, head) forward (Q K^T and P V over the causal half),
      2.5 x that backward (Q K^T recomputed, dV, dP, dQ, dK).
    The gate of lr_scalar and gated_delta adds g [B, T, H] fp32; gla's g is [B, T, H, K] fp32.
    `*_bytes_scheduled` is what our kernels move as scheduled (per-chunk states h, dh, GLA's scores A,
    T written and read back, recomputation; since session 15 the backward reads the h (and the delta rule's U~) that
    the forward wrote, where it wrote them, instead of running the state pass again), from the same READMEs; for the delta rule it depends on the
    kernels' launch choices, and so on `sms`, the GPU's multiprocessor count (None: the current GPU's, or an H100's).
    """
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    K = V = D
    n = B * T * H  # token-heads
    e, e32 = 2, 4  # bytes of bf16, fp32
    chunks = B * H * math.ceil(T / chunk)
    ckv, cck, ccv = 2 * chunk * K * V, 2 * chunk * chunk * K, 2 * chunk * chunk * V
    q = k = n * K * e
    v = o = n * V * e
    g = {"lr_scalar": n * e32, "gated_delta": n * e32, "gla": n * K * e32}.get(op, 0)
    model: dict = {"op": op, "shape": shape.name, "chunk": chunk}
    if op == "attention":
        lse = n * e32
        fwd_bytes = q + k + v + o + lse
        bwd_bytes = q + k + v + o + o + lse + q + k + v  # read q, k, v, o, dO, lse; write dq, dk, dv
        fwd_flops = B * H * 4 * D * T * (T + 1) // 2
        bwd_flops = int(2.5 * fwd_flops)
    elif op in ("lr_none", "lr_scalar", "gla"):
        fwd_bytes = q + k + v + g + o
        bwd_bytes = q + k + v + g + o + q + k + v + g  # read q, k, v, g, dO; write dq, dk, dv, dg
        fwd_flops = chunks * (2 * ckv + cck + ccv)
        bwd_flops = chunks * (5 * ckv + 4 * cck + 3 * ccv)
        if op == "gla":
            fwd_flops += chunks * 2 * chunk * sub_chunk * K
            bwd_flops += chunks * 4 * chunk * sub_chunk * K
            # as scheduled (kernels/linear_recurrence/README.md, session 11): gamma (gc, fp32 like g) computed once
            # and saved; A (fp32 [B, T, H, C]) saved; h recomputed; dq, dk's intra-chunk parts through fp32 buffers
            h, A, gc = chunks * K * V * e, n * chunk * e32, g
            state = k + v + gc + h  # read k, v, gamma; write h
            fwd_sched = (g + gc) + state + (q + k + gc + A) + (q + h + gc + A + v + o)  # cumsum, states, A, output
            model["fwd_bytes_scheduled"] = fwd_sched
            model["fwdbwd_bytes_scheduled"] = fwd_sched + (  # h kept from the forward (since session 15)
                q + v + gc + h  # reverse pass: read q, dO, gamma; write dh
                + k + h + gc + A + v + v  # dv: read k, dh, gamma, A, dO; write dv
                + q + k + 2 * v + gc + 2 * gc  # intra-chunk dq, dk: read q, k, v, dO, gamma; write two fp32 buffers
                + q + k + 2 * v + gc + 2 * h + 2 * gc + q + k + g  # dq, dk, dg: read those, h, dh; write dq, dk, dg
            )
        else:
            h = chunks * K * V * e  # per-chunk states
            qkv = q + k + v
            model["fwd_bytes_scheduled"] = fwd_bytes + 2 * h  # h written and read
            # h read again (kept from the forward since session 15: no state pass reading k, v and writing h),
            # dh (write + 2 reads), q, k, v, dO re-read by each pass
            model["fwdbwd_bytes_scheduled"] = model["fwd_bytes_scheduled"] + bwd_bytes + 2 * h + 2 * h + 3 * qkv - k - v
    elif op in ("delta", "gated_delta"):
        beta = n * e
        fwd_bytes = q + k + v + beta + g + o
        bwd_bytes = q + k + v + o + beta + g + q + k + v + beta + g  # read q, k, v, dO, beta, g; write their gradients
        fwd_flops = chunks * (3 * ckv + 2 * cck + 2 * ccv)
        bwd_flops = int(2.5 * fwd_flops)
        h, tm, gb = chunks * K * V * e, chunks * chunk * chunk * e32, beta + g  # states; T (fp32)
        dg_tiles = math.ceil(K / 64) * n * e32 if g else 0  # the dQ/dK/dg kernel's dg share per 64-wide K tile
        inverse = k + gb + tm  # read k, beta, g; write T
        state_in = k + v + gb + tm  # the state pass reads k, v, beta, g, T
        if sms is None:
            sms = multiprocessors(torch.device("cuda")) if torch.cuda.is_available() else H100_MULTIPROCESSORS
        fused = output_in_state_pass(op == "gated_delta", K, V, B * H, sms)
        if fused:
            fwd_sched = inverse + state_in + q + o  # the state pass also reads q and writes o
        else:
            fwd_sched = inverse + state_in + h + v + q + k + v + h + o  # writes h, U~; the output reads q, k, U~, h
        bwd_sched = (
            (state_in + h + v if fused else 0)  # the state pass again (from the saved T) where the forward kept no h, U~
            + q + k + v + v  # chunk-local dU~: read q, k, dO; write it
            + q + k + gb + tm + v + v + h + v  # reverse pass: read q, k, beta, g, T, dO, local dU~; write dh, dX
            + q + k + 2 * v + 2 * h + q + k + dg_tiles  # dQ/dK/dg: read q, k, U~, dO, h, dh; write dq, dk's part, dg's parts
            + 2 * k + v + gb + v + v + h + k + dg_tiles + k + v + gb  # WY backward: read k (twice), v, beta, g, U~,
            # dX, h, dk's part, dg's parts; write dk, dv, dbeta, dg
        )
        model["fwd_bytes_scheduled"] = fwd_sched
        model["fwdbwd_bytes_scheduled"] = fwd_sched + bwd_sched
    else:
        raise ValueError(f"no roofline model for op {op!r}")
    model.update(
        fwd_bytes=fwd_bytes, fwd_flops=fwd_flops,
        fwdbwd_bytes=fwd_bytes + bwd_bytes, fwdbwd_flops=fwd_flops + bwd_flops,
    )
    return model


def achieved(model: dict, phase: str, ms: float, shape: Shape, ceilings: dict | None) -> dict:
    """tokens/s, bytes/s and FLOP/s of the model at `ms` for phase 'fwd' or 'fwdbwd', and, given the
    measured ceilings, the roofline floor max(bytes / bandwidth, FLOPs / matmul rate) and the fraction
    of it reached (floor / measured: 1 is the roofline)."""
    seconds = ms * 1e-3
    out = {
        "tokens_per_s": shape.tokens / seconds,
        "bytes_per_s": model[f"{phase}_bytes"] / seconds,
        "flops_per_s": model[f"{phase}_flops"] / seconds,
    }
    if ceilings:
        bandwidth, rate = ceilings["copy_bytes_per_s"], ceilings["bf16_matmul_flops_per_s"]
        floor_ms = 1e3 * max(model[f"{phase}_bytes"] / bandwidth, model[f"{phase}_flops"] / rate)
        out.update(floor_ms=floor_ms, roofline_fraction=floor_ms / ms,
                   bound="memory" if model[f"{phase}_bytes"] / bandwidth >= model[f"{phase}_flops"] / rate else "compute")
    return out
