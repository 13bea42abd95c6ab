"""CPU timings of the ops: the naive token loop against the chunked form, forward only.

Run `python -m benchmarks.ops_cpu`; prints a markdown table and writes benchmarks/results/ops_cpu.json.
To time another op, append `Case`s to CASES: a callable building the op's inputs and the op itself.
"""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops import (
    MemorySpec, delta_rule, dplr_delta_rule, forgetting_attention, linear_recurrence, linear_scan, log_linear_scan, mlstm,
    neural_memory, prefix_attention, selective_scan,
)

RESULTS = Path(__file__).parent / "results" / "ops_cpu.json"
IMPLS = ("naive", "chunk")
REPEATS = 5
MAX_RELATIVE_ERROR = 1e-4  # float32, chunk against naive
SHAPE = dict(B=2, T=2048, H=4, K=64, V=64)


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    fn: Callable[..., tuple[Tensor, ...]]  # called as fn(**inputs, impl=...); the first output is compared
    make_inputs: Callable[[torch.Generator], dict[str, object]]  # keyword arguments of fn: tensors, options


def linear_recurrence_inputs(gate: str) -> Callable[[torch.Generator], dict[str, Tensor | None]]:
    """q, k, v (B, T, H, K|V) and a log decay g: none, scalar (B, T, H) or vector (B, T, H, K, GLA-like)."""

    def make(rng: torch.Generator) -> dict[str, Tensor | None]:
        B, T, H, K, V = SHAPE.values()
        q, k = torch.randn(B, T, H, K, generator=rng), torch.randn(B, T, H, K, generator=rng)
        v = torch.randn(B, T, H, V, generator=rng)
        g = {
            "none": None,
            "scalar": F.logsigmoid(torch.randn(B, T, H, generator=rng) + 3),
            "vector": F.logsigmoid(torch.randn(B, T, H, K, generator=rng)) / 16,
        }[gate]
        return dict(q=q, k=k, v=v, g=g)

    return make


CASES = [Case("linear_recurrence", gate, linear_recurrence, linear_recurrence_inputs(gate)) for gate in ("none", "scalar", "vector")]


def mlstm_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """q, k, v (B, T, H, K|V) and the mLSTM gate pre-activations i, f (B, T, H), forget gates near sigmoid(3)."""
    B, T, H, K, V = SHAPE.values()
    q, k, v = (torch.randn(B, T, H, D, generator=rng) for D in (K, K, V))
    return dict(q=q, k=k, v=v, i=torch.randn(B, T, H, generator=rng), f=torch.randn(B, T, H, generator=rng) + 3)


CASES.append(Case("mlstm", "sigmoid forget gate", mlstm, mlstm_inputs))


def delta_rule_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """q, L2-normalised k (B, T, H, K), v (B, T, H, V), beta in (0, 1) and a scalar log decay (B, T, H), Gated-DeltaNet-like."""
    B, T, H, K, V = SHAPE.values()
    q, k, v = (torch.randn(B, T, H, D, generator=rng) for D in (K, K, V))
    return dict(q=q, k=F.normalize(k, dim=-1), v=v, beta=torch.rand(B, T, H, generator=rng),
                g=F.logsigmoid(torch.randn(B, T, H, generator=rng) + 3))


def dplr_delta_rule_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """RWKV-7-like: a = -kappa, b = kappa * eta (kappa L2-normalised, eta in (0, 1)), log decay in (-0.61, 0) per channel."""
    B, T, H, K, V = SHAPE.values()
    q, k, kappa = (torch.randn(B, T, H, K, generator=rng) for _ in range(3))
    kappa = F.normalize(kappa, dim=-1)
    eta, w = torch.rand(B, T, H, K, generator=rng), torch.randn(B, T, H, K, generator=rng)
    return dict(q=q, k=k, v=torch.randn(B, T, H, V, generator=rng), a=-kappa, b=kappa * eta, g=-0.6065 * torch.sigmoid(w - 2))


CASES.append(Case("delta_rule", "gated", delta_rule, delta_rule_inputs))
CASES.append(Case("dplr_delta_rule", "RWKV-7-like", dplr_delta_rule, dplr_delta_rule_inputs))


SCAN_SHAPE = dict(B=2, T=2048, D=256)  # elementwise recurrences: (B, T, D) channels
MAMBA_SHAPE = dict(B=2, T=2048, D=128, N=16)  # Mamba-1 at d_model = 64: d_inner = 128 channels, 16 states each


def selective_scan_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """Mamba-1: u, delta (B, D, T) with delta = softplus(. - 3) ~ 0.05, A = -(1..N) per channel (S4D-real), B, C (B, N, T)."""
    B, T, D, N = MAMBA_SHAPE.values()
    return dict(u=torch.randn(B, D, T, generator=rng), delta=F.softplus(torch.randn(B, D, T, generator=rng) - 3),
                A=-torch.arange(1.0, N + 1).repeat(D, 1), B=torch.randn(B, N, T, generator=rng), C=torch.randn(B, N, T, generator=rng))


