"""Training-step time of the speech app's separators, eager against CUDA graphs (apps.common.cuda_graphs), on one GPU.

    python -m benchmarks.training_step [--models attention mamba2 gated_deltanet convtasnet] [--batch 16] [--seconds 2]

One step: the model on a batch of mixtures under bf16 autocast (as `trainer=gpu`), the PIT SI-SNR loss, backward,
gradient clipping and AdamW, the work of one step of `python -m apps.speech train` without Lightning's own
bookkeeping. Each step is timed on the host with the GPU synchronised after it (the step is the unit a training
loop waits for), median of --steps steps after 3 warm-up ones, on random audio. The graphs' first step (the capture)
is a warm-up step. Correctness in the same run: from the same weights and batch, the graphed step's loss and
gradients against the eager step's (relative error). Prints a table and writes
benchmarks/results/training_step_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
import triton

from apps.common.cuda_graphs import GraphedForward
from apps.speech.task import build_model, pit_si_snr_loss
from benchmarks.speech_separation import MODELS, RESULTS, compose_config


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(compose_config(MODELS[name])).cuda()


def loss_and_grads(model: torch.nn.Module, mixture: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.autocast("cuda", torch.bfloat16):
        loss = pit_si_snr_loss(model(mixture).float(), sources)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def step_times(model: torch.nn.Module, mixture: torch.Tensor, sources: torch.Tensor, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    times = []
    for i in range(steps + 3):
        started = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            loss = pit_si_snr_loss(model(mixture).float(), sources)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(1e3 * (time.perf_counter() - started))
    return times


def measure(name: str, batch: int, samples: int, steps: int) -> dict:
    generator = torch.Generator("cuda").manual_seed(1)
    sources = 0.1 * torch.randn(batch, 2, samples, device="cuda", generator=generator)
    mixture = sources.sum(1)
    eager_model, graphed_model = build(name), build(name)
    graphed = GraphedForward.install(graphed_model)
    loss, grads = loss_and_grads(eager_model, mixture, sources)
    graphed_loss, graphed_grads = loss_and_grads(graphed_model, mixture, sources)  # captures, then replays
    assert graphed.replays == 1, "the graph did not replay"
    eager = step_times(eager_model, mixture, sources, steps)
    replayed = step_times(graphed_model, mixture, sources, steps)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in eager_model.parameters()),
        "eager_ms": statistics.median(eager),
        "graphs_ms": statistics.median(replayed),
        "loss_rel_error": relative_error(graphed_loss, loss),
        "worst_grad_rel_error": max(relative_error(g, e) for g, e in zip(graphed_grads, grads)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="mixture length at 8 kHz")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and mode")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.training_step times CUDA graphs: it needs a CUDA device")
    rows = [measure(name, args.batch, int(8000 * args.seconds), args.steps) for name in args.models]
    device = torch.cuda.get_device_name()
    lines = [
        f"training step, B{args.batch} x {args.seconds:g} s at 8 kHz, bf16 autocast, median of {args.steps} steps; {device}, "
        f"torch {torch.__version__}, triton {triton.__version__}, {datetime.date.today()}",
        "| model | parameters | eager ms | CUDA graphs ms | speed-up | loss / worst gradient rel. error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['eager_ms']:.1f} | {r['graphs_ms']:.1f} | "
                     f"{r['eager_ms'] / r['graphs_ms']:.2f}x | {r['loss_rel_error']:.1e} / {r['worst_grad_rel_error']:.1e} |")  # fmt: skip
    print("\n".join(lines))
    info = {"device": device, "torch": torch.__version__, "triton": triton.__version__, "date": datetime.date.today().isoformat(),
            "batch": args.batch, "seconds": args.seconds, "steps": args.steps, "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"training_step_{device.replace(' ', '_')}_{info['date']}.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
