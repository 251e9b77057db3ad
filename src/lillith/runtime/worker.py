"""One worker thread per agent: the only code that touches the agent's state.

The event loop hands frames over through a bounded queue and gets results
back with ``call_soon_threadsafe``; numba kernels release the GIL, so the loop
stays responsive while the worker computes. Commands run on the worker
between frames (a step boundary) and answer through a future. An evolution
round that falls due runs on the worker before the frame of its step.
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

from lillith.agents.agent import Agent, Metrics
from lillith.agents.config import AgentConfig
from lillith.sensors.codec import Frame

Policy = Literal["backpressure", "drop_oldest"]


@dataclass(frozen=True)
class Result:
    """What the worker reports for one frame."""

    agent: str
    seq: int
    metrics: Metrics | None  # None: the frame could not be processed (counted)
    seconds: float


@dataclass
class _Command:
    fn: Callable[[Agent | None], Any]
    future: Future[Any]


class AgentWorker:
    """Bounded queue + thread around one :class:`Agent` (created at the first frame
    when the width is not configured)."""

    def __init__(self, name: str, config: AgentConfig, *, queue_size: int, policy: Policy,
                 width: int | None, on_result: Callable[[Result], None],
                 on_evolution: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.policy = policy
        self.width = width
        self.agent: Agent | None = Agent(width, config, name=name) if width else None
        self._q: queue.Queue[tuple[int, Frame] | _Command | None] = queue.Queue(queue_size)
        self._on_result = on_result
        self._on_evolution = on_evolution
        self._thread = threading.Thread(target=self._run, name=f"agent-{name}", daemon=True)
        self.dropped = 0
        self.processed = 0
        self.errors = 0

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    @property
    def depth(self) -> int:
        """Frames waiting in the queue."""
        return self._q.qsize()

    def offer(self, seq: int, frame: Frame) -> tuple[bool, int | None]:
        """Enqueue without blocking: ``(accepted, seq of a dropped frame or None)``.

        Under ``backpressure`` a full queue refuses (``accepted`` False); under
        ``drop_oldest`` it loses its oldest frame (counted) and takes this one.
        """
        try:
            self._q.put_nowait((seq, frame))
            return True, None
        except queue.Full:
            if self.policy == "backpressure":
                return False, None
        lost: int | None = None
        try:
            old = self._q.get_nowait()
            if isinstance(old, tuple):
                self.dropped += 1
                lost = old[0]
            else:
                self._q.put_nowait(old)  # a command or the stop mark is never dropped
        except queue.Empty:
            pass
        try:
            self._q.put_nowait((seq, frame))
            return True, lost
        except queue.Full:
            self.dropped += 1
            return True, seq

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
        """Run ``fn(agent)`` on the worker between frames; returns a future."""
        fut: Future[Any] = Future()
        self._q.put(_Command(fn, fut))
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
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, _Command):
                try:
                    item.future.set_result(item.fn(self.agent))
                except Exception as e:  # reported to the caller, never kills the worker
                    item.future.set_exception(e)
                continue
            seq, frame = item
            t0 = time.perf_counter()
            try:
                if self.agent is None:
                    self.width = int(frame.values.size)
                    self.agent = Agent(self.width, self.config, name=self.name)
                if self.agent.evolution_due():
                    self._evolve()
                m = self.agent.process(frame.values, frame.t)
            except Exception:
                self.errors += 1
                self._on_result(Result(self.name, seq, None, time.perf_counter() - t0))
                continue
            self.processed += 1
            self._on_result(Result(self.name, seq, m, time.perf_counter() - t0))

    def _evolve(self) -> None:
        """The evolution round due at this step, before its frame (so rounds fall
        on the same steps however the frames arrive); reported to the loop."""
        assert self.agent is not None
        try:
            report: dict[str, Any] = self.agent.evolve()
        except Exception as e:  # reported; the frame is still processed
            report = {"step": self.agent.step, "error": repr(e)}
        if self._on_evolution is not None:
            self._on_evolution(report)
