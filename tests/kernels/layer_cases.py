"""Cases for the fused layer kernels (kernels.layers: causal convolution, gated RMSNorm) against core's "torch" forms.

Shared by the GPU tests and the CPU interpreter run (`python -m tests.kernels.layer_cases`, with TRITON_INTERPRET=1,
printing one JSON line per case). Each comparison draws float32 inputs, rounds them to the case dtype, and compares
the kernel on them with the torch form in float64 on the same values: relative RMS errors of the output and of every
gradient under a random linear loss.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import torch

from tests.kernels.cases import DTYPES, Result, rel_rms


@dataclass(frozen=True)
class ConvCase:
    B: int = 2
    T: int = 40
    C: int = 24
    K: int = 4
    dilation: int = 1
    state: bool = True
    bias: bool = True
    activation: str | None = "silu"
    dtype: str = "float32"
    strided: bool = False  # x a slice of a wider tensor (a projection's split), read in place
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [f"conv-B{self.B}-T{self.T}-C{self.C}-K{self.K}", self.dtype, str(self.activation)]
        parts += [f"dil{self.dilation}"] if self.dilation > 1 else []
        parts += ["h0"] if self.state else []
        parts += ["bias"] if self.bias else []
        parts += ["strided"] if self.strided else []
        return "-".join(parts)


@dataclass(frozen=True)
class NormCase:
    shape: tuple[int, ...] = (2, 30, 64)
    group_size: int | None = None
    gate: bool = True
    norm_before_gate: bool = True
    dtype: str = "float32"
    strided: bool = False  # x and z slices of one wider tensor (a projection's split), read in place
    seed: int = 0

    @property
    def name(self) -> str:
        parts = ["norm-" + "x".join(map(str, self.shape)), self.dtype, f"group{self.group_size}"]
        parts += [("before" if self.norm_before_gate else "after") + "-gate"] if self.gate else ["no-gate"]
        parts += ["strided"] if self.strided else []
        return "-".join(parts)


def _pieces(rng: torch.Generator, shape: tuple[int, ...], count: int, strided: bool) -> list[torch.Tensor]:
    """`count` float32 tensors of `shape`: slices of one tensor with a wider last dim when strided (the kernels read
    them in place when the width is a multiple of 16, else from an aligned copy)."""
    if not strided:
        return [torch.randn(shape, generator=rng) for _ in range(count)]
    wide = torch.randn(*shape[:-1], count * shape[-1] + 16, generator=rng)
    return [wide[..., i * shape[-1] : (i + 1) * shape[-1]] for i in range(count)]


def _errors(ours_fn, ref_fn, inputs: dict[str, torch.Tensor | None], dtype: torch.dtype, device: str, seed: int, result: Result) -> Result:
    """ours_fn(**inputs) with the inputs rounded to `dtype` (slices stay slices) against ref_fn on the same values in
    float64."""
    names = [n for n, x in inputs.items() if x is not None]
    ours = {n: None if x is None else _restride(x.to(device), dtype).requires_grad_() for n, x in inputs.items()}
    ref = {n: None if x is None else x.to(device=device, dtype=dtype).double().requires_grad_() for n, x in inputs.items()}
    y, y_ref = ours_fn(**ours), ref_fn(**ref)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    grads = torch.autograd.grad((y.double() * w).sum(), [ours[n] for n in names])
    ref_grads = torch.autograd.grad((y_ref * w).sum(), [ref[n] for n in names])
    result.errors["y"] = rel_rms(y, y_ref)
    for n, g, g_ref in zip(names, grads, ref_grads):
        assert g.shape == ours[n].shape and g.dtype == ours[n].dtype, n
        result.errors[f"d{n}"] = rel_rms(g, g_ref)
    return result


def _restride(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype` with x's strides (a slice stays a slice of a wider buffer)."""
    return torch.empty_strided(x.size(), x.stride(), dtype=dtype, device=x.device).copy_(x)


def compare_conv(case: ConvCase, device: str) -> Result:
    from core.ops.causal_conv import causal_conv
    from core.ops.causal_conv.triton import triton_causal_conv

    rng = torch.Generator().manual_seed(case.seed)
    (x,) = _pieces(rng, (case.B, case.T, case.C), 1, case.strided)
    width = (case.K - 1) * case.dilation
    inputs = dict(
        x=x,
        weight=torch.randn(case.K, case.C, generator=rng) / case.K**0.5,
        bias=torch.randn(case.C, generator=rng) if case.bias else None,
        state=torch.randn(case.B, width, case.C, generator=rng) if case.state else None,
    )

    def ours(x, weight, bias, state):  # the registered "triton" implementation, called as the op does (also on CPU)
        return triton_causal_conv(x, weight, bias, state, case.activation, case.dilation)

    def ref(x, weight, bias, state):
        return causal_conv(x, weight, bias, state, activation=case.activation, dilation=case.dilation, impl="torch")

    return _errors(ours, ref, inputs, DTYPES[case.dtype], device, case.seed, Result(case.name))


