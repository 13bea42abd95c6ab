"""Run results: `metrics.json` in every run directory, and a table of mean and std over many runs.

    python -m apps.common.results DIR [DIR...] [--out FILE_STEM]      (also: python -m apps.<app> aggregate ...)

collects every metrics.json under the directories (e.g. a Hydra multirun over mixers and seeds), groups
runs that differ only in their seed, and writes FILE_STEM.csv and FILE_STEM.md with mean and std per group.
--mean-over data.horizon first averages each seed's runs over the horizons (the benchmark's average).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

METRICS_FILE = "metrics.json"
REPEAT_KEY = "seed"  # runs that differ only in their seed repeat one setting
IGNORED_KEYS = ("ckpt_path",)  # overrides that do not make a run different


def write_metrics(output_dir: Path, metrics: dict[str, float], **info: Any) -> Path:
    """Write {"metrics": ..., **info} as output_dir/metrics.json; `info` says what was run (app, verb,
    name, overrides, checkpoint, ...). Returns the file's path."""
    path = Path(output_dir) / METRICS_FILE
    record = {**info, "metrics": {key: float(value) for key, value in sorted(metrics.items())}}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def override_columns(overrides: Sequence[str]) -> dict[str, str]:
    """{"model/mixer": "gla", "data.horizon": "96", ...} from Hydra override strings, without IGNORED_KEYS."""
    pairs = (item.lstrip("+~").split("=", 1) for item in overrides if "=" in item)
    return {key: value for key, value in pairs if key not in IGNORED_KEYS}


def load_runs(directories: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(settings, metrics), one row per metrics.json under `directories`: settings are app, verb, name and
    one column per override; metrics are the recorded metrics."""
    settings, metrics = [], []
    for directory in directories:
        for path in sorted(Path(directory).rglob(METRICS_FILE)):
            record = json.loads(path.read_text())
            run = {"app": record.get("app"), "verb": record.get("verb"), "name": record.get("name")}
            settings.append({**run, **override_columns(record.get("overrides", []))})
            metrics.append(record["metrics"])
    if not settings:
        raise FileNotFoundError(f"no {METRICS_FILE} under {', '.join(map(str, directories))}")
    return pd.DataFrame(settings), pd.DataFrame(metrics)


def numbers_if_possible(column: pd.Series) -> pd.Series:
    """The column as numbers when every value is one (so horizons sort 96, 192, ... not "192", "336", ...)."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column


def aggregate(
    settings: pd.DataFrame, metrics: pd.DataFrame, metric_prefix: str = "test/", mean_over: str | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Mean, std and count over seeds of the metrics starting with `metric_prefix`, per group of equal settings.

    mean_over: a setting (e.g. "data.horizon") whose values are averaged first, per seed (the benchmark's
    "average over horizons"). Returns the table (only the settings that differ between groups are columns)
    and the settings every run shares.
    """
    metrics = metrics[[c for c in metrics.columns if c.startswith(metric_prefix)]]
    if metrics.empty:
        raise ValueError(f"no metric starts with {metric_prefix!r}")
    settings = settings.fillna("").astype(str).apply(numbers_if_possible)
    if mean_over is not None:
        if mean_over not in settings:
            raise ValueError(f"--mean-over {mean_over}: no run sets it; settings: {list(settings.columns)}")
        keys = [c for c in settings.columns if c != mean_over]
        metrics = metrics.groupby([settings[c] for c in keys], dropna=False).mean()
        settings, metrics = metrics.index.to_frame(index=False), metrics.reset_index(drop=True)
    groups = [c for c in settings.columns if c != REPEAT_KEY]
    varying = [c for c in groups if settings[c].nunique() > 1] or ["name"]
    shared = {c: str(settings[c].iloc[0]) for c in groups if c not in varying}
    table = metrics.groupby([settings[c] for c in varying], dropna=False).agg(["mean", "std", "count"])
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    return table.reset_index(), shared


def to_markdown(table: pd.DataFrame, shared: dict[str, str], metric_prefix: str = "test/") -> str:
    """The shared settings, then a markdown table: varying settings, each metric as "mean ± std (n=runs)"."""
    metrics = sorted({c.rsplit(" ", 1)[0] for c in table.columns if c.startswith(metric_prefix)})
    settings = [c for c in table.columns if not c.startswith(metric_prefix)]
    header = settings + metrics
    lines = ["Shared by all runs: " + ", ".join(f"{k}={v}" for k, v in shared.items()), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row[c]) for c in settings]
        for metric in metrics:
            std = row[f"{metric} std"]
            spread = "" if math.isnan(std) else f" ± {std:.4f}"
            cells.append(f"{row[f'{metric} mean']:.4f}{spread} (n={int(row[f'{metric} count'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: aggregate the runs under the given directories, write FILE_STEM.csv and .md, print the table."""
    parser = argparse.ArgumentParser(
        prog="aggregate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directories", nargs="+", type=Path, help="directories searched for metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="output file stem (default: DIR/aggregate in the first DIR)")
    parser.add_argument("--prefix", default="test/", help="aggregate the metrics whose name starts with this")
    parser.add_argument("--mean-over", default=None, help="average over this setting first, e.g. data.horizon")
    args = parser.parse_args(argv)
    table, shared = aggregate(*load_runs(args.directories), args.prefix, args.mean_over)
    out = args.out if args.out is not None else args.directories[0] / "aggregate"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    markdown = to_markdown(table, shared, args.prefix)
    out.with_suffix(".md").write_text(markdown)
    print(markdown + f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")
    return table


if __name__ == "__main__":
    main()
