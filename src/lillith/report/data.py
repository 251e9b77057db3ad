"""What ``lillith report`` plots, read from a replay's output CSV, a labels
file and a state directory (no matplotlib here)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import LillithError
from lillith.sensors.csvfile import LABEL_COLUMNS, detect_delimiter, find_time_column, parse_time

F64 = npt.NDArray[np.float64]
SCORE_COLUMNS = ("anomaly_score", "anomaly_likelihood", "alarm", "alarm_reason")
"""Columns a replay writes after the input's own (the channels come before them)."""


class ReportError(LillithError):
    """A scores, labels or state file the report cannot read."""


@dataclass
class Scores:
    """A replay's output: time axis, channels with their forecasts, scores, alarms.

    ``t`` is seconds since the epoch when every time stamp parses (``dated``),
    else the row number. ``forecasts[c]`` is the forecast of channel ``c`` made
    the frame before (NaN for the first frame).
    """

    path: Path
    t: F64
    dated: bool
    channels: dict[str, F64]
    forecasts: dict[str, F64]
    score: F64
    likelihood: F64
    alarm: npt.NDArray[np.bool_]
    reasons: list[str]
    mode: list[str] = field(default_factory=list)

    @property
    def onsets(self) -> list[int]:
        """Rows where the alarm turns on."""
        a = self.alarm.astype(np.int8)
        return [int(i) for i in np.flatnonzero(np.diff(a, prepend=0) == 1)]

    def periods(self) -> list[tuple[int, int]]:
        """Alarm periods as (first row, last row)."""
        return runs(self.alarm)


def runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Runs of True in ``mask`` as (first index, last index)."""
    m = np.concatenate([[0], mask.astype(np.int8), [0]])
    d = np.diff(m)
    return [(int(a), int(b) - 1) for a, b in zip(np.flatnonzero(d == 1),
                                                  np.flatnonzero(d == -1), strict=True)]


def _floats(col: list[str]) -> F64:
    return np.array([float(v) if v not in ("", "nan") else math.nan for v in col])


def read_scores(path: Path) -> Scores:
    """A replay output CSV (``lillith replay``'s columns: time stamp, the
    input's channels, the scores, the forecasts, ...).

    Raises
    ------
    ReportError
        Missing file, or not a replay output (no ``anomaly_score`` column).
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ReportError("cannot read the scores file", path=str(path), error=str(e)) from e
    lines = text.splitlines()
    if not lines:
        raise ReportError("the scores file is empty", path=str(path))
    rows = list(csv.reader(lines, delimiter=detect_delimiter(lines[0])))
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if "anomaly_score" not in header:
        raise ReportError("not a replay output (no anomaly_score column); make one with "
                          "lillith replay INPUT --out SCORES.csv", path=str(path),
                          header=header[:12])
    cols = {h: [r[i] if i < len(r) else "" for r in body] for i, h in enumerate(header)}
    tcol = header[0] if header[0] == "timestamp" else find_time_column(header, rows[1]
                                                                        if body else None)
    first_score = header.index("anomaly_score")
    names = [h for h in header[:first_score] if h != tcol]
    t = np.array([parse_time(s) for s in cols[tcol]]) if tcol else np.array([])
    dated = bool(tcol) and t.size > 0 and bool(np.all(np.isfinite(t)))
    if not dated:
        t = np.arange(len(body), dtype=np.float64)
    channels = {c: _floats(cols[c]) for c in names}
    forecasts = {}
    for c in names:
        key = "prediction" if len(names) == 1 else f"prediction_{c}"
        if key in cols:
            # the forecast in row i is of frame i + 1: shift it onto the frame it forecast
            f = _floats(cols[key])
            forecasts[c] = np.concatenate([[math.nan], f[:-1]])
    return Scores(Path(path), t, dated, channels, forecasts, _floats(cols["anomaly_score"]),
                  _floats(cols["anomaly_likelihood"]),
                  np.array([v.strip() == "1" for v in cols.get("alarm", [])], dtype=bool),
                  list(cols.get("alarm_reason", [""] * len(body))), list(cols.get("mode", [])))


def read_labels(path: Path, scores: Scores) -> list[tuple[float, float]]:
    """Labelled anomaly windows as (start, end) on the scores' time axis.

    ``path`` is a NAB labels JSON (``{"dir/file.csv": [[start, end], ...]}``:
    the entry whose file name is the scores file's, or the only entry) or a
    CSV with label columns (SKAB: ``anomaly``, ``changepoint``; runs of
    non-zero rows, matched row by row to the scores, or by time).

    Raises
    ------
    ReportError
        Unreadable file, or a JSON with no entry for this file.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ReportError("cannot read the labels file", path=str(p), error=str(e)) from e
    if p.suffix.lower() == ".json":
        doc: Any = json.loads(text)
        if not isinstance(doc, dict):
            raise ReportError("labels JSON must map file names to windows", path=str(p))
        entry = next((v for k, v in doc.items() if Path(k).name == scores.path.name), None)
        if entry is None and len(doc) == 1:
            entry = next(iter(doc.values()))
        if entry is None:
            raise ReportError("no labels for this file in the labels JSON (its keys are "
                              "file paths; the scores file must have the same name)",
                              path=str(p), file=scores.path.name)
        out = []
        for w in entry:
            a, b = (parse_time(str(x)) for x in w)
            if not scores.dated or not (math.isfinite(a) and math.isfinite(b)):
                raise ReportError("NAB windows need time stamps in the scores file",
                                  path=str(p))
            out.append((a, b))
        return out
    lines = text.splitlines()
    rows = list(csv.reader(lines, delimiter=detect_delimiter(lines[0])))
    header = [h.strip() for h in rows[0]]
    labelled = [h for h in header if h in LABEL_COLUMNS]
    if not labelled:
        raise ReportError("no label column in the labels CSV", path=str(p),
                          expected=list(LABEL_COLUMNS))
    body = [r for r in rows[1:] if r]
    mask = np.array([any(float(r[header.index(h)] or 0) != 0 for h in labelled)
                     for r in body], dtype=bool)
    tcol = find_time_column(header, body[0] if body else None)
    if scores.dated and tcol is not None:
        t = np.array([parse_time(r[header.index(tcol)]) for r in body])
    else:
        t = (scores.t[:len(body)] if len(body) <= scores.t.size
             else np.arange(len(body), dtype=np.float64))
    return [(float(t[a]), float(t[b])) for a, b in runs(mask)]


@dataclass
class StateView:
    """What the report shows of an agent's newest snapshot."""

    umatrix: F64 | None = None
    hits: F64 | None = None
    births: npt.NDArray[np.int64] | None = None
    deaths: npt.NDArray[np.int64] | None = None
    rounds: int = 0
    step: int = 0


def umatrix(weights: F64, shape: tuple[int, ...]) -> F64:
    """Mean distance of each unit's prototype to its grid neighbours' (2D maps;
    a 3D map is shown as its layers side by side)."""
    grid = weights.reshape(*shape, -1)
    if grid.ndim == 4:  # (x, y, z, dim): layers next to each other
        grid = np.concatenate([grid[:, :, k] for k in range(grid.shape[2])], axis=1)
    h, w, _ = grid.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            d = [np.linalg.norm(grid[i, j] - grid[a, b])
                 for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                 if 0 <= a < h and 0 <= b < w]
            out[i, j] = float(np.mean(d)) if d else 0.0
    return out


def read_state(root: str) -> StateView:
    """The SOM and lineage of the newest snapshot under ``root`` (a state
    directory of ``lillith run`` / ``replay --state``).

    Raises
    ------
    ReportError
        No snapshot there.
    """
    from lillith.errors import StateError
    from lillith.state.snapshot import SnapshotStore

    try:
        loaded = SnapshotStore(root).load()
    except StateError as e:
        raise ReportError("no snapshot to read in the state directory", state=root,
                          error=e.message) from e
    st = loaded.state
    view = StateView(step=int(loaded.info.step))
    if "som/weights" in st:
        shape = tuple(int(v) for v in st["som/map_shape"])
        w = np.asarray(st["som/weights"], dtype=np.float64)
        view.umatrix = umatrix(w, shape)
        hits = np.asarray(st["som/hits"], dtype=np.float64).reshape(shape)
        if hits.ndim == 3:
            hits = np.concatenate([hits[:, :, k] for k in range(hits.shape[2])], axis=1)
        view.hits = hits
    counters = st.get("evo/counters")
    view.rounds = 0 if counters is None else int(np.asarray(counters)[1])
    if view.rounds:  # evolution ran: its records, possibly empty
        view.births = np.asarray(st["evo/births"], dtype=np.int64).reshape(-1, 6)
        view.deaths = np.asarray(st["evo/deaths"], dtype=np.int64).reshape(-1, 3)
    return view
