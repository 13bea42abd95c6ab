"""Raw tables for the forecasting app: named data sets and user CSVs as numeric DataFrames plus split ends.

Every loader returns a `Table`: a float64 DataFrame (rows, channels) whose index is a DatetimeIndex when
the data has timestamps and a RangeIndex otherwise, the default target column, and the row where each of
the train/val/test splits ends. Rows are never dropped; missing values either raise or are filled on request.
"""

from __future__ import annotations

import difflib
import shutil
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pandas.api.types import is_numeric_dtype

KNOWN = ("weather", "etth1", "etth2", "exchange", "csv")
FILLS = ("error", "ffill", "interpolate")
DEFAULT_CACHE = Path.home() / ".cache" / "seqmix" / "timeseries"

# name -> (file name, public download address)
REMOTE = {
    "etth1": ("ETTh1.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv"),
    "etth2": ("ETTh2.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv"),
    "exchange": (
        "exchange_rate.csv",
        "https://raw.githubusercontent.com/unit8co/darts/master/datasets/exchange_rate.csv",
    ),
}
ETT_ENDS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)  # Informer/TSLib borders: 8640, 11520, 14400
WEATHER_COLUMNS = ["temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi", "dni", "dhi"]
DATE_NAMES = ("date", "time", "timestamp", "datetime")


@dataclass(frozen=True)
class Table:
    """A numeric table ready for windowing.

    frame: (rows, channels) float64, index DatetimeIndex named after the date column, or RangeIndex.
    target: default target column.
    ends: exclusive end rows of train, val, test: train [0, a), val [a, b), test [b, c).
    source: where the rows came from, for error messages.
    """

    frame: pd.DataFrame
    target: str
    ends: tuple[int, int, int]
    source: str


def closest(word: str, options: list[str]) -> str | None:
    """The option most similar to `word` ignoring case (difflib), or None if nothing is close."""
    lowered = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def check_name(name: str) -> str:
    """Lower-cased data set name; ValueError listing the known names otherwise."""
    if name.lower() in KNOWN:
        return name.lower()
    hint = closest(name, list(KNOWN))
    raise ValueError(
        f"unknown data set {name!r}; known: {', '.join(KNOWN)}."
        + (f" Did you mean data.name={hint}?" if hint else "")
        + " For your own file use data.name=csv data.path=/path/to/file.csv."
    )


def ratio_ends(n: int) -> tuple[int, int, int]:
    """TSLib Dataset_Custom 70/10/20 split of n rows: num_train = int(0.7 n), num_test = int(0.2 n), val the rest."""
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    return num_train, n - num_test, n


def load_table(
    name: str, path: str | Path | None = None, cache_dir: str | Path | None = None, fill: str = "error"
) -> Table:
    """Load data set `name` (see KNOWN) from `path`, the cache or the network, fill missing values as `fill` says."""
    name = check_name(name)
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is not one of {', '.join(FILLS)}; pass e.g. data.fill=ffill")
    if name == "weather":
        frame, target, source = _weather(path), "temp_air", "pvlib TMY3 weather"
    elif name == "csv":
        if path is None:
            raise ValueError("data set 'csv' needs a file: pass data.path=/path/to/file.csv (and data.target=COLUMN)")
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"no CSV file at {file}; pass data.path=/path/to/file.csv")
        frame, source = read_csv(file), str(file)
        target = str(frame.columns[-1])
    else:
        file = locate(name, path, cache_dir)
        frame, source = read_csv(file), str(file)
        target = str(frame.columns[-1])  # OT for ETT, "7" for exchange
    frame = fill_missing(frame, fill, source)
    if name.startswith("ett"):
        if len(frame) < ETT_ENDS[-1]:
            raise ValueError(
                f"{source} has {len(frame)} rows; the fixed ETT borders need {ETT_ENDS[-1]}: use the full ETT file"
            )
        return Table(frame, target, ETT_ENDS, source)
    return Table(frame, target, ratio_ends(len(frame)), source)


