"""NAB v1.1 scoring (Numenta Anomaly Benchmark), exact and vectorised.

Implements the rules of NAB v1.1 (Lavin & Ahmad 2015, numenta/NAB) without depending on the NAB
package:

1. the first ``min(floor(0.15 * n), 750)`` rows of each file (probation) are
   not scored;
2. each row gets a weight from its position relative to the anomaly windows
   (scaled sigmoid, see :func:`row_weights`);
3. for a threshold ``th`` a row is a detection when its score is ``>= th``;
   each window contributes the largest weight among its detected rows (its
   earliest detection) or ``-fn`` when none of its rows is detected; every
   detection outside windows adds its (negative) weight;
4. one threshold is chosen for the whole corpus (per profile): the one that
   maximises the summed raw score. The search is exact: the corpus raw score is
   piecewise constant in ``th`` and only changes at the distinct score values,
   so every distinct scored value (plus ``+inf``, no detections at all) is
   evaluated, with sorting and cumulative sums instead of a loop over
   thresholds;
5. normalised score ``100 * (raw - null) / (perfect - null)`` with
   ``perfect = tp * n_windows`` and ``null = -fn * n_windows``.

Choices where the rules leave room (they match NAB's ``Sweeper``):

* rows in probation are dropped from scoring entirely: they are never
  detections (neither inside nor outside windows), and a window's contribution
  only considers its rows after probation. Row weights are still computed from
  the full window geometry, so a window that starts inside probation can earn
  at most the weight of its first row after probation.
* a window with no row after probation (entirely inside probation) is ignored:
  it costs no ``-fn`` and is left out of ``n_windows`` for ``perfect`` and
  ``null``, so 0 is always "never fires". (NAB
  itself counts such windows in ``perfect`` but not in its null baseline; the
  31 development streams have no such window, so both agree there.)
* label timestamps are resolved to rows in file order: a window runs from
  the first row at or after its start to the first row equal to its end, or
  else the row before the first one after its end (NAB requires exact
  matches, which the corpus has, and uses the first occurrence). Timestamps
  may repeat (a DST hour in ``ec2_disk_write_bytes_1ef3de.csv``) or step back
  (an hour in NAB's ``machine_temperature_system_failure.csv``): rows are
  kept in file order, as a detector reads them.
* after a window of width 1, ``p = |R' - i| / 0`` is taken as ``+inf`` (weight
  ``-fp``) where NAB would divide by zero.
* ``NaN`` (and ``-inf``) scores are never detections; ``+inf`` is rejected
  (``inf`` is the threshold meaning "no detections").
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt

from lillith.errors import LillithError

__all__ = [
    "PROBATION_CAP",
    "PROBATION_FRACTION",
    "PROFILES",
    "CorpusScore",
    "CostProfile",
    "NabError",
    "NabStream",
    "load_corpus",
    "probation_length",
    "read_scores",
    "row_weights",
    "scaled_sigmoid",
    "score_all_profiles",
    "score_corpus",
    "window_ids",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PROBATION_FRACTION = 0.15
"""Fraction of each file spent in probation."""
PROBATION_CAP = 750
"""Maximum probation length in rows (``0.15 * 5000`` in NAB)."""

DATA_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LABEL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class NabError(LillithError):
    """Invalid NAB corpus, labels, results tree or scores."""


class CostProfile(NamedTuple):
    """Weights of one NAB application profile.

    Attributes
    ----------
    tp:
        Reward of a window detected at its first row.
    fn:
        Cost of a missed window.
    fp:
        Cost of a false positive far from any window.
    """

    tp: float
    fn: float
    fp: float


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile(tp=1.0, fn=1.0, fp=0.11),
    "reward_low_FP_rate": CostProfile(tp=1.0, fn=1.0, fp=0.22),
    "reward_low_FN_rate": CostProfile(tp=1.0, fn=2.0, fp=0.11),
}
"""The three NAB v1.1 profiles."""


@dataclass(frozen=True, eq=False)
class NabStream:
    """One labelled NAB data file.

    Attributes
    ----------
    path:
        Path relative to the ``data`` directory, with ``/`` separators, e.g.
        ``"realKnownCause/nyc_taxi.csv"`` (the key in ``labels_windows.json``).
    timestamps:
        Row timestamps, ``datetime64[ns]``, shape ``(n,)``.
    values:
        Row values, ``float64``, shape ``(n,)``.
    windows:
        Anomaly windows as inclusive row-index pairs ``(start, end)``, sorted
        and non-overlapping.
    """

    path: str
    timestamps: npt.NDArray[np.datetime64]
    values: FloatArray
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.values)

    @property
    def category(self) -> str:
        """Category directory, e.g. ``"realKnownCause"``."""
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def name(self) -> str:
        """File name, e.g. ``"nyc_taxi.csv"``."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def probation(self) -> int:
        """Probation length in rows, see :func:`probation_length`."""
        return probation_length(self.n)


