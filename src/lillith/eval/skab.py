"""SKAB (Skoltech Anomaly Benchmark): loading and its binary scoring protocol.

The published protocol (SKAB's ``core/metrics.py``): in each file the first
``train`` rows (400) are training data and are not scored; every later row is
scored point by point against the ``anomaly`` label; true and false
positives and negatives are pooled over all scored rows of all files, and
``F1 = TP / (TP + (FN + FP) / 2)``, ``FAR = FP / (FP + TN)``,
``MAR = FN / (FN + TP)`` (FAR and MAR in percent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from lillith.errors import LillithError
from lillith.sensors.csvfile import read_csv_stream

TRAIN_ROWS = 400
"""Rows at the start of each file that are training data (not scored)."""
LABEL_COLUMNS = ("anomaly", "changepoint")
"""Label columns of a SKAB file (never input)."""


class SkabError(LillithError):
    """A SKAB tree, file or prediction that cannot be scored."""


@dataclass(frozen=True, eq=False)
class SkabFile:
    """One labelled SKAB experiment.

    Attributes
    ----------
    path : str
        Path relative to the corpus root (``/`` separators), e.g. ``"valve1/0.csv"``.
    t : ndarray, float64, shape (n,)
        Stream time, s since the epoch (UTC).
    values : ndarray, float64, shape (n, C)
        The sensor channels, input units.
    columns : list of str
        Names of the channels.
    anomaly : ndarray, bool, shape (n,)
        The ``anomaly`` label of every row.
    """

    path: str
    t: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    columns: list[str]
    anomaly: npt.NDArray[np.bool_]

    @property
    def group(self) -> str:
        """Cross-validation group: the experiment file itself."""
        return self.path


class SkabScore(TypedDict):
    """Pooled binary scores (:func:`score`)."""

    f1: float
    far: float
    mar: float
    tp: int
    fp: int
    fn: int
    tn: int


def load_corpus(root: Path) -> list[SkabFile]:
    """Load every labelled experiment under ``root`` (``*.csv`` files with an
    ``anomaly`` column, recursively, sorted by path; files without labels,
    such as an anomaly-free run, are skipped).

    Raises
    ------
    SkabError
        When no labelled file is found.
    """
    root = Path(root)
    files: list[SkabFile] = []
    paths = sorted(root.rglob("*.csv"), key=lambda p: _natural(p.relative_to(root)))
    for p in paths:
        head = read_csv_stream(p, timestamp_column="datetime", exclude=())
        if "anomaly" not in head.columns:
            continue
        values_cols = [c for c in head.columns if c not in LABEL_COLUMNS]
        idx = [head.columns.index(c) for c in values_cols]
        lab = head.values[:, head.columns.index("anomaly")] > 0.5
        files.append(SkabFile(p.relative_to(root).as_posix(), head.t, head.values[:, idx].copy(),
                              values_cols, lab))
    if not files:
        raise SkabError("no labelled SKAB file found", root=str(root))
    return files


def _natural(p: Path) -> list[tuple[int, int, str]]:
    """Sort key: ``valve1/2.csv`` before ``valve1/10.csv``."""
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in p.with_suffix("").parts]


def score(files: Sequence[SkabFile], alarms: Mapping[str, npt.ArrayLike], *,
          train: int = TRAIN_ROWS) -> SkabScore:
    """Pool the binary predictions of ``files`` (``alarms[path]``, one 0/1 per
    row) over every row after the first ``train`` of each file.

    Raises
    ------
    SkabError
        When a file has no predictions or predictions of another length.
    """
    tp = fp = fn = tn = 0
    for f in files:
        if f.path not in alarms:
            raise SkabError("no predictions for file", path=f.path)
        a = np.asarray(alarms[f.path]).astype(bool)
        if a.shape != f.anomaly.shape:
            raise SkabError("predictions have another length", path=f.path, shape=a.shape,
                            rows=f.anomaly.shape[0])
        p, lab = a[train:], f.anomaly[train:]
        tp += int(np.count_nonzero(p & lab))
        fp += int(np.count_nonzero(p & ~lab))
        fn += int(np.count_nonzero(~p & lab))
        tn += int(np.count_nonzero(~p & ~lab))
    f1 = tp / (tp + 0.5 * (fn + fp)) if tp + fn + fp else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return SkabScore(f1=f1, far=far, mar=mar, tp=tp, fp=fp, fn=fn, tn=tn)
