"""benchmarks/kernels/registers on CPU: the launches of an op are recorded in the interpreter and each kernel is
compiled for the H100 (sm_90) with Triton's own ptxas, one row per autotune config, with registers and spills."""
import json

from benchmarks.kernels import registers


def test_every_launched_kernel_compiles_for_sm90_with_its_resources(tmp_path):
    rows = registers.main(["--ops", "lr_scalar", "--shape", "B1_T64_H1_D64", "--out", str(tmp_path)])
    kernels = {r["kernel"] for r in rows}
    assert {"_fwd_h_kernel", "_fwd_o_kernel", "_bwd_dh_kernel", "_bwd_dv_kernel", "_bwd_dqk_kernel"} <= kernels
    for row in rows:
        assert 0 < row["registers"] <= 255 and row["spill_bytes"] >= 0 and row["shared_bytes"] >= 0
        assert row["constexprs"].get("K", 64) == 64 and row["num_warps"] in (1, 2, 4, 8)
    saved = json.loads((tmp_path / "kernel_registers_sm90.json").read_text())
    assert len(saved["rows"]) == len(rows) and "sm_90" in saved["header"]
    table = (tmp_path / "kernel_registers_sm90.md").read_text()
    assert table.count("| _fwd_o_kernel |") == sum(r["kernel"] == "_fwd_o_kernel" for r in rows)


def test_a_kernel_with_two_autotuners_compiles_with_both_config_lists():
    from kernels.delta_rule import chunk

    jit, choices = registers.autotune_choices(chunk, "_delta_dh_kernel")
    assert jit is chunk._delta_dh_kernel
    expected = {str(c) for c in chunk._delta_dh[False].configs + chunk._delta_dh[True].configs}
    assert {str(c) for c in choices} == expected and len(choices) == len(expected)


def test_lengths_can_be_compiled_specialised(tmp_path):
    rows = registers.main(["--ops", "lr_scalar", "--shape", "B1_T64_H1_D64", "--out", str(tmp_path), "--specialise-lengths", "2048"])
    assert rows and all(0 < r["registers"] <= 255 for r in rows)
    assert "compiled as 2048, specialised" in (tmp_path / "kernel_registers_sm90_lengths_specialised.md").read_text()