def linear_scan_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """RG-LRU / HGRN-like: decays a = sigmoid(. + 2) in (0, 1) and inputs b, (B, T, D)."""
    B, T, D = SCAN_SHAPE.values()
    return dict(a=torch.sigmoid(torch.randn(B, T, D, generator=rng) + 2), b=torch.randn(B, T, D, generator=rng))


def log_linear_scan_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """minGRU: log(1 - z) = -softplus(k), log(z h~) = -softplus(-k) + log(h~) with h~ in (0.5, 1.5), (B, T, D)."""
    B, T, D = SCAN_SHAPE.values()
    k = torch.randn(B, T, D, generator=rng)
    return dict(log_a=-F.softplus(k), log_b=-F.softplus(-k) + torch.log(torch.rand(B, T, D, generator=rng) + 0.5))


def forgetting_attention_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """FoX: q, k, v (B, T, H, K|V) and log forget gates logsigmoid(. + 3) (B, T, H)."""
    B, T, H, K, V = SHAPE.values()
    q, k, v = (torch.randn(B, T, H, D, generator=rng) for D in (K, K, V))
    return dict(q=q, k=k, v=v, log_f=F.logsigmoid(torch.randn(B, T, H, generator=rng) + 3))


TITANS_MEMORY = MemorySpec(key_dim=SHAPE["K"], value_dim=SHAPE["V"], kind="mlp", hidden=SHAPE["K"], depth=2)


def neural_memory_inputs(rng: torch.Generator) -> dict[str, object]:
    """Titans' memory (2-layer MLP, L2 loss, momentum, decay), chunks of 16: L2-normalised q, k, v (B, T, H, K|V),
    step size 0.05 sigmoid(.), retention and momentum near sigmoid(3) / 0.5, random initial weights (H, ...)."""
    B, T, H, K, V = SHAPE.values()
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=rng), dim=-1) for _ in range(2))
    gate = lambda shift: torch.randn(B, T, H, generator=rng) + shift  # noqa: E731
    weights = [torch.randn(H, *shape, generator=rng) / shape[-1] ** 0.5 for shape in TITANS_MEMORY.shapes]
    return dict(q=q, k=k, v=torch.randn(B, T, H, V, generator=rng), theta=0.05 * torch.sigmoid(gate(0)),
                log_r=F.logsigmoid(gate(3)), log_eta=F.logsigmoid(gate(0)), spec=TITANS_MEMORY, initial_weights=weights)


def prefix_attention_inputs(rng: torch.Generator) -> dict[str, Tensor]:
    """Aaren: scores s (B, T, H) of a learned query against every key, values v (B, T, H, V)."""
    B, T, H, K, V = SHAPE.values()
    return dict(s=torch.randn(B, T, H, generator=rng) * 2, v=torch.randn(B, T, H, V, generator=rng))


CASES.append(Case("prefix_attention", "Aaren, prefix softmax", prefix_attention, prefix_attention_inputs))
CASES.append(Case("forgetting_attention", "FoX, blockwise vs full T x T", forgetting_attention, forgetting_attention_inputs))
CASES.append(Case("neural_memory", "Titans MLP memory, chunks of 16", neural_memory, neural_memory_inputs))
CASES.append(Case("selective_scan", "Mamba-1, D=128, N=16", selective_scan, selective_scan_inputs))
CASES.append(Case("linear_scan", "real, D=256", linear_scan, linear_scan_inputs))
CASES.append(Case("log_linear_scan", "minGRU, D=256", log_linear_scan, log_linear_scan_inputs))


def median_ms(fn: Callable[[], object]) -> float:
    """Median wall time of `fn` over REPEATS runs after a warm-up run."""
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def measure(case: Case) -> dict[str, object]:
    inputs = case.make_inputs(torch.Generator().manual_seed(0))
    outputs = {impl: case.fn(**inputs, impl=impl)[0] for impl in IMPLS}
    error = ((outputs["chunk"] - outputs["naive"]).norm() / outputs["naive"].norm()).item()
    if not error < MAX_RELATIVE_ERROR:
        raise AssertionError(f"{case.op}/{case.name}: chunk differs from naive by {error:.2e} (relative)")
    ms = {impl: median_ms(partial(case.fn, **inputs, impl=impl)) for impl in IMPLS}
    return dict(op=case.op, case=case.name, naive_ms=ms["naive"], chunk_ms=ms["chunk"],
                speedup=ms["naive"] / ms["chunk"], relative_error=error)


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| op | case | naive ms | chunk ms | speedup |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['case']} | {r['naive_ms']:.1f} | {r['chunk_ms']:.1f} | {r['speedup']:.1f}x |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    rows = [measure(case) for case in CASES]
    load = os.getloadavg()  # 1, 5 and 15 minutes: other jobs on the machine skew the timings
    print(f"forward, float32, {SHAPE}, median of {REPEATS}, {torch.get_num_threads()} threads, load average {load[0]:.1f}\n")
    print(markdown(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        cpu=dict(processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                 torch_threads=torch.get_num_threads(), load_average=load),
        shape=SHAPE, dtype="float32", repeats=REPEATS, results=rows,
    )
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
