"""benchmarks/kernels on CPU: shape parsing, the roofline model, the table, the time budget, and the run's
control flow (JSON and markdown rewritten per row, --resume) with the CUDA calls faked and only the
PyTorch impls (chunk form, SDPA) on a tiny shape; it refuses to run without CUDA."""
import json
import time
from types import SimpleNamespace

import pytest
import torch
import triton.testing

from benchmarks.kernels import budget, impls, report, roofline, run
from benchmarks.kernels import shapes as shape_names
from benchmarks.kernels import measure as measuring
from benchmarks.kernels.roofline import roofline_model
from benchmarks.kernels.shapes import Shape, parse_shape, parse_shapes


def test_shapes_parse_by_name_and_by_set():
    assert parse_shape("B8_T4096_H16_D128") == Shape(8, 4096, 16, 128)
    assert parse_shape(" b1_t8192_h96_d128 ").name == "B1_T8192_H96_D128"
    assert [s.name for s in parse_shapes(["32k"])] == ["B16_T2048_H16_D128", "B8_T4096_H16_D128", "B2_T16384_H16_D128"]
    assert all(s.tokens == 32768 for s in parse_shapes(["32k"]))
    shapes = parse_shapes(["32k,fla", "B8_T4096_H16_D128"])  # repeats dropped, order kept
    assert [s.name for s in shapes] == [*shape_names.SHAPE_SETS["32k"], *shape_names.SHAPE_SETS["fla"]]
    for bad in ("8,4096,16,128", "B8_T4096_H16", "B0_T1_H1_D1", "huge"):
        with pytest.raises(ValueError):
            parse_shape(bad)


