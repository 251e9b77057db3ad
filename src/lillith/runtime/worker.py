"""One worker thread per agent: the only code that touches the agent's state.

The event loop hands frames over through a bounded queue and gets results
back with ``call_soon_threadsafe``; numba kernels release the GIL, so the loop
stays responsive while the worker computes. Frames already waiting when the
worker turns to its queue are processed in one run (up to :data:`MAX_RUN`),
with the same results as one call per frame. Commands run on the worker
between frames (a step boundary) and answer through a future. The agent runs
an evolution round that falls due before the frame of its step; its report
goes to ``on_evolution``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import structlog

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.agents.metrics import Metrics
from lillith.sensors.codec import Frame

Policy = Literal["backpressure", "drop_oldest"]
MAX_RUN = 256  # frames the worker takes off its queue at once
AGENT_ERROR = "agent_error"
"""Dead-letter reason of a valid frame that the agent failed to process."""

log = structlog.get_logger(component="worker")


class _Empty:
    """Stands for "nothing more was waiting" in the worker's queue."""


_NOTHING = _Empty()


@dataclass(frozen=True)
class Result:
    """What the worker reports for one frame.

    ``metrics`` is None when the frame could not be processed (counted in
    ``AgentWorker.errors``); ``reason`` (:data:`AGENT_ERROR` or
    ``wrong_length``) and ``error`` (the exception) then say why.
    """

    agent: str
    seq: int
    metrics: Metrics | None
    seconds: float
    reason: str | None = None
    error: str | None = None


@dataclass
class _Command:
    fn: Callable[[Agent | None], Any]
    future: Future[Any]


