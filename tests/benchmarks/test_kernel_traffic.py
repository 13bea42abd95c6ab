"""benchmarks/kernels/traffic on CPU: Nsight Compute's CSV (one row per launch and metric) read into one row per launch,
its rates and the table; on a machine without a GPU or ncu it stops with a message. Also benchmarks/kernels/hopper's
message on a machine without a Hopper GPU."""
import pytest
import torch

from benchmarks.kernels import traffic

VALUES = {  # two launches: bytes, ns, percentages and counts as ncu prints them (thousands separated)
    "1": ("_delta_h_kernel", ["406,033,664", "385,308,672", "340,224", "55.16", "255", "2", "12.09", "1.94"]),
    "2": ("void at::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2)", ["2,000,000", "1,000,000", "3,000", "50", "32", "16", "80", "0.5"]),
}


def ncu_csv() -> str:
    lines = ['==PROF== Connected to process 1', '"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"']
    for launch, (name, values) in VALUES.items():
        for metric, value in zip(traffic.METRICS, values):
            lines.append(f'"{launch}","{name}","{metric}","x","{value}"')
    lines.append('"2","x","some__other_metric","x","1"')  # metrics it did not ask for are ignored
    return "\n".join(lines)


def test_ncu_csv_becomes_one_row_per_launch_with_its_rate():
    rows = traffic.read_ncu(ncu_csv())
    assert [r["kernel"] for r in rows] == ["_delta_h_kernel", "void at::vectorized_elementwise_kernel"]
    first = rows[0]
    assert first["read MB"] == pytest.approx(406.033664) and first["written MB"] == pytest.approx(385.308672)
    assert first["µs"] == pytest.approx(340.224) and first["TB/s"] == pytest.approx(791.342336 / 340.224)
    assert first["registers"] == 255 and first["programs / SM (registers)"] == 2 and first["waves"] == 1.94
    assert rows[1]["TB/s"] == pytest.approx(1.0)  # 3 MB in 3 µs
    table = traffic.markdown(rows, "header")
    assert table.startswith("header\n\n| kernel | read MB |") and "| _delta_h_kernel | 406.03 | 385.31 | 340.22 | 2.33 |" in table
    assert "All launches: 0.79 GB in 343 µs, 2.31 TB/s." in table


def test_without_a_gpu_it_stops_with_a_message(monkeypatch):
    monkeypatch.setattr(traffic.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU and Nsight Compute"):
        traffic.main(["--out", "unused"])


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9, reason="runs on a Hopper GPU")
def test_hopper_benchmark_says_it_needs_a_hopper_gpu() -> None:
    from benchmarks.kernels.hopper import main

    with pytest.raises(SystemExit, match="needs a Hopper GPU"):
        main([])