def test_arguments():
    args = run.parse_args(["--quick"])
    assert [s.name for s in args.shapes] == ["B8_T4096_H16_D128"] and args.ops == list(shape_names.OPS)
    assert args.impls == ["ours", "sdpa", "sdpa_flash", "fla"]
    args = run.parse_args(["--ops", "gla,delta", "--impls", "fla", "ours", "--torch-chunk", "--shapes", "fla"])
    assert args.ops == ["gla", "delta"] and args.impls == ["ours", "torch_chunk", "fla"] and len(args.shapes) == 3
    for bad in (["--ops", "mamba"], ["--impls", "cuda"], ["--shapes", "B1"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_plan_runs_fla_last_and_sdpa_only_on_attention():
    todo = run.plan(["lr_scalar", "attention", "decode"], parse_shapes(["B1_T64_H1_D16", "B2_T64_H1_D16"]), ["ours", "sdpa", "fla"])
    assert [(op, s.B, i) for op, s, i in todo] == [
        ("lr_scalar", 1, "ours"), ("attention", 1, "sdpa"), ("lr_scalar", 2, "ours"), ("attention", 2, "sdpa"),
        ("lr_scalar", 1, "fla"), ("lr_scalar", 2, "fla"),
    ]


def test_roofline_model_matches_the_kernel_readmes():
    s = Shape(8, 4096, 16, 128)  # the shape of the READMEs' roofline tables
    lr = roofline_model("lr_scalar", s)
    assert round(lr["fwd_flops"] / 1e9, 1) == 51.5 and round(lr["fwdbwd_flops"] / 1e9) == 198
    assert round(lr["fwd_bytes"] / 1e9, 2) == 0.54 and round(lr["fwdbwd_bytes"] / 1e9, 2) == 1.48
    # since session 15 the backward reads the forward's h: no state pass (k, v read, h written: 0.54 GB less than 4.57)
    assert round(lr["fwd_bytes_scheduled"] / 1e9, 2) == 1.08 and round(lr["fwdbwd_bytes_scheduled"] / 1e9, 2) == 4.03
    delta = roofline_model("gated_delta", s, sms=132)
    assert round(delta["fwd_flops"] / 1e9) == 86 and round(delta["fwdbwd_flops"] / 1e9) == 301
    assert round(delta["fwd_bytes"] / 1e9, 2) == 0.54 and round(delta["fwdbwd_bytes"] / 1e9, 2) == 1.49
    # as scheduled since session 13: T the only per-chunk tensor of the WY form (W and U never stored); since session 15
    # the backward reads the forward's h and U~ (k, v, beta, g, T read, h and U~ written: 0.81 GB less than 7.54); since
    # session 17 the WY backward reads U~ and dX, not T, and neither B^T's scratch nor dK's part through W goes through
    # memory (0.54 GB less than 6.735)
    assert delta["fwd_bytes_scheduled"] == pytest.approx(1.89e9, rel=3e-3) and delta["fwdbwd_bytes_scheduled"] == pytest.approx(6.198e9, rel=1e-3)
    # DeltaNet's output in the state pass (256 programs on 132 multiprocessors) saves h and U~ in the forward, not on a
    # larger GPU where the rule keeps the separate output kernel
    fused, separate = roofline_model("delta", s, sms=132), roofline_model("delta", s, sms=400)
    h, u = 8 * 16 * 64 * 128 * 128 * 2, 8 * 4096 * 16 * 128 * 2
    assert separate["fwd_bytes_scheduled"] - fused["fwd_bytes_scheduled"] == 2 * h + 2 * u + u  # h, U~ written, read; k read
    # no gate: the same FLOPs, g neither read nor written
    none = roofline_model("lr_none", s)
    assert none["fwdbwd_flops"] == lr["fwdbwd_flops"] and lr["fwdbwd_bytes"] - none["fwdbwd_bytes"] == 3 * 8 * 4096 * 16 * 4
    # per-channel decay: the scalar's matmul FLOPs plus the diagonal 16 x 16 sub-chunk blocks; g is [B, T, H, K] fp32
    gla = roofline_model("gla", s)
    chunks = 8 * 16 * 4096 // 64
    assert gla["fwd_flops"] - lr["fwd_flops"] == chunks * 2 * 64 * 16 * 128
    assert gla["fwdbwd_flops"] - lr["fwdbwd_flops"] == chunks * 6 * 64 * 16 * 128
    assert gla["fwd_bytes"] - none["fwd_bytes"] == 8 * 4096 * 16 * 128 * 4
    # as scheduled since session 11 (the README's pass-by-pass count, MB: forward 536 + 804 + 670 + 1072, backward
    # 804 + 804 + 1072 + 1340 + 2412), less the backward's state pass since session 15 (804: h kept from the forward)
    assert gla["fwd_bytes_scheduled"] == pytest.approx(3.082e9, rel=2e-3)
    assert gla["fwdbwd_bytes_scheduled"] == pytest.approx(8.710e9, rel=2e-3)
    # causal attention: 4 T (T + 1) / 2 D per (batch, head) forward, 2.5 x that backward
    att = roofline_model("attention", Shape(1, 4, 1, 2))
    assert att["fwd_flops"] == 4 * 10 * 2 and att["fwdbwd_flops"] == 80 + 200
    with pytest.raises(ValueError):
        roofline_model("decode", s)


def test_ragged_length_counts_a_partial_chunk_as_a_chunk():
    assert roofline_model("delta", Shape(1, 65, 1, 16))["fwd_flops"] == 2 * roofline_model("delta", Shape(1, 64, 1, 16))["fwd_flops"]


def test_achieved_rates_and_roofline_fraction():
    model = {"fwd_bytes": 3e9, "fwd_flops": 1e12}
    ceilings = {"copy_bytes_per_s": 3e12, "bf16_matmul_flops_per_s": 5e14}
    out = roofline.achieved(model, "fwd", 2.0, Shape(2, 1000, 1, 8), ceilings)  # floor: max(1 ms of traffic, 2 ms of math)
    assert out["tokens_per_s"] == pytest.approx(1e6) and out["bytes_per_s"] == pytest.approx(1.5e12)
    assert out["flops_per_s"] == pytest.approx(5e14) and out["floor_ms"] == pytest.approx(2.0)
    assert out["roofline_fraction"] == pytest.approx(1.0) and out["bound"] == "compute"
    assert "floor_ms" not in roofline.achieved(model, "fwd", 2.0, Shape(1, 1, 1, 8), None)


def test_inputs():
    x = impls.make_inputs("gated_delta", Shape(1, 5, 2, 8), device="cpu")
    assert x["q"].dtype == x["beta"].dtype == torch.bfloat16 and x["g"].dtype == torch.float32
    assert x["g"].shape == (1, 5, 2) and (x["g"] < 0).all() and ((x["beta"] > 0) & (x["beta"] < 1)).all()
    assert torch.allclose(x["k"].float().norm(dim=-1), torch.ones(1, 5, 2), atol=1e-2)
    gla = impls.make_inputs("gla", Shape(1, 5, 2, 8), device="cpu")
    assert gla["g"].shape == (1, 5, 2, 8) and (gla["g"] < 0).all() and (gla["g"] > -1).all() and "beta" not in gla
    assert "g" not in impls.make_inputs("lr_none", Shape(1, 5, 2, 8), device="cpu")
    assert torch.equal(impls.make_inputs("delta", Shape(1, 5, 2, 8), device="cpu")["q"], impls.make_inputs("delta", Shape(1, 5, 2, 8), device="cpu")["q"])


def test_time_limit_stops_a_python_loop():
    start = time.monotonic()
    with pytest.raises(budget.TimeBudgetExceeded, match="loop: over its 0.2 s budget"):
        with budget.time_limit(0.2, "loop"):
            while True:
                pass
    assert time.monotonic() - start < 2
    assert budget.classify(RuntimeError("wrapped"), "ours") == "time budget"  # the alarm fired: a wrapped stop still counts
    with budget.time_limit(None, "no limit"):
        pass
    assert budget.classify(RuntimeError("Triton >= 3.4.0 ... Hopper"), "fla") == "refused"
    assert budget.classify(RuntimeError("boom"), "ours") == "error"
    with pytest.raises(budget.TimeBudgetExceeded, match="no time left"):
        with budget.time_limit(0, "late"):
            pass


def row(op, impl, fwd, fwdbwd, errors=None):
    return {"op": op, "shape": "B8_T4096_H16_D128", "impl": impl, "fwd": fwd, "fwdbwd": fwdbwd, "errors_vs_float32_chunk": errors or {}}


def ok(ms, peak):
    return {"status": "ok", "ms": ms, "tokens_per_s": 32768 / ms * 1e3, "bytes_per_s": 1e12, "flops_per_s": 2e14,
            "roofline_fraction": 0.5, "peak_bytes": peak}


def test_markdown_table_and_targets():
    refusal = "first backward: RuntimeError: Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results"
    result = {
        "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23", "timing": "do_bench median",
        "versions": {"torch": "2.11", "triton": "3.6.0", "cuda": "13.0", "fla": "0.6.0"},
        "ceilings": {"copy_bytes_per_s": 3.0e12, "bf16_matmul_flops_per_s": 7.46e14},
        "decode": {"shape": "B1_H16_D128", "linear_recurrence": {"events_us": 3.2, "wall_us": 14.0, "cuda_graph_us": 2.9,
                                                                 "meets_target": {"events_us": True, "wall_us": False, "cuda_graph_us": True}},
                   "delta_rule": {"status": "error", "message": "boom"}},
        "rows": [
            row("gated_delta", "ours", ok(1.7, 2**30), ok(6.7, 3 * 2**30), {"o": 3.3e-3, "dq": 3.4e-3, "dg": 2.6e-3}),
            row("gated_delta", "fla", ok(1.0, 2**29), {"status": "refused", "message": refusal}, {"o": 3.7e-3}),
            row("gla", "ours", {"status": "not supported", "message": "supports(q, v, g) is False"}, {"status": "not supported", "message": "supports(q, v, g) is False"}),
            row("delta", "ours", ok(1.6, 2**30), ok(6.0, 2**31)),
            row("delta", "fla", ok(1.0, 2**30), ok(4.0, 2**32)),
        ],
    }
    text = report.markdown(result)
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("| gated_delta") or line.startswith("| gla") or line.startswith("| delta ")]
    assert len(table) == 5
    assert "| gated_delta | B8_T4096_H16_D128 | ours | 1.700 | 6.700 | 19.3 | 4.9 | 1.00 TB/s, 200 TFLOP/s, 50 % |" in text
    assert "| 1.00 / 3.00 | 3.3e-03 / 3.4e-03 |" in text
    assert "| gated_delta | B8_T4096_H16_D128 | fla | 1.000 | refused [1] |" in text and f"[1] {refusal}" in text
    assert "not supported [2] | not supported |" in text  # the same message is noted once
    assert "| linear_recurrence | 3.20 | 14.00 | 2.90 |" in text and "| delta_rule | error | error | error |" in text
    assert "copy 3.00 TB/s, bf16 matmul 746 TFLOP/s" in text and "fla 0.6.0" in text
    assert "do_bench median; autotuning excluded." in text  # a result without "configs" (before session 9) was autotuned
    defaults = report.markdown({**result, "configs": report.DEFAULT_CONFIGS})
    assert "our kernels with their default configs (SEQMIX_TRITON_AUTOTUNE=0)" in defaults
    t = report.targets(result)
    assert t["decode"] == {"linear_recurrence": {"events_us": True, "wall_us": False, "cuda_graph_us": True}}
    assert [(p["op"], p["phase"], p["met"]) for p in t["peak_memory_vs_fla"]] == [("gated_delta", "fwd", False), ("delta", "fwdbwd", True)]
    assert "- peak memory delta B8_T4096_H16_D128 (fwdbwd): ours 2.00 GiB, fla 4.00 GiB: met" in text
    assert report.markdown({"rows": []}).endswith("- nothing to compare yet\n")


def test_finished_rows_are_kept_by_resume():
    rows = [row("delta", "ours", ok(1, 1), ok(2, 2)), row("delta", "fla", ok(1, 1), {"status": "time budget"}),
            row("gla", "ours", {"status": "not supported"}, {"status": "not supported"}), row("lr_none", "fla", {"status": "not run"}, {"status": "not run"})]
    assert sorted(run.finished(rows)) == [("delta", "B8_T4096_H16_D128", "ours"), ("gla", "B8_T4096_H16_D128", "ours")]


def test_without_cuda_it_stops_with_a_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        run.main(["--quick"])


def test_run_on_cpu_with_faked_cuda(monkeypatch, tmp_path):
    """The run's control flow with the GPU faked: rows, errors against the float32 reference, statuses, files, --resume."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(multi_processor_count=132))
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 2**20)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep, grad_to_none=None, return_mode="median": (fn(), 1.0)[1])
    monkeypatch.setattr(measuring, "ceilings", lambda: {"copy_bytes_per_s": 3e12, "bf16_matmul_flops_per_s": 7e14})
    monkeypatch.setattr(measuring, "decode_times", lambda seconds: {"shape": "B1_H16_D128"})
    make_inputs = impls.make_inputs
    monkeypatch.setattr(impls, "make_inputs", lambda op, shape: make_inputs(op, shape, device="cpu", dtype=torch.float32))
    argv = ["--shapes", "B1_T20_H2_D8", "--ops", "lr_scalar", "gla", "delta", "attention", "--impls", "torch_chunk", "sdpa", "--out", str(tmp_path)]
    result = run.main(argv)
    (path,) = tmp_path.glob("kernels_Fake_GPU_*.json")
    assert path.with_suffix(".md").exists()
    saved = json.loads(path.read_text())
    assert saved["device"] == "Fake GPU" and "torch" in saved["versions"] and saved["ceilings"]["copy_bytes_per_s"] == 3e12
    rows = {(r["op"], r["impl"]): r for r in saved["rows"]}
    assert list(rows) == [("lr_scalar", "torch_chunk"), ("gla", "torch_chunk"), ("delta", "torch_chunk"), ("attention", "sdpa")]
    for r in rows.values():
        assert r["fwd"]["status"] == r["fwdbwd"]["status"] == "ok" and r["fwd"]["ms"] == 1.0 and r["fwdbwd"]["peak_bytes"] == 2**20
        assert r["fwd"]["tokens_per_s"] == pytest.approx(20e3)
    assert set(rows["delta", "torch_chunk"]["errors_vs_float32_chunk"]) == {"o", "dq", "dk", "dv", "dbeta"}
    assert max(rows["gla", "torch_chunk"]["errors_vs_float32_chunk"].values()) < 1e-6  # float32 inputs: the reference itself
    assert rows["attention", "sdpa"]["errors_vs_float32_chunk"] == {}
    assert result["rows"] == saved["rows"]
    assert saved["autotuned"] == {}  # none of our kernels ran
    # resume: finished rows are kept, an unfinished one is measured again
    saved["rows"][0]["fwdbwd"] = {"status": "time budget", "message": "over"}
    saved["rows"][1]["fwd"]["ms"] = 123.0
    path.write_text(json.dumps(saved))
    again = run.main(argv + ["--resume", str(path)])
    assert again["rows"][0]["fwdbwd"]["status"] == "ok" and again["rows"][1]["fwd"]["ms"] == 123.0
    assert len(again["earlier_runs"]) == 1


def test_chosen_configs_name_the_autotuners_choice_and_whether_it_is_the_default(monkeypatch):
    from kernels.delta_rule.chunk import AUTOTUNED, _delta_dh

    choices, deeper = AUTOTUNED[_delta_dh[False]], AUTOTUNED[_delta_dh[True]]
    monkeypatch.setattr(_delta_dh[False], "cache", {(128, 64, torch.bfloat16): choices[-1], (64, 64, torch.float32): choices[0]})
    monkeypatch.setattr(_delta_dh[True], "cache", {(32, 32, torch.bfloat16): deeper[0]})
    last, first = choices[-1], choices[0]
    assert measuring.chosen_configs()["_delta_dh_kernel"] == [  # one kernel, two autotuners: both listed
        {"key": ["128", "64", "torch.bfloat16"], "num_warps": last.num_warps, "num_stages": last.num_stages, "default": False},
        {"key": ["64", "64", "torch.float32"], "num_warps": first.num_warps, "num_stages": first.num_stages, "default": True},
        {"key": ["32", "32", "torch.bfloat16"], "num_warps": deeper[0].num_warps, "num_stages": deeper[0].num_stages, "default": True},
    ]
