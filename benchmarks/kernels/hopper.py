"""Each Gluon kernel for Hopper against the Triton kernel it stands in for, alone, on the same random inputs.

    python -m benchmarks.kernels.hopper [--shapes B16_T2048_H16_D128 ...] [--out DIR]

The delta rule's forward (`_forward` as dispatched, its output compared: T, then the Gluon state pass with the
output in it where the dispatch takes it), the dQ/dK/dg pass (`dqk_pass`), the delta rule's state passes
(`_state_pass` without the output, `_reverse_pass` with its chunk-local dV; the Gluon kernels called directly, also
at shapes where the dispatch keeps Triton's) and its WY backward (`_wy_backward`), gated and not, bf16,
K = V = 128: median time (do_bench, CUDA events, warm-up excluded) with SEQMIX_GLUON=1 and =0 (Triton's default
configs: SEQMIX_TRITON_AUTOTUNE=0), and the relative RMS difference of their outputs. Prints a table and writes
DIR/hopper_kernels_<device>_<date>.{json,md} (default DIR benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch

from benchmarks.kernels.impls import rel_rms
from benchmarks.kernels.report import save_table
from benchmarks.kernels.shapes import parse_shape

RESULTS = Path(__file__).resolve().parents[1] / "results"


def inputs(B: int, T: int, H: int, gated: bool) -> dict:
    """Random bf16 inputs of both passes (the states h, dh and the WY pass's U~, dX, dK part as standard normals)."""
    from kernels.common.chunks import chunk_layout
    from kernels.common.cumsum import LOG2E, chunk_local_cumsum
    from kernels.delta_rule.chunk import _common, _inverse

    layout = chunk_layout(B, T, 64, None)
    x = {n: torch.randn(B, T, H, 128, device="cuda", dtype=torch.bfloat16) for n in ("q", "k", "v", "do", "u", "dx", "dk_part")}
    x["k"] = torch.nn.functional.normalize(x["k"].float(), dim=-1).to(torch.bfloat16)
    for n in ("h", "dh"):
        x[n] = torch.randn(layout.total_chunks, H, 128, 128, device="cuda", dtype=torch.bfloat16)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda") + 3) if gated else None
    x["gc"] = None if g is None else chunk_local_cumsum(g, layout, 64, scale=LOG2E)
    x["beta"] = torch.rand(B, T, H, device="cuda").to(torch.bfloat16)
    x["dg_lr"] = torch.randn(1, B, T, H, device="cuda") if gated else None
    common = _common(x["q"], x["v"], layout)
    x["Tm"] = _inverse(x["k"], x["beta"], x["gc"], layout, common)
    return x | {"layout": layout, "common": common}


def state_pass(x: dict, reverse: bool) -> tuple:
    """The delta rule's forward (without the output) or reverse state pass: the Gluon kernel itself under
    SEQMIX_GLUON=1, also at shapes where the dispatch keeps Triton's."""
    from kernels.delta_rule import state_hopper
    from kernels.delta_rule.chunk import _reverse_pass, _state_pass

    gluon = os.environ["SEQMIX_GLUON"] == "1"
    if not reverse:
        if gluon:
            return state_hopper.delta_h(x["k"], x["v"], x["beta"], x["gc"], x["Tm"], None, False)
        return _state_pass(x["k"], x["v"], x["beta"], x["gc"], x["Tm"], None, x["layout"], False, x["common"])
    args = (x["q"], x["k"], x["beta"], x["gc"], x["Tm"], x["do"], None, False, 128**-0.5)
    return state_hopper.delta_dh(*args) if gluon else _reverse_pass(*args, x["layout"], x["common"])


def compare(fn) -> tuple[float, float, float]:
    """(Gluon µs, Triton µs, worst relative RMS difference) of fn() -> tuple of tensors or None; a 4-D float32 last
    output is dg's shares (one from Gluon, one per K tile from Triton), compared summed."""
    import triton

    runs = {}
    for flag in ("1", "0"):
        os.environ["SEQMIX_GLUON"] = flag
        out = [o for o in fn() if o is not None]
        if out[-1].dim() == 4 and out[-1].dtype == torch.float32:
            out[-1] = out[-1].sum(0)
        runs[flag] = (1e3 * triton.testing.do_bench(fn, warmup=25, rep=200), out)
    os.environ.pop("SEQMIX_GLUON")
    worst = max(rel_rms(a.float(), b.float()) for a, b in zip(runs["1"][1], runs["0"][1]))
    return runs["1"][0], runs["0"][0], worst


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["B16_T2048_H16_D128", "B2_T16384_H16_D128"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9):
        raise SystemExit("benchmarks.kernels.hopper needs a Hopper GPU (H100, H200): the Gluon kernels run only there")
    os.environ["SEQMIX_TRITON_AUTOTUNE"] = "0"
    from kernels.delta_rule.chunk import _forward, _wy_backward
    from kernels.linear_recurrence.chunk import dqk_pass

    rows = []
    for name in args.shapes:
        shape = parse_shape(name)
        for gated in (True, False):
            x = inputs(shape.B, shape.T, shape.H, gated)
            passes = {
                "dQ/dK/dg": lambda: dqk_pass(x["q"], x["k"], x["v"], x["gc"], x["h"], x["do"], x["dh"], 128**-0.5, x["layout"]),
                "forward": lambda: _forward(x["q"], x["k"], x["v"], x["beta"], x["gc"], 128**-0.5, None, x["layout"], False,
                                            save=True, save_states=True)[:1],  # o
                "forward state pass": lambda: state_pass(x, reverse=False),
                "reverse state pass": lambda: state_pass(x, reverse=True),
                "WY backward": lambda: _wy_backward(x["k"], x["v"], x["beta"], x["gc"], x["h"], x["u"], x["dx"], x["dk_part"],
                                                    x["dg_lr"], torch.float32, x["layout"], x["common"]),
            }
            for kernel, fn in passes.items():
                gluon_us, triton_us, diff = compare(fn)
                rows.append({"shape": name, "pass": kernel, "gate": "scalar" if gated else "none", "gluon_us": round(gluon_us, 1),
                             "triton_us": round(triton_us, 1), "speedup": round(triton_us / gluon_us, 3), "rel_rms_diff": diff})
                print(f"{name} {kernel:18s} {rows[-1]['gate']:6s} Gluon {gluon_us:7.1f} µs  Triton {triton_us:7.1f} µs  "
                      f"difference {diff:.1e}", flush=True)
    device = torch.cuda.get_device_name()
    lines = [f"Gluon against Triton kernels, {device}, torch {torch.__version__}, {datetime.date.today()}: median µs (do_bench), "
             "bf16, K = V = 128, Triton's default configs; difference: worst relative RMS of the outputs", "",
             "| shape | pass | gate | Gluon µs | Triton µs | speed-up | difference |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['pass']} | {r['gate']} | {r['gluon_us']} | {r['triton_us']} | {r['speedup']}× | {r['rel_rms_diff']:.1e} |"
              for r in rows]
    save_table(args.out, f"hopper_kernels_{device.replace(' ', '_')}_{datetime.date.today()}", "\n".join(lines) + "\n", ".json",
               json.dumps({"device": device, "torch": torch.__version__, "date": str(datetime.date.today()), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