class AgentWorker:
    """Bounded queue + thread around one :class:`Agent` (created at the first frame
    when the width is not configured)."""

    def __init__(self, name: str, config: AgentConfig, *, queue_size: int, policy: Policy,
                 width: int | None, on_results: Callable[[list[Result]], None],
                 on_evolution: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.policy = policy
        self.width = width
        self.agent: Agent | None = Agent(width, config, name=name) if width else None
        # an unbounded C queue (a few hundred ns per put, where queue.Queue's lock and
        # condition cost microseconds on the loop's hot path), bounded here: frames
        # waiting = put - taken - dropped from the front, each counter written by
        # one thread only (the loop puts and drops, the worker takes)
        self._q: queue.SimpleQueue[tuple[int, Frame] | _Command | None] = queue.SimpleQueue()
        self._cap = queue_size
        self._put = 0
        self._taken = 0
        self._stolen = 0
        self._on_results = on_results  # one call per run of results
        self._on_evolution = on_evolution
        self._thread = threading.Thread(target=self._run, name=f"agent-{name}", daemon=True)
        self.dropped = 0
        self.processed = 0
        self.errors = 0
        self._carry = 0.0  # seconds of work not yet counted in a frame's time

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    @property
    def depth(self) -> int:
        """Frames waiting in the queue."""
        return self._put - self._taken - self._stolen

    def offer(self, seq: int, frame: Frame) -> tuple[bool, int | None]:
        """Enqueue without blocking: ``(accepted, seq of a dropped frame or None)``.

        Under ``backpressure`` a full queue refuses (``accepted`` False); under
        ``drop_oldest`` it loses its oldest frame (counted) and takes this one.
        Called from the event loop's thread only.
        """
        if self.depth < self._cap:
            self._q.put((seq, frame))
            self._put += 1
            return True, None
        if self.policy == "backpressure":
            return False, None
        old: tuple[int, Frame] | _Command | _Empty | None
        try:
            old = self._q.get_nowait()
        except queue.Empty:  # the worker took them all meanwhile
            old = _NOTHING
        if isinstance(old, tuple):
            self._stolen += 1
            self.dropped += 1
            lost = old[0]
        elif isinstance(old, _Empty):
            lost = None
        else:  # a command or the stop mark is never dropped: back it goes, and
            self._q.put(old)  # this frame is the one lost
            self.dropped += 1
            return True, seq
        self._q.put((seq, frame))
        self._put += 1
        return True, lost

    def take(self, block: bool = False) -> tuple[int, Frame] | _Command | _Empty | None:
        """The next item, waiting for one when ``block``, else ``_NOTHING`` if none
        is waiting; the worker's side."""
        try:
            item = self._q.get(block)
        except queue.Empty:
            return _NOTHING
        if isinstance(item, tuple):
            self._taken += 1
        return item

    async def put(self, seq: int, frame: Frame) -> int | None:
        """Enqueue, waiting for space under ``backpressure`` (the caller stops reading).

        Returns the seq of a frame dropped to make room (``drop_oldest``), if any.
        """
        while True:
            ok, lost = self.offer(seq, frame)
            if ok:
                return lost
            await asyncio.sleep(0.002)

    def call(self, fn: Callable[[Agent | None], Any]) -> Future[Any]:
        """Run ``fn(agent)`` on the worker between frames; returns a future.

        The caller may give up on it (``future.cancel()``, as an awaiting task
        cancelled through :func:`asyncio.wrap_future` does) until the worker
        starts it: then ``fn`` does not run. A started command runs to its end
        and its result or exception is set (its ``cancel()`` returns False)."""
        fut: Future[Any] = Future()
        self._q.put(_Command(fn, fut))  # never refused: commands are not frames
        return fut

    def stop(self) -> None:
        """Ask the thread to finish what is queued, then exit."""
        self._q.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it has exited."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self.take(block=True)
            # frames already waiting are processed together (process_many gives the
            # same results as one call per frame, and is several times faster):
            # under load the worker keeps up, and an idle one still answers each
            # frame as it comes; a command or the stop mark ends the run
            frames: list[tuple[int, Frame]] = []
            while isinstance(item, tuple):
                frames.append(item)
                if len(frames) == MAX_RUN:
                    item = _NOTHING
                    break
                item = self.take()
            if frames:
                self._process(frames)
            if item is None:
                return
            # a command whose caller gave up (its future cancelled) is skipped; once
            # running, it can no longer be cancelled and its answer always lands
            if isinstance(item, _Command) and item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn(self.agent))
                except Exception as e:  # reported to the caller, never kills the worker
                    item.future.set_exception(e)

    def _process(self, frames: list[tuple[int, Frame]]) -> None:
        """Process a run of frames in order (the agent runs its evolution rounds
        at their steps, reported to ``on_evolution``)."""
        i = 0
        while i < len(frames):
            t0 = time.perf_counter()
            if self.agent is None:
                self.width = int(frames[i][1].values.size)
                self.agent = Agent(self.width, self.config, name=self.name)
            agent = self.agent
            # a chunk ends before a frame the agent cannot take (wrong width:
            # an error for that frame alone)
            j = i
            while j < len(frames) and frames[j][1].values.size == agent.n_channels:
                j += 1
            if j == i:  # frames[i] has the wrong width
                self.errors += 1
                self._on_results([Result(self.name, frames[i][0], None, 0.0, "wrong_length",
                                         f"{frames[i][1].values.size} values, the agent has "
                                         f"{agent.n_channels} channels")])
                i += 1
                continue
            chunk = frames[i:j]
            i = j
            # results go out part by part: a micro-batch's last frame is reported
            # before its training step, which then runs while the loop publishes
            done = 0
            try:
                for part in agent.process_iter(np.stack([f.values for _, f in chunk]),
                                               [f.t for _, f in chunk],
                                               on_evolution=self._on_evolution):
                    now = time.perf_counter()
                    dt = (now - t0 + self._carry) / len(part)  # per frame
                    t0, self._carry = now, 0.0
                    self._on_results([Result(self.name, seq, m, dt) for (seq, _), m in zip(
                        chunk[done:done + len(part)], part, strict=True)])
                    done += len(part)
                    self.processed += len(part)
            except Exception as e:
                # one frame must not take the others with it: the rest of the run
                # goes through the agent one frame at a time, and only the frames
                # that fail alone are reported failed
                log.warning("frame_run_failed", agent=self.name, frames=len(chunk) - done,
                            error=repr(e)[:500])
                self._carry += time.perf_counter() - t0
                self._one_by_one(chunk[done:])
                continue
            # a training step after the last part: counted in the next frame's time
            self._carry += time.perf_counter() - t0

    def _one_by_one(self, frames: list[tuple[int, Frame]]) -> None:
        """Process ``frames`` one call each (after a run failed); a frame that
        fails is reported with ``reason`` :data:`AGENT_ERROR` and the exception."""
        agent = self.agent
        assert agent is not None
        for seq, f in frames:
            t0 = time.perf_counter()
            try:
                (m,) = agent.process_many(f.values.reshape(1, -1), [f.t],
                                          on_evolution=self._on_evolution)
            except Exception as e:
                self.errors += 1
                r = Result(self.name, seq, None, time.perf_counter() - t0, AGENT_ERROR,
                           repr(e)[:500])
            else:
                self.processed += 1
                r = Result(self.name, seq, m, time.perf_counter() - t0 + self._carry)
                self._carry = 0.0
            self._on_results([r])
