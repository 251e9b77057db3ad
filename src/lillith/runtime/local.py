"""``lillith run`` on a local source (synthetic signal or a CSV replay).

The agent lives on one worker thread (a single-thread executor: the actor);
the event loop feeds it chunks of frames, takes a copy of its state at a
chunk boundary when a checkpoint is due, and writes the snapshot in the
background while the worker goes on with the next chunk. Chunks are aligned
to absolute frame numbers, so a run that is stopped (or killed) and resumed
from a snapshot makes exactly the calls an uninterrupted run makes: it
continues bit-identically. The source is indexed by frame number, so a
resumed run continues with the frame after the snapshot's last one. The agent
runs its evolution rounds (``agent.evolution``) at the steps they fall due,
so they too are the same in a resumed run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from lillith.agents.agent import Agent
from lillith.agents.metrics import Metrics
from lillith.errors import LillithError
from lillith.runtime.checkpoint import Checkpointer
from lillith.runtime.config import Settings
from lillith.runtime.evolution import log_evolution
from lillith.runtime.resume import agent_store, resume

log = structlog.get_logger(component="run")

CHUNK = 256
"""Frames per worker call; chunk boundaries are multiples of this frame number."""

Frames = Callable[[int, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]]


@dataclass(frozen=True)
class LocalSource:
    """Frames by absolute frame number: ``frames(start, n)`` -> (values, labels)."""

    name: str
    width: int
    frames: Frames


def open_source(source: str, seed: int) -> LocalSource:
    """``synthetic`` or ``replay:PATH`` (a CSV file)."""
    from lillith.sensors.csvfile import read_csv_stream
    from lillith.sensors.synthetic import SyntheticSignal

    if source == "synthetic":
        synth = SyntheticSignal(4, seed=seed)

        def synth_frames(start: int, n: int) -> Any:
            return synth.generate(start, n)

        return LocalSource(source, synth.n_channels, synth_frames)
    if source.startswith("replay:"):
        from lillith.runtime.replay import warn_without_time
        from lillith.sensors.csvfile import AUTO_TIME

        stream = read_csv_stream(Path(source[len("replay:"):]), timestamp_column=AUTO_TIME)
        warn_without_time(stream, AUTO_TIME)

        def csv_frames(start: int, n: int) -> Any:
            vals = stream.values[start:start + n]
            return vals, np.zeros(vals.shape[0], dtype=bool)

        return LocalSource(source, int(stream.values.shape[1]), csv_frames)
    raise LillithError("unknown source (synthetic | replay:PATH | mqtt://HOST:PORT[/FILTER])",
                       source=source)


async def run_local(settings: Settings, src: LocalSource, stop: asyncio.Event, *,
                    max_frames: int | None = None, until_step: int | None = None,
                    duration: float | None = None, fresh: bool = False,
                    checkpoint_every: int | None = None) -> int:
    """Run until ``stop``, ``max_frames`` frames of this run, the agent's step
    ``until_step``, ``duration`` seconds or the end of the source; snapshot on
    the way (cadence from the settings, or every ``checkpoint_every`` frames)
    and at the end.

    Returns the number of frames processed by this run.
    """
    st = settings.state
    store = agent_store(st.dir, "default", keep_last=st.keep_last, keep_every=st.keep_every,
                        storage_options=st.storage_options or None)
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(1, thread_name_prefix="agent-default")
    cp = Checkpointer(store, agent="default",
                      every_frames=checkpoint_every or st.checkpoint_every_frames,
                      every_seconds=st.checkpoint_every_seconds,
                      retry_min_s=st.retry_min_s, retry_max_s=st.retry_max_s)
    try:
        agent = await loop.run_in_executor(worker, lambda: resume(
            store, settings.agent, n_channels=src.width, fresh=fresh, log=log))
        if agent is not None:
            cp.mark(agent.step)
        else:
            agent = await loop.run_in_executor(worker, lambda: Agent(src.width, settings.agent))
        limit = until_step
        if max_frames is not None:
            limit = min(limit or 1 << 62, agent.step + max_frames)
        return await _loop(agent, src, stop, worker, cp, limit, duration)
    finally:
        worker.shutdown(wait=True)


def _log_round(report: dict[str, Any]) -> None:
    log_evolution("default", report, "schedule")


async def _loop(agent: Agent, src: LocalSource, stop: asyncio.Event, worker: ThreadPoolExecutor,
                cp: Checkpointer, limit: int | None, duration: float | None) -> int:
    loop = asyncio.get_running_loop()
    log.info("agent_started", source=src.name, channels=src.width, step=agent.step,
             fabric=list(agent.config.fabric.shape))
    start = time.monotonic()
    first = agent.step
    last_log = 0.0
    async with asyncio.TaskGroup() as tg:
        while not stop.is_set():
            if duration is not None and time.monotonic() - start >= duration:
                break
            step = agent.step
            n = CHUNK - step % CHUNK
            if limit is not None:
                n = min(n, limit - step)
                if n <= 0:
                    break
            values, labels = src.frames(step, n)
            if values.shape[0] == 0:
                break
            # the agent runs a round due at a step before its frame (so never after
            # the last one), at the same step in a resumed run
            ms: list[Metrics] = await loop.run_in_executor(
                worker, partial(agent.process_many, values, on_evolution=_log_round))
            for m in ms:
                if m.alarm_onset:
                    log.warning("alarm", step=m.step, reason=m.alarm_reason,
                                likelihood=round(m.anomaly_likelihood, 6))
            if cp.due(agent.step, while_busy=True):
                # a local source can wait for the previous write: snapshots then
                # fall on the cadence's steps however slow the disk is
                await cp.wait()
                if cp.due(agent.step):  # (counted from the snapshot now on storage)
                    state = await loop.run_in_executor(worker, agent.get_state)
                    tg.create_task(cp.write(state, agent.step, reason="cadence"),
                                   name="checkpoint")
            now = time.monotonic()
            if now - last_log >= 1.0:
                last_log = now
                top = max(ms, key=lambda m: m.anomaly_likelihood)
                log.info("frames_processed", step=agent.step,
                         mean_loss=float(np.mean([m.loss for m in ms])),
                         max_likelihood=round(top.anomaly_likelihood, 6), at_step=top.step,
                         labelled_anomalies=int(np.sum(labels)), energy=round(ms[-1].energy, 4),
                         mode=ms[-1].mode,
                         frames_per_s=round((agent.step - first) / max(now - start, 1e-9), 1))
    # the task group waited for the last cadence write; then the shutdown snapshot
    state = await loop.run_in_executor(worker, agent.get_state)
    await cp.write(state, agent.step, reason="shutdown")
    log.info("agent_stopped", step=agent.step, frames=agent.step - first,
             seconds=round(time.monotonic() - start, 2), snapshots=cp.written,
             snapshot_failures=cp.failures)
    return agent.step - first
