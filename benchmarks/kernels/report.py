"""The markdown table of a run and its verdict against the issue's targets."""

from __future__ import annotations

from pathlib import Path

from benchmarks.kernels.shapes import DECODE_TARGET_US


def save_table(out: Path, stem: str, table: str, data_suffix: str, data: str) -> None:
    """Print a tool's markdown table and write it to out/stem.md, with its data in out/stem<data_suffix>."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}{data_suffix}").write_text(data)


def _fmt_ms(p: dict) -> str:
    return f"{p['ms']:.3f}" if p.get("status") == "ok" else p.get("status", "-")


def _fmt_rate(p: dict) -> str:
    if p.get("status") != "ok":
        return "-"
    text = f"{p['bytes_per_s'] / 1e12:.2f} TB/s, {p['flops_per_s'] / 1e12:.0f} TFLOP/s"
    return text + (f", {100 * p['roofline_fraction']:.0f} %" if "roofline_fraction" in p else "")


def _fmt_peak(row: dict) -> str:
    peaks = [f"{row[p]['peak_bytes'] / 2**30:.2f}" if "peak_bytes" in row[p] else "-" for p in ("fwd", "fwdbwd")]
    return " / ".join(peaks)


def _fmt_errors(errors: dict) -> str:
    if "o" not in errors:
        return "-"
    grads = [v for n, v in errors.items() if n != "o"]
    return f"{errors['o']:.1e} / " + (f"{max(grads):.1e}" if grads else "-")


def targets(result: dict) -> dict:
    """The issue's targets: decode under 10 us per layer at batch 1; our peak memory no higher than fla's
    (forward + backward where both ran, else forward)."""
    out: dict = {"decode_under_us": DECODE_TARGET_US, "decode": {}, "peak_memory_vs_fla": []}
    for op, r in (result.get("decode") or {}).items():
        if isinstance(r, dict) and "cuda_graph_us" in r:
            out["decode"][op] = r["meets_target"]
    rows = {(r["op"], r["shape"], r["impl"]): r for r in result.get("rows", [])}
    for (op, shape, impl), ours in rows.items():
        fla = rows.get((op, shape, "fla"))
        if impl != "ours" or fla is None:
            continue
        for phase in ("fwdbwd", "fwd"):
            if "peak_bytes" in ours[phase] and "peak_bytes" in fla[phase]:
                out["peak_memory_vs_fla"].append({
                    "op": op, "shape": shape, "phase": phase, "ours_bytes": ours[phase]["peak_bytes"],
                    "fla_bytes": fla[phase]["peak_bytes"], "met": ours[phase]["peak_bytes"] <= fla[phase]["peak_bytes"],
                })
                break
    return out


AUTOTUNED_CONFIGS, DEFAULT_CONFIGS = "autotuned", "defaults (SEQMIX_TRITON_AUTOTUNE=0)"  # how run.py says our configs were chosen
CONFIGS = {  # the report's wording for each
    AUTOTUNED_CONFIGS: "autotuning excluded",
    DEFAULT_CONFIGS: "our kernels with their default configs (SEQMIX_TRITON_AUTOTUNE=0), fla's autotuning excluded",
}


def markdown(result: dict) -> str:
    """The report: versions and ceilings, decode times, one table row per (op, shape, impl), targets."""
    v = result.get("versions", {})
    c = result.get("ceilings") or {}
    lines = [
        f"# Kernels: {result.get('device', '?')}, {result.get('date', '?')}",
        "",
        f"torch {v.get('torch')}, triton {v.get('triton')}, CUDA {v.get('cuda')}, fla {v.get('fla')}; bf16; "
        f"{result.get('timing', '')}; {CONFIGS[result.get('configs', AUTOTUNED_CONFIGS)]}.",
    ]
    if c:
        lines.append(f"Ceilings measured in the same run: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                     f"bf16 matmul {c['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s.")
    lines += [
        "",
        "Rates are the op's minimum bytes and FLOPs (the same model for every impl) over the measured time; "
        "% is the roofline floor max(bytes / copy bandwidth, FLOPs / matmul rate) over the measured time. "
        "Peak: CUDA memory above the inputs during one forward / forward + backward. Errors: relative RMS "
        "of o / the worst gradient against our chunk form on float32 upcasts.",
    ]
    decode = result.get("decode") or {}
    if any(isinstance(r, dict) for r in decode.values()):
        lines += ["", f"Decode step, {decode.get('shape')}, microseconds per layer (target < {DECODE_TARGET_US:g}):", "",
                  "| op | plain (CUDA events) | plain (host wall clock) | CUDA graph replay |", "| --- | --- | --- | --- |"]
        for op, r in decode.items():
            if isinstance(r, dict):
                cells = [f"{r[m]:.2f}" if m in r else r.get("status", "-") for m in ("events_us", "wall_us", "cuda_graph_us")]
                lines.append(f"| {op} | " + " | ".join(cells) + " |")
    notes: list[str] = []

    def note(text: str | None) -> str:
        if not text:
            return ""
        if text not in notes:
            notes.append(text)
        return f" [{notes.index(text) + 1}]"

    lines += ["", "| op | shape | impl | fwd ms | fwd+bwd ms | fwd Mtok/s | fwd+bwd Mtok/s | fwd rate | fwd+bwd rate | peak GiB fwd / fwd+bwd | rel. error o / grads |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result.get("rows", []):
        f, fb = row["fwd"], row["fwdbwd"]
        cells = [
            row["op"], row["shape"], row["impl"],
            _fmt_ms(f) + note(f.get("message")), _fmt_ms(fb) + note(fb.get("message") if fb.get("message") != f.get("message") else None),
            f"{f['tokens_per_s'] / 1e6:.1f}" if f.get("status") == "ok" else "-",
            f"{fb['tokens_per_s'] / 1e6:.1f}" if fb.get("status") == "ok" else "-",
            _fmt_rate(f), _fmt_rate(fb), _fmt_peak(row), _fmt_errors(row.get("errors_vs_float32_chunk", {})),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[{i + 1}] {text}" for i, text in enumerate(notes)]
    t = targets(result)
    lines += ["", "Targets:"]
    for op, met in t["decode"].items():
        lines.append(f"- decode {op} under {DECODE_TARGET_US:g} us: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in met.items()))
    for p in t["peak_memory_vs_fla"]:
        lines.append(f"- peak memory {p['op']} {p['shape']} ({p['phase']}): ours {p['ours_bytes'] / 2**30:.2f} GiB, "
                     f"fla {p['fla_bytes'] / 2**30:.2f} GiB: {'met' if p['met'] else 'not met'}")
    if not t["decode"] and not t["peak_memory_vs_fla"]:
        lines.append("- nothing to compare yet")
    return "\n".join(lines) + "\n"