def compare_norm(case: NormCase, device: str) -> Result:
    from core.ops.gated_rms_norm import gated_rms_norm
    from core.ops.gated_rms_norm.triton import triton_gated_rms_norm

    rng = torch.Generator().manual_seed(case.seed)
    x, z = _pieces(rng, case.shape, 2, case.strided)
    inputs = dict(x=x, weight=1 + torch.randn(case.shape[-1], generator=rng) / 4, z=z if case.gate else None)

    group_size = case.group_size or case.shape[-1]

    def ours(x, weight, z):
        return triton_gated_rms_norm(x, weight, z, 1e-5, group_size, case.norm_before_gate)

    def ref(x, weight, z):
        return gated_rms_norm(x, weight, z, group_size=group_size, norm_before_gate=case.norm_before_gate, impl="torch")

    return _errors(ours, ref, inputs, DTYPES[case.dtype], device, case.seed, Result(case.name))


def compare(case: ConvCase | NormCase, device: str) -> Result:
    return compare_conv(case, device) if isinstance(case, ConvCase) else compare_norm(case, device)


def compiled_vs_eager(device: str) -> Result:
    """Both custom ops: `torch.library.opcheck` (schema, fake implementation, autograd; raises on failure), then
    torch.compile(fullgraph=True, backend="aot_eager") of a loss over a convolution and a norm, forward and backward,
    against eager: relative RMS differences of the loss and every gradient."""
    from kernels.layers import causal_conv, gated_rms_norm

    rng = torch.Generator().manual_seed(7)
    x, state = torch.randn(2, 9, 8, generator=rng), torch.randn(2, 3, 8, generator=rng)
    weight, bias, norm_weight = torch.randn(4, 8, generator=rng), torch.randn(8, generator=rng), torch.randn(8, generator=rng)
    inputs = {n: t.to(device) for n, t in dict(x=x, state=state, weight=weight, bias=bias, norm_weight=norm_weight).items()}
    leaves = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    torch.library.opcheck(torch.ops.seqmix.causal_conv.default, [leaves["x"], leaves["weight"], leaves["bias"], leaves["state"], True, 1])
    torch.library.opcheck(torch.ops.seqmix.causal_conv.default, [leaves["x"], leaves["weight"], None, None, False, 2])
    torch.library.opcheck(torch.ops.seqmix.gated_rms_norm.default, [leaves["x"], leaves["norm_weight"], leaves["state"][:, :1].expand(2, 9, 8).contiguous(), 1e-5, 4, False])
    torch.library.opcheck(torch.ops.seqmix.gated_rms_norm.default, [leaves["x"], leaves["norm_weight"], None, 1e-5, 8, True])

    def loss(t: dict[str, torch.Tensor]) -> torch.Tensor:
        y = causal_conv(t["x"], t["weight"], t["bias"], t["state"], silu=True)
        return gated_rms_norm(y, t["norm_weight"], t["x"], group_size=4).square().sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        leaves = {n: t.clone().requires_grad_() for n, t in inputs.items()}
        value = fn(leaves)
        results.append([value.detach(), *torch.autograd.grad(value, list(leaves.values()))])
    result = Result("compile-layers")
    for name, a, b in zip(["loss"] + [f"d{n}" for n in inputs], *results):
        result.errors[name] = rel_rms(a, b)
    return result


# Small enough for the interpreter; float32 and float16 (it computes bfloat16 wrongly; bfloat16 runs on the GPU).
CONV_CASES = [
    ConvCase(B=1, T=1, C=5),
    ConvCase(B=3, T=70, C=130, state=False, bias=False, seed=1),  # several time and channel tiles
    ConvCase(T=2, C=24, dtype="float16", seed=2),  # T shorter than the state
    ConvCase(T=33, C=16, K=1, state=False, seed=3),  # no history at all
    ConvCase(T=50, C=24, K=3, dilation=3, activation=None, seed=4),  # the dilated convolutions'
    ConvCase(T=45, C=40, strided=True, seed=5),  # a slice of 56 columns: copied
    ConvCase(T=64, C=32, activation=None, bias=False, dtype="float16", strided=True, seed=6),  # of 48: read in place
]
NORM_CASES = [
    NormCase(gate=False),
    NormCase(shape=(3, 17, 96), group_size=24, seed=1),  # groups narrower than a power of two
    NormCase(shape=(5, 80), norm_before_gate=False, seed=2),  # Mamba-2's: gate first, one group
    NormCase(shape=(2, 30, 64), group_size=32, norm_before_gate=False, dtype="float16", seed=3),
    NormCase(shape=(4, 9, 48), group_size=16, strided=True, seed=4),  # slices of 112 columns: read in place
    NormCase(shape=(300, 8), dtype="float16", strided=True, seed=5),  # several row tiles
    NormCase(shape=(6, 20), norm_before_gate=False, strided=True, seed=6),  # of 56: copied
]


def main() -> None:
    for case in CONV_CASES + NORM_CASES:
        print(json.dumps({**asdict(compare(case, "cpu")), "spec": asdict(case)}), flush=True)
    print(json.dumps(asdict(compiled_vs_eager("cpu"))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