class CorpusScore(TypedDict):
    """Result of :func:`score_corpus`.

    Keys
    ----
    score:
        Normalised score, 0 (never fires) to 100 (perfect).
    threshold:
        Chosen threshold (``inf`` means no detections); the highest one among
        equally good thresholds.
    raw:
        Summed raw score at ``threshold``.
    null, perfect:
        Raw scores of the detector that never fires and of the perfect one.
    tp, fn:
        Windows detected / missed at ``threshold``.
    fp:
        Detections (rows) outside windows at ``threshold``.
    n_windows:
        Scored windows (with at least one row after probation).
    n_candidates:
        Thresholds evaluated (distinct scored values plus ``inf``).
    per_file_raw:
        Raw score of each file at ``threshold``.
    """

    score: float
    threshold: float
    raw: float
    null: float
    perfect: float
    tp: int
    fn: int
    fp: int
    n_windows: int
    n_candidates: int
    per_file_raw: dict[str, float]


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------


def _read_csv_columns(path: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """Read named columns of a CSV file with a header row, as strings."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise NabError("empty CSV file", path=str(path)) from None
        try:
            idx = [header.index(c) for c in columns]
        except ValueError:
            raise NabError(
                "CSV file lacks a column", path=str(path), wanted=list(columns), header=header
            ) from None
        out: dict[str, list[str]] = {c: [] for c in columns}
        lists = [out[c] for c in columns]
        for row in reader:
            if not row:
                continue
            for lst, j in zip(lists, idx, strict=True):
                lst.append(row[j])
    return out


def _parse_times(texts: Sequence[str]) -> npt.NDArray[np.datetime64]:
    """Parse ``%Y-%m-%d %H:%M:%S[.%f]`` timestamps to ``datetime64[ns]``."""
    try:
        return np.array([t.strip() for t in texts], dtype="datetime64[ns]")
    except ValueError as exc:
        raise NabError("unparsable timestamp", detail=str(exc)) from None


def _first(mask: npt.NDArray[np.bool_], default: int) -> int:
    """Index of the first True of ``mask`` (``default`` when none)."""
    i = int(np.argmax(mask))
    return i if mask.size and bool(mask[i]) else default


def _resolve_windows(
    timestamps: npt.NDArray[np.datetime64], limits: Iterable[Sequence[str]], path: str
) -> list[tuple[int, int]]:
    """Turn label timestamp pairs into inclusive row-index pairs."""
    windows: list[tuple[int, int]] = []
    for pair in limits:
        if len(pair) != 2:
            raise NabError("window is not a [start, end] pair", path=path, window=list(pair))
        start, end = _parse_times(pair)
        left = _first(timestamps >= start, timestamps.size)
        right = _first(timestamps >= end, timestamps.size)
        if right >= timestamps.size or timestamps[right] != end:
            right -= 1  # last row before the end; else the first row at the end
        if left > right:
            continue  # no row inside the window
        if windows and left <= windows[-1][1]:
            raise NabError("windows overlap or are unsorted", path=path, window=list(pair))
        windows.append((left, right))
    return windows


def load_corpus(root: Path, labels_path: Path | None = None) -> list[NabStream]:
    """Load a NAB corpus laid out as ``root/data/<category>/<name>.csv``.

    Parameters
    ----------
    root:
        Corpus root holding ``data/`` and ``labels_windows.json``.
    labels_path:
        Windows file to use instead of ``root/labels_windows.json``. Its keys
        (relative paths under ``root/data``) define the streams, in order.

    Returns
    -------
    list of NabStream
        One stream per labelled file, in the labels file's order.

    Raises
    ------
    NabError
        When a labelled file is missing, unsorted or malformed.
    """
    root = Path(root)
    labels_file = labels_path if labels_path is not None else root / "labels_windows.json"
    with Path(labels_file).open() as fh:
        labels: dict[str, list[list[str]]] = json.load(fh)
    streams: list[NabStream] = []
    for rel, limits in labels.items():
        file = root / "data" / rel
        if not file.is_file():
            raise NabError("labelled data file is missing", path=str(file))
        cols = _read_csv_columns(file, ("timestamp", "value"))
        ts = _parse_times(cols["timestamp"])
        values = np.array(cols["value"], dtype=np.float64)
        streams.append(
            NabStream(
                path=rel, timestamps=ts, values=values, windows=_resolve_windows(ts, limits, rel)
            )
        )
    return streams


def _find_result_file(results_dir: Path, stream: NabStream) -> Path:
    """Find ``<name>`` or ``*_<name>`` in the stream's category directory."""
    directory = results_dir / stream.category
    exact = directory / stream.name
    if exact.is_file():
        return exact
    matches = sorted(p for p in directory.glob(f"*_{stream.name}") if p.is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NabError("no results file for stream", stream=stream.path, directory=str(directory))
    raise NabError(
        "ambiguous results files for stream",
        stream=stream.path,
        candidates=[p.name for p in matches],
    )


def read_scores(
    results_dir: Path, streams: Sequence[NabStream], column: str = "anomaly_score"
) -> dict[str, FloatArray]:
    """Read a detector's per-row scores from a results tree.

    The tree mirrors the data tree: for stream ``<category>/<name>.csv`` the
    file ``results_dir/<category>/<name>.csv`` is used, or else the single
    ``results_dir/<category>/*_<name>.csv`` (NAB names results
    ``<detector>_<name>.csv``).

    Parameters
    ----------
    results_dir:
        Root of the results tree.
    streams:
        Streams to read scores for.
    column:
        Score column, e.g. ``"anomaly_score"`` or ``"anomaly_likelihood"``.

    Returns
    -------
    dict of str to ndarray
        ``stream.path`` to ``float64`` scores of shape ``(stream.n,)``.

    Raises
    ------
    NabError
        When a file is missing or ambiguous, lacks the column, has the wrong
        number of rows, or (when it has a ``timestamp`` column) timestamps that
        differ from the data.
    """
    results_dir = Path(results_dir)
    out: dict[str, FloatArray] = {}
    for stream in streams:
        file = _find_result_file(results_dir, stream)
        with file.open(newline="") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
        wanted = [column, "timestamp"] if "timestamp" in header else [column]
        cols = _read_csv_columns(file, wanted)
        scores = np.array(cols[column], dtype=np.float64)
        if scores.shape != (stream.n,):
            raise NabError(
                "results file row count differs from data",
                path=str(file),
                rows=scores.size,
                expected=stream.n,
            )
        if "timestamp" in cols and not np.array_equal(
            _parse_times(cols["timestamp"]), stream.timestamps
        ):
            raise NabError("results timestamps differ from data", path=str(file))
        out[stream.path] = scores
    return out


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------


def probation_length(n: int) -> int:
    """Probation length of a file of ``n`` rows: ``min(floor(0.15 n), 750)``.

    Parameters
    ----------
    n:
        Number of rows.

    Returns
    -------
    int
        Number of leading rows that are not scored.
    """
    return min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP)


def scaled_sigmoid(p: npt.ArrayLike) -> FloatArray:
    """NAB's ``S(p) = 2 sigma(-5 p) - 1``, and ``-1`` where ``p > 3``.

    Parameters
    ----------
    p:
        Relative position(s).

    Returns
    -------
    ndarray
        ``S(p)`` as ``float64`` (0-d array for scalar input).
    """
    x = np.asarray(p, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, val)


_S_MINUS_ONE = float(scaled_sigmoid(-1.0))


def window_ids(n: int, windows: Sequence[tuple[int, int]]) -> IntArray:
    """Index of the window containing each row, ``-1`` outside windows.

    Parameters
    ----------
    n:
        Number of rows.
    windows:
        Inclusive row-index pairs, sorted and non-overlapping.

    Returns
    -------
    ndarray of int64
        Shape ``(n,)``.
    """
    ids = np.full(n, -1, dtype=np.int64)
    for k, (left, right) in enumerate(windows):
        ids[left : right + 1] = k
    return ids


def _unit_weights(
    n: int, windows: Sequence[tuple[int, int]]
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Profile-free weights and the inside-window mask.

    Inside windows the value is ``S(p) / S(-1)`` (to be scaled by ``tp``),
    outside ``S(p)`` or ``-1`` (to be scaled by ``fp``).
    """
    u = np.full(n, -1.0, dtype=np.float64)
    inside = np.zeros(n, dtype=np.bool_)
    idx = np.arange(n, dtype=np.float64)
    bounds = [(int(a), int(b)) for a, b in windows]
    for k, (left, right) in enumerate(bounds):
        if not 0 <= left <= right < n:
            raise NabError("window outside the file", window=(left, right), n=n)
        if k and left <= bounds[k - 1][1]:
            raise NabError("windows overlap or are unsorted", window=(left, right))
        width = right - left + 1
        rows = idx[left : right + 1]
        u[left : right + 1] = scaled_sigmoid(-(right - rows + 1.0) / width) / _S_MINUS_ONE
        inside[left : right + 1] = True
        stop = bounds[k + 1][0] if k + 1 < len(bounds) else n
        if stop > right + 1:
            after = idx[right + 1 : stop]
            if width > 1:
                u[right + 1 : stop] = scaled_sigmoid(np.abs(right - after) / (width - 1.0))
            # width 1: p = inf, weight stays -1
    return u, inside


def _as_profile(profile: CostProfile | str) -> CostProfile:
    if isinstance(profile, str):
        try:
            return PROFILES[profile]
        except KeyError:
            raise NabError("unknown profile", profile=profile, known=list(PROFILES)) from None
    return CostProfile(*profile)


def row_weights(
    n: int, windows: Sequence[tuple[int, int]], profile: CostProfile | str = "standard"
) -> FloatArray:
    """Per-row NAB weight (the score a detection on that row would earn).

    With ``S(p) = 2 sigma(-5p) - 1`` (``-1`` for ``p > 3``):

    * inside a window ``[L, R]`` of width ``W``: ``S(-(R - i + 1) / W) * tp /
      S(-1)`` (exactly ``tp`` at ``i = L``, decreasing towards ``R``);
    * after a window ``[L', R']`` of width ``W'`` (the last one that ended):
      ``S(|R' - i| / (W' - 1)) * fp``;
    * before the first window: ``-fp``.

    Probation is not applied here (see :func:`probation_length`); the weights
    of probation rows are what NAB computes but never scores.

    Parameters
    ----------
    n:
        Number of rows.
    windows:
        Inclusive row-index pairs, sorted and non-overlapping.
    profile:
        A :class:`CostProfile` or the name of one in :data:`PROFILES`.

    Returns
    -------
    ndarray of float64
        Shape ``(n,)``.
    """
    prof = _as_profile(profile)
    u, inside = _unit_weights(n, windows)
    return np.where(inside, u * prof.tp, u * prof.fp)


# --------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """Profile-independent sorted structures for the exact threshold search."""

    candidates: FloatArray  # distinct scored values, descending
    fp_scores: FloatArray  # scored rows outside windows, ascending score
    fp_units: FloatArray  # their unit weights (times fp)
    ev_scores: FloatArray  # window events, ascending score
    ev_units: FloatArray  # unit weight of the window's new earliest detection
    ev_prev_units: FloatArray  # previous earliest detection's unit weight (or nan)
    n_windows: int
    streams: tuple[NabStream, ...]
    scores: tuple[FloatArray, ...]  # scored-row scores, NaN -> -inf, probation -> -inf
    units: tuple[FloatArray, ...]
    inside: tuple[npt.NDArray[np.bool_], ...]


def _prepare(
    streams: Sequence[NabStream], scores_by_path: Mapping[str, npt.ArrayLike]
) -> _Prepared:
    fp_s: list[FloatArray] = []
    fp_u: list[FloatArray] = []
    ev_s: list[FloatArray] = []
    ev_u: list[FloatArray] = []
    ev_p: list[FloatArray] = []
    all_scores: list[FloatArray] = []
    kept_scores: list[FloatArray] = []
    kept_units: list[FloatArray] = []
    kept_inside: list[npt.NDArray[np.bool_]] = []
    n_windows = 0
    seen: set[str] = set()
    for stream in streams:
        if stream.path in seen:
            raise NabError("stream listed twice", path=stream.path)
        seen.add(stream.path)
        if stream.path not in scores_by_path:
            raise NabError("no scores for stream", path=stream.path)
        raw = np.asarray(scores_by_path[stream.path], dtype=np.float64)
        if raw.shape != (stream.n,):
            raise NabError(
                "scores have the wrong shape", path=stream.path, shape=raw.shape, n=stream.n
            )
        if bool(np.any(raw == np.inf)):
            raise NabError("scores contain +inf", path=stream.path)
        s = np.where(np.isnan(raw), -np.inf, raw)
        prob = stream.probation
        s[:prob] = -np.inf  # probation rows are never detections
        u, inside = _unit_weights(stream.n, stream.windows)
        kept_scores.append(s)
        kept_units.append(u)
        kept_inside.append(inside)

        scored = s[prob:]
        all_scores.append(scored[scored > -np.inf])
        out_mask = ~inside
        out_mask[:prob] = False
        fp_s.append(s[out_mask])
        fp_u.append(u[out_mask])

        for left, right in stream.windows:
            lo = max(left, prob)
            if lo > right:
                continue  # window entirely in probation: not scored
            n_windows += 1
            ws = s[lo : right + 1]
            order = np.argsort(-ws, kind="stable")
            order = order[ws[order] > -np.inf]
            if order.size == 0:
                continue
            # earliest detected row as the threshold decreases through the scores
            first = np.minimum.accumulate(order)
            change = np.ones(first.size, dtype=np.bool_)
            change[1:] = first[1:] < first[:-1]
            rows = first[change]
            units = u[lo + rows]
            prev = np.empty_like(units)
            prev[0] = np.nan  # previously undetected: contribution was -fn
            prev[1:] = units[:-1]
            ev_s.append(ws[order[change]])
            ev_u.append(units)
            ev_p.append(prev)

    def cat(parts: list[FloatArray]) -> FloatArray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)

    fps, fpu = cat(fp_s), cat(fp_u)
    o = np.argsort(fps, kind="stable")
    evs, evu, evp = cat(ev_s), cat(ev_u), cat(ev_p)
    e = np.argsort(evs, kind="stable")
    candidates = np.unique(cat(all_scores))[::-1]
    return _Prepared(
        candidates=np.ascontiguousarray(candidates),
        fp_scores=fps[o],
        fp_units=fpu[o],
        ev_scores=evs[e],
        ev_units=evu[e],
        ev_prev_units=evp[e],
        n_windows=n_windows,
        streams=tuple(streams),
        scores=tuple(kept_scores),
        units=tuple(kept_units),
        inside=tuple(kept_inside),
    )


def _sum_at_or_above(
    sorted_scores: FloatArray, values: FloatArray, thresholds: FloatArray
) -> FloatArray:
    """``sum(values[sorted_scores >= th])`` for every ``th`` (scores ascending)."""
    suffix = np.zeros(values.size + 1, dtype=np.float64)
    suffix[:-1] = np.cumsum(values[::-1])[::-1]
    return suffix[np.searchsorted(sorted_scores, thresholds, side="left")]


def _at_threshold(prep: _Prepared, prof: CostProfile, threshold: float
                  ) -> tuple[dict[str, float], int, int, int]:
    """Exact per-file raw scores at ``threshold``, and the tp, fn, fp counts."""
    per_file: dict[str, float] = {}
    tp = fn = fp = 0
    for stream, s, u, inside in zip(
        prep.streams, prep.scores, prep.units, prep.inside, strict=True
    ):
        det = s >= threshold
        out_det = det & ~inside
        fp += int(np.count_nonzero(out_det))
        file_raw = float(np.sum(u[out_det])) * prof.fp
        prob = stream.probation
        for left, right in stream.windows:
            lo = max(left, prob)
            if lo > right:
                continue
            hits = np.flatnonzero(det[lo : right + 1])
            if hits.size:
                tp += 1
                file_raw += float(u[lo + hits[0]]) * prof.tp
            else:
                fn += 1
                file_raw -= prof.fn
        per_file[stream.path] = file_raw
    return per_file, tp, fn, fp


def _evaluate(prep: _Prepared, prof: CostProfile) -> CorpusScore:
    tp_scale = prof.tp
    null = -prof.fn * prep.n_windows
    perfect = prof.tp * prep.n_windows

    # window events: delta of the window's contribution when its earliest
    # detection moves earlier (or when it is first detected)
    new_val = prep.ev_units * tp_scale
    old_val = np.where(np.isnan(prep.ev_prev_units), -prof.fn, prep.ev_prev_units * tp_scale)
    deltas = new_val - old_val

    thresholds = np.concatenate(([np.inf], prep.candidates))
    totals = (
        null
        + _sum_at_or_above(prep.ev_scores, deltas, thresholds)
        + _sum_at_or_above(prep.fp_scores, prep.fp_units * prof.fp, thresholds)
    )
    best = int(np.argmax(totals))  # first maximum: highest threshold
    threshold = float(thresholds[best])

    per_file, tp, fn, fp = _at_threshold(prep, prof, threshold)
    raw = float(sum(per_file.values()))
    span = perfect - null
    score = 100.0 * (raw - null) / span if span > 0 else 0.0
    return CorpusScore(
        score=score,
        threshold=threshold,
        raw=raw,
        null=null,
        perfect=perfect,
        tp=tp,
        fn=fn,
        fp=fp,
        n_windows=prep.n_windows,
        n_candidates=int(thresholds.size),
        per_file_raw=per_file,
    )


def score_corpus(
    streams: Sequence[NabStream],
    scores_by_path: Mapping[str, npt.ArrayLike],
    profile: CostProfile | str = "standard",
) -> CorpusScore:
    """Score a detector on a corpus with one exact optimal threshold.

    Parameters
    ----------
    streams:
        Labelled streams (see :func:`load_corpus`).
    scores_by_path:
        ``stream.path`` to the detector's per-row scores, shape ``(stream.n,)``.
    profile:
        A :class:`CostProfile` or the name of one in :data:`PROFILES`.

    Returns
    -------
    CorpusScore
        Normalised score, chosen threshold, raw/null/perfect, counts and
        per-file raw scores.

    Raises
    ------
    NabError
        When a stream has no scores, or scores of the wrong shape.
    """
    return _evaluate(_prepare(streams, scores_by_path), _as_profile(profile))


def score_all_profiles(
    streams: Sequence[NabStream], scores_by_path: Mapping[str, npt.ArrayLike]
) -> dict[str, float]:
    """Normalised scores under the three NAB profiles (threshold per profile).

    Parameters
    ----------
    streams:
        Labelled streams (see :func:`load_corpus`).
    scores_by_path:
        ``stream.path`` to the detector's per-row scores.

    Returns
    -------
    dict of str to float
        Keys ``standard``, ``reward_low_FP_rate``, ``reward_low_FN_rate``.
    """
    prep = _prepare(streams, scores_by_path)
    return {name: _evaluate(prep, prof)["score"] for name, prof in PROFILES.items()}


class FixedThresholdScore(TypedDict):
    """Result of :func:`score_at`."""

    raw: float
    null: float
    perfect: float
    tp: int
    fn: int
    fp: int


def score_at(
    streams: Sequence[NabStream],
    scores_by_path: Mapping[str, npt.ArrayLike],
    threshold: float,
    profile: CostProfile | str = "standard",
) -> FixedThresholdScore:
    """Raw, null and perfect scores of a detector at a given threshold (no search).

    Used to score held-out streams at a threshold chosen on other streams;
    ``100 * (raw - null) / (perfect - null)`` normalises, summed over any
    partition of a corpus.

    Raises
    ------
    NabError
        When a stream has no scores, or scores of the wrong shape.
    """
    prof = _as_profile(profile)
    prep = _prepare(streams, scores_by_path)
    per_file, tp, fn, fp = _at_threshold(prep, prof, threshold)
    return FixedThresholdScore(raw=float(sum(per_file.values())), null=-prof.fn * prep.n_windows,
                               perfect=prof.tp * prep.n_windows, tp=tp, fn=fn, fp=fp)
