"""Reading and writing CSV sensor streams (a timestamp column and value columns)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lillith.errors import LillithError


class CsvError(LillithError):
    """A CSV stream that cannot be read."""


@dataclass(frozen=True)
class CsvStream:
    """A CSV file loaded in memory.

    Attributes
    ----------
    path : Path
    timestamps : list of str
        The timestamp column verbatim ('' when the file has none).
    t : ndarray, shape (n,), float64
        Stream time in seconds since the epoch (UTC) when the timestamps
        parse (ISO 8601, or epoch seconds or milliseconds: :func:`parse_time`),
        else the row index.
    values : ndarray, shape (n, C), float64
    columns : list of str
        Names of the value columns.
    timestamp_column : str or None
    """

    path: Path
    timestamps: list[str]
    t: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    columns: list[str]
    timestamp_column: str | None


EPOCH_S = (1e8, 1e11)
"""A number in this range is taken for epoch seconds (1973 .. 5138) ..."""
EPOCH_MS = (1e11, 1e14)
"""... and in this one for epoch milliseconds."""


def parse_time(s: str) -> float:
    """Seconds since the epoch (UTC) of a time stamp: ISO 8601 (naive: UTC), or a
    number of epoch seconds (:data:`EPOCH_S`) or milliseconds (:data:`EPOCH_MS`);
    NaN when it is none of them."""
    text = s.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        if EPOCH_S[0] <= abs(number) < EPOCH_S[1]:
            return number
        if EPOCH_MS[0] <= abs(number) < EPOCH_MS[1]:
            return number / 1000.0
        return math.nan
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


AUTO_TIME = "auto"
"""``timestamp_column`` value asking :func:`read_csv_stream` to find the time column."""
TIME_COLUMNS = ("timestamp", "datetime", "time", "date", "ts", "epoch", "unix_time", "t")
"""Names (any case) auto-detection takes for the time column, in this order of preference."""


def find_time_column(header: Sequence[str], first_row: Sequence[str] | None) -> str | None:
    """The time column of a CSV file: the first header name in :data:`TIME_COLUMNS`
    (any case) whose first value parses (:func:`parse_time`), else None."""
    lower = {h.lower(): i for i, h in reversed(list(enumerate(header)))}
    for name in TIME_COLUMNS:
        i = lower.get(name)
        if i is None:
            continue
        if first_row is None or (i < len(first_row) and math.isfinite(parse_time(first_row[i]))):
            return header[i]
    return None


LABEL_COLUMNS = ("anomaly", "changepoint", "label", "labels", "is_anomaly")
"""Column names taken for labels: never read as values unless named explicitly."""
DELIMITERS = (",", ";", "\t", "|")
"""Delimiters a CSV file may use (the header line's most frequent one is taken)."""


def detect_delimiter(header_line: str) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of
    :data:`DELIMITERS` (``,`` when none occurs)."""
    counts = [(header_line.count(d), -i, d) for i, d in enumerate(DELIMITERS)]
    n, _, d = max(counts)
    return d if n > 0 else ","


def read_csv_stream(
    path: Path,
    *,
    timestamp_column: str | None = "timestamp",
    value_columns: Sequence[str] | None = None,
    exclude: Sequence[str] = LABEL_COLUMNS,
    delimiter: str | None = None,
) -> CsvStream:
    """Load a CSV file with a header row, its rows in file order.

    Parameters
    ----------
    path : Path
    timestamp_column : str or None
        Name of the time column; ``None`` or a missing column means none;
        :data:`AUTO_TIME` (``"auto"``) finds it (:func:`find_time_column`);
        the stream's ``timestamp_column`` says which was taken.
    value_columns : sequence of str, optional
        Columns to read as values; default every other column but those in
        ``exclude``.
    exclude : sequence of str
        Columns never read as values unless ``value_columns`` names them
        (default: label columns such as SKAB's ``anomaly`` and ``changepoint``).
    delimiter : str, optional
        Field delimiter; default detected from the header line
        (:func:`detect_delimiter`).

    Raises
    ------
    CsvError
        Missing file, no header, unknown columns or non-numeric values
        (with the line number).
    """
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as e:
        raise CsvError("cannot open CSV file", path=str(path), error=str(e)) from e
    with fh:
        first = fh.readline()
        if not first.strip():
            raise CsvError("CSV file is empty", path=str(path))
        delim = delimiter or detect_delimiter(first)
        header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
        reader = csv.reader(fh, delimiter=delim)
        if timestamp_column == AUTO_TIME:
            here = fh.tell()
            row = next(csv.reader([fh.readline()], delimiter=delim), None)
            fh.seek(here)
            tcol = find_time_column(header, row)
        else:
            tcol = timestamp_column if timestamp_column in header else None
        skip = set(exclude)
        cols = (list(value_columns) if value_columns
                else [h for h in header if h != tcol and h not in skip])
        missing = [c for c in cols if c not in header]
        if missing or not cols:
            raise CsvError("CSV value columns not found", path=str(path), missing=missing,
                           header=header)
        vidx = [header.index(c) for c in cols]
        tidx = header.index(tcol) if tcol is not None else -1
        stamps: list[str] = []
        rows: list[list[float]] = []
        for line, rec in enumerate(reader, start=2):  # (the header was line 1)
            if not rec:
                continue
            try:
                rows.append([float(rec[i]) for i in vidx])
            except (ValueError, IndexError) as e:
                raise CsvError("non-numeric or missing value", path=str(path), line=line) from e
            stamps.append(rec[tidx] if tidx >= 0 else "")
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(cols))
    t = np.array([parse_time(s) for s in stamps]) if tcol is not None else np.arange(
        len(rows), dtype=np.float64)
    if tcol is not None and np.any(np.isnan(t)):
        t = np.arange(len(rows), dtype=np.float64)
    return CsvStream(path, stamps, t, values, cols, tcol)


def find_csv_files(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Expand files and directories into ``(file, path relative to its root)`` pairs.

    A directory is walked recursively for ``*.csv`` (sorted), so a NAB-style
    tree maps to a mirrored output tree.
    """
    out: list[tuple[Path, Path]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend((f, f.relative_to(p)) for f in sorted(p.rglob("*.csv")))
        else:
            out.append((p, Path(p.name)))
    return out
