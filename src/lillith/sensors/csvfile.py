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
        parse as ISO 8601, else the row index.
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


def _parse_time(s: str) -> float:
    try:
        dt = datetime.fromisoformat(s.strip())
    except ValueError:
        return math.nan
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_csv_stream(
    path: Path,
    *,
    timestamp_column: str | None = "timestamp",
    value_columns: Sequence[str] | None = None,
) -> CsvStream:
    """Load a CSV file with a header row.

    Parameters
    ----------
    path : Path
    timestamp_column : str or None
        Name of the time column; ``None`` or a missing column means none.
    value_columns : sequence of str, optional
        Columns to read as values; default every other column.

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
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration as e:
            raise CsvError("CSV file is empty", path=str(path)) from e
        tcol = timestamp_column if timestamp_column in header else None
        cols = list(value_columns) if value_columns else [h for h in header if h != tcol]
        missing = [c for c in cols if c not in header]
        if missing or not cols:
            raise CsvError("CSV value columns not found", path=str(path), missing=missing,
                           header=header)
        vidx = [header.index(c) for c in cols]
        tidx = header.index(tcol) if tcol is not None else -1
        stamps: list[str] = []
        rows: list[list[float]] = []
        for line, rec in enumerate(reader, start=2):
            if not rec:
                continue
            try:
                rows.append([float(rec[i]) for i in vidx])
            except (ValueError, IndexError) as e:
                raise CsvError("non-numeric or missing value", path=str(path), line=line) from e
            stamps.append(rec[tidx] if tidx >= 0 else "")
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(cols))
    t = np.array([_parse_time(s) for s in stamps]) if tcol is not None else np.arange(
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