def locate(name: str, path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The CSV of a downloadable data set: `path` (a file or a directory holding it), else the cache, else download."""
    filename, url = REMOTE[name]
    if path is not None:
        file = Path(path).expanduser()
        file = file / filename if file.is_dir() else file
        if not file.is_file():
            raise FileNotFoundError(
                f"{name}: no file at {file}; pass data.path= the {filename} file or the directory holding it"
            )
        return file
    cached = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE
    file = cached / filename
    if not file.is_file():
        try:
            _download(url, file)
        except OSError as err:
            raise FileNotFoundError(
                f"{filename} is not in the cache {cached} and downloading {url} failed ({err}). "
                f"Put the file at {file} or pass data.path=/path/to/{filename}"
            ) from err
    return file


def _download(url: str, file: Path) -> None:
    """Fetch `url` into `file` through a temporary name, so a broken download leaves no partial file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    part = file.with_name(file.name + ".part")
    with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
        shutil.copyfileobj(response, out)
    part.replace(file)


def _weather(path: str | Path | None) -> pd.DataFrame:
    """Hourly TMY3 weather (default: Greensboro NC, shipped with pvlib), 8760 rows of WEATHER_COLUMNS.

    A TMY file stitches months of different years together; the index is coerced to the nominal year 2001
    (local standard time, UTC-5 for the default file) so it runs hourly without gaps. Columns that are
    constant in the file carry no signal and are dropped.
    """
    import pvlib  # deferred: only the weather data set needs it

    file = Path(path).expanduser() if path is not None else Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"
    if not file.is_file():
        raise FileNotFoundError(
            f"no TMY3 file at {file}; pass data.path= a TMY3 CSV or leave it unset for the bundled one"
        )
    data, _ = pvlib.iotools.read_tmy3(file, coerce_year=2001, map_variables=True)
    frame = data[WEATHER_COLUMNS].astype("float64")
    frame.index = frame.index.tz_localize(None).rename("date")
    return frame.drop(columns=[c for c in frame.columns if frame[c].nunique() <= 1])


def read_csv(file: Path) -> pd.DataFrame:
    """A CSV as float64 channels indexed by its date column, if it has one (see `date_column`)."""
    try:
        raw = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"could not read {file} as CSV: {err}") from err
    raw.columns = [str(c).strip() for c in raw.columns]
    found = date_column(raw)
    if found is not None:
        column, dates = found
        raw = raw.drop(columns=column).set_index(pd.DatetimeIndex(dates, name=column))
        _check_dates(raw.index, file)
    bad = [c for c in raw.columns if not is_numeric_dtype(raw[c])]
    if bad:
        listed = ", ".join(f"{c!r} (e.g. {raw[c].dropna().iloc[0]!r})" for c in bad)
        raise ValueError(
            f"{file}: non-numeric columns {listed}; forecasting needs numbers in every column but the date. "
            "Remove or convert these columns in the file."
        )
    if raw.shape[1] == 0:
        raise ValueError(f"{file} has no numeric columns to forecast")
    return raw.astype("float64")


def date_column(raw: pd.DataFrame) -> tuple[str, pd.Series] | None:
    """(name, parsed datetimes) of the date column: the first one named date/time/timestamp/datetime (any case),
    else the first column; it counts only if it is not numeric and parses as datetimes. None when absent."""
    named = [c for c in raw.columns if c.lower() in DATE_NAMES]
    column = named[0] if named else raw.columns[0]
    if is_numeric_dtype(raw[column]):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it falls back to per-element parsing
            return column, pd.to_datetime(raw[column])
    except (ValueError, TypeError, OverflowError):
        return None


def _check_dates(index: pd.DatetimeIndex, file: Path) -> None:
    """ValueError unless the timestamps are present and strictly increasing."""
    if index.hasnans:
        raise ValueError(
            f"{file}: date column {index.name!r} has {int(index.isna().sum())} empty or unparsable timestamps; "
            "fix them in the file"
        )
    if not index.is_monotonic_increasing or not index.is_unique:
        row = int((index[1:] <= index[:-1]).argmax()) + 1
        raise ValueError(
            f"{file}: timestamps must be strictly increasing, but row {row} ({index[row]}) does not come after "
            f"row {row - 1} ({index[row - 1]}); sort the file by {index.name!r} and remove duplicate timestamps"
        )


def fill_missing(frame: pd.DataFrame, fill: str, source: str) -> pd.DataFrame:
    """Missing values: "error" raises naming each column and its count; "ffill" carries the last value forward
    (leading gaps take the first value); "interpolate" draws straight lines between neighbouring rows (edges take
    the nearest value). Columns with no value at all always raise. Rows are never dropped."""
    counts = frame.isna().sum()
    counts = counts[counts > 0]
    if counts.empty:
        return frame
    empty = [c for c, n in counts.items() if n == len(frame)]
    if empty:
        raise ValueError(f"{source}: columns {empty} have no values at all; remove them from the file")
    if fill == "error":
        listed = ", ".join(f"{c!r}: {n}" for c, n in counts.items())
        raise ValueError(
            f"{source} has missing values ({listed}; {len(frame)} rows in all). Fill them with data.fill=ffill "
            "(carry the last value forward) or data.fill=interpolate (linear between neighbours)."
        )
    if fill == "ffill":
        return frame.ffill().bfill()
    return frame.interpolate(limit_direction="both")
