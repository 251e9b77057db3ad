"""``lillith replay``: stream CSV files through agents as fast as possible."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.agents.metrics import Metrics
from lillith.runtime.logging import get_logger
from lillith.runtime.resume import resume
from lillith.sensors.csvfile import (
    AUTO_TIME,
    LABEL_COLUMNS,
    TIME_COLUMNS,
    CsvStream,
    find_csv_files,
    read_csv_stream,
)
from lillith.state.snapshot import SnapshotStore

CHUNK = 512


@dataclass(frozen=True)
class ReplayResult:
    """Summary of one replayed file."""

    source: Path
    output: Path
    rows: int
    mean_loss: float
    start_step: int = 0
    snapshot: str | None = None
    evolution_rounds: int = 0
    times_back: int = 0
    times_repeated: int = 0


@dataclass(frozen=True)
class ReplayState:
    """Snapshots of replayed agents: resume from ``root`` (LATEST) unless ``fresh``,
    snapshot every ``every`` rows (at chunk boundaries) and at the end of each file.
    With several input files each gets ``root/<relative path without suffix>``."""

    root: str
    fresh: bool = False
    every: int | None = None
    keep_last: int = 5
    keep_every: int = 0
    storage_options: dict[str, Any] | None = None

    def store(self, rel: Path | None) -> SnapshotStore:
        """Store of one input (``rel`` None: the root itself)."""
        root = self.root if rel is None else f"{self.root.rstrip('/')}/{rel.with_suffix('')}"
        return SnapshotStore(root, keep_last=self.keep_last, keep_every=self.keep_every,
                             storage_options=self.storage_options)


def output_columns(stream: CsvStream) -> list[str]:
    """Header of the per-row output file of ``stream``."""
    preds = (["prediction"] if len(stream.columns) == 1
             else [f"prediction_{c}" for c in stream.columns])
    return ["timestamp", *stream.columns, "anomaly_score", "anomaly_likelihood", "alarm",
            "alarm_reason", *preds, "loss", "bmu", "mode", "energy", "skipped"]


def _row(stream: CsvStream, i: int, m: Metrics) -> list[str]:
    return [stream.timestamps[i], *(repr(float(v)) for v in stream.values[i]),
            repr(m.anomaly_score), repr(m.anomaly_likelihood), str(int(m.alarm)),
            m.alarm_reason, *(repr(p) for p in m.prediction), repr(m.loss), str(m.bmu), m.mode,
            repr(m.energy), str(int(m.skipped))]


def replay_stream(
    agent: Agent,
    stream: CsvStream,
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    store: SnapshotStore | None = None,
    every: int | None = None,
) -> ReplayResult:
    """Feed every row of ``stream`` to ``agent`` in order and write one output row each.

    The forecast in row i is the agent's prediction of row i + 1, in the
    input's units. No look-ahead: row i is scored before row i + 1 is read.
    With ``store`` the agent is snapshotted every ``every`` rows (at chunk
    boundaries) and after the last row. The agent runs its evolution rounds at
    the steps they fall due.
    """
    start_step = agent.step
    back0, repeated0 = agent.frame_times.back, agent.frame_times.repeated
    since = 0
    reports: list[dict[str, Any]] = []
    snap: str | None = None
    out.parent.mkdir(parents=True, exist_ok=True)
    total_loss = 0.0
    n = stream.values.shape[0]
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(output_columns(stream))
        lo = 0
        while lo < n:
            hi = min(n, lo + CHUNK)
            metrics = agent.process_many(stream.values[lo:hi], list(stream.t[lo:hi]),
                                         on_evolution=reports.append)
            for k, m in enumerate(metrics):
                w.writerow(_row(stream, lo + k, m))
                total_loss += m.loss
            if progress is not None:
                progress(hi - lo)
            since += hi - lo
            if store is not None and every is not None and since >= every and hi < n:
                since = 0
                store.write(agent.get_state(), step=agent.step)
            lo = hi
    if store is not None:
        snap = store.write(agent.get_state(), step=agent.step).name
    rounds = len(reports)
    failed = [r for r in reports if "error" in r]
    if failed:
        get_logger("replay").warning("evolution_failed", file=str(stream.path),
                                     rounds=len(failed), first=failed[0])
    back = agent.frame_times.back - back0
    repeated = agent.frame_times.repeated - repeated0
    if back or repeated:  # processed in file order; every time-based score takes the latest time
        get_logger("replay").warning("stream_time_not_increasing", file=str(stream.path),
                                     rows_back=back, rows_repeated=repeated)
    return ReplayResult(stream.path, out, n, total_loss / max(n, 1), start_step, snap, rounds,
                        back, repeated)


def warn_without_time(stream: CsvStream, asked: str | None) -> None:
    """Log ``no_time_column`` when a time column was asked for (by name, or
    :data:`~lillith.sensors.csvfile.AUTO_TIME`) and none was found: the rows
    are then numbered, and every column is a data channel."""
    if asked is None or stream.timestamp_column is not None:
        return
    get_logger("replay").warning(
        "no_time_column", path=str(stream.path), asked=asked, channels=stream.columns[:16],
        detail="no time column found (looked for " + (", ".join(TIME_COLUMNS)
               if asked == AUTO_TIME else asked) + "); rows are numbered and every column "
               "is a data channel; name it with --timestamp-column")


def replay_paths(
    inputs: Sequence[Path],
    out: Path,
    config: AgentConfig,
    *,
    timestamp_column: str | None = "timestamp",
    value_columns: Sequence[str] | None = None,
    exclude: Sequence[str] = LABEL_COLUMNS,
    show_progress: bool = True,
    state: ReplayState | None = None,
) -> list[ReplayResult]:
    """Replay files and directory trees, an agent per file (fresh, or resumed
    from ``state``: a file's rows then continue the agent's stream). Each
    file's delimiter is detected; ``exclude`` columns (labels) are never input
    unless ``value_columns`` names them.

    ``out`` is a file when a single file is given and ``out`` does not name
    an existing directory; otherwise a directory mirroring the inputs' tree.
    """
    files = find_csv_files(inputs)
    single = len(files) == 1 and not Path(inputs[0]).is_dir() and not out.is_dir()
    streams = [(read_csv_stream(f, timestamp_column=timestamp_column,
                                value_columns=value_columns, exclude=exclude), rel)
               for f, rel in files]
    for stream, _ in streams:
        warn_without_time(stream, timestamp_column)
    total = sum(s.values.shape[0] for s, _ in streams)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="rows", dynamic_ncols=True)
    results = []
    try:
        for stream, rel in streams:
            width = stream.values.shape[1]
            store = None if state is None else state.store(None if single else rel)
            agent = None
            if store is not None and state is not None:
                agent = resume(store, config, name=rel.stem, n_channels=width,
                               fresh=state.fresh)
            if agent is None:
                agent = Agent(width, config, name=rel.stem)
            dest = out if single else out / rel
            results.append(replay_stream(agent, stream, dest,
                                         progress=None if bar is None else bar.update,
                                         store=store, every=None if state is None
                                         else state.every))
    finally:
        if bar is not None:
            bar.close()
    return results
