"""AgentWorker: queue policies, commands at step boundaries, ordered results."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lillith.agents.config import AgentConfig
from lillith.runtime.worker import AgentWorker, Result
from lillith.sensors.codec import Frame


def _frame(v: float) -> Frame:
    return Frame(np.array([v]), None)


def test_drop_oldest_and_backpressure_when_full() -> None:
    got: list[Result] = []
    w = AgentWorker("a", AgentConfig(), queue_size=4, policy="drop_oldest", width=1,
                    on_results=got.extend)
    lost = []
    for i in range(10):  # nothing consumes yet: the queue holds the newest 4
        ok, gone = w.offer(i, _frame(i))
        assert ok
        if gone is not None:
            lost.append(gone)
    assert lost == [0, 1, 2, 3, 4, 5]
    assert w.dropped == 6 and w.depth == 4
    w.start()
    w.stop()
    assert w.join(60)
    assert [r.seq for r in got] == [6, 7, 8, 9]

    b = AgentWorker("b", AgentConfig(), queue_size=3, policy="backpressure", width=1,
                    on_results=lambda rs: None)
    assert all(b.offer(i, _frame(i)) == (True, None) for i in range(3))
    assert b.offer(3, _frame(3)) == (False, None) and b.dropped == 0 and b.depth == 3
    b.start()
    b.stop()
    assert b.join(60) and b.depth == 0 and b.processed == 3


def test_a_command_at_the_front_of_a_full_queue_is_never_dropped() -> None:
    got: list[Result] = []
    w = AgentWorker("d", AgentConfig(), queue_size=2, policy="drop_oldest", width=1,
                    on_results=got.extend)
    fut = w.call(lambda ag: "ran")  # commands do not count against the bound
    assert w.offer(0, _frame(0.0)) == (True, None)
    assert w.offer(1, _frame(1.0)) == (True, None) and w.depth == 2
    # full: the front item is the command, so it goes back and the new frame is lost
    assert w.offer(2, _frame(2.0)) == (True, 2) and w.dropped == 1 and w.depth == 2
    assert w.offer(3, _frame(3.0)) == (True, 0) and w.dropped == 2 and w.depth == 2
    w.start()
    assert fut.result(60) == "ran"
    w.stop()
    assert w.join(60)
    assert [r.seq for r in got] == [1, 3] and w.depth == 0


def test_commands_run_between_frames_and_errors_reach_the_caller() -> None:
    done = threading.Event()
    seen: list[int] = []

    def on_results(rs: list[Result]) -> None:
        for r in rs:
            seen.append(r.seq)
            if r.seq == 50:
                done.set()

    w = AgentWorker("c", AgentConfig(), queue_size=100, policy="backpressure", width=None,
                    on_results=on_results)
    w.start()
    for i in range(1, 26):
        w.offer(i, _frame(float(i)))
    step = w.call(lambda ag: ag.step if ag is not None else -1)
    for i in range(26, 51):
        w.offer(i, _frame(float(i)))
    assert step.result(60) == 25  # exactly between frame 25 and 26
    bad = w.call(lambda ag: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bad.result(60)
    assert done.wait(60)
    assert seen == list(range(1, 51)) and w.width == 1
    w.stop()
    assert w.join(60)


def test_a_cancelled_command_never_kills_the_worker() -> None:
    """A caller that gives up on a command (its future cancelled: the daemon's
    checkpoint task torn down when the broker connection drops) leaves the
    worker running: a command cancelled while queued is skipped, one already
    running can no longer be cancelled, and the frames after both go through."""
    got: list[Result] = []
    w = AgentWorker("c", AgentConfig(), queue_size=16, policy="drop_oldest", width=1,
                    on_results=got.extend)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow(ag: object) -> str:
        started.set()
        assert release.wait(60)
        return "slow"

    w.start()
    running = w.call(slow)
    assert started.wait(60)
    queued = w.call(lambda ag: ran.append("queued"))
    assert queued.cancel()  # still waiting behind the slow one
    assert not running.cancel()  # running: its caller gets its result
    release.set()
    assert running.result(60) == "slow"
    assert w.offer(0, _frame(1.0)) == (True, None)
    assert w.call(lambda ag: "after").result(60) == "after"
    w.stop()
    assert w.join(60)
    assert ran == [] and [r.seq for r in got] == [0] and w.processed == 1


def test_frames_waiting_are_processed_in_runs_with_the_same_results() -> None:
    """Frames that queued up while the worker was busy go through one
    ``process_many`` run: results equal a frame-by-frame agent bit for bit, with
    evolution rounds at their exact steps and stream times passed through."""
    from lillith.agents.agent import Agent
    from lillith.agents.config import EvolutionConfig

    config = AgentConfig(evolution=EvolutionConfig(every=40, warmup=60))
    rng = np.random.default_rng(3)
    xs = np.sin(np.arange(300) * 0.2) + 0.1 * rng.standard_normal(300)
    got: list[Result] = []
    rounds: list[int] = []
    w = AgentWorker("r", config, queue_size=400, policy="backpressure", width=1,
                    on_results=got.extend, on_evolution=lambda r: rounds.append(r["step"]))
    for i, x in enumerate(xs):  # all queued before the thread starts: long runs
        w.offer(i, Frame(np.array([x]), None if i % 7 == 0 else float(i)))
    w.start()
    w.stop()
    assert w.join(120)
    want: list[object] = []

    def one_by_one() -> None:  # on a thread of its own too: torch's thread count is
        ref = Agent(1, config, name="r")  # per thread, and other tests change the main one's
        for i, x in enumerate(xs):  # (the agent runs its rounds at their steps)
            want.append(ref.process([x], None if i % 7 == 0 else float(i)))

    t = threading.Thread(target=one_by_one)
    t.start()
    t.join(120)
    assert [r.seq for r in got] == list(range(300)) and w.processed == 300
    assert [r.metrics for r in got] == want
    assert rounds == [60, 100, 140, 180, 220, 260]


def test_results_go_out_before_the_training_step_that_follows_them() -> None:
    """The last frame of a micro-batch is reported before its batch trains (the
    training step then runs while the loop publishes), and nothing is lost."""
    seen: dict[int, int] = {}  # step -> training steps done when it was reported
    done = threading.Event()
    w: AgentWorker

    def on_results(rs: list[Result]) -> None:  # on the worker thread
        for r in rs:
            assert r.metrics is not None and w.agent is not None
            seen[r.metrics.step] = w.agent.total_updates
        if len(seen) == 40:
            done.set()

    w = AgentWorker("t", AgentConfig(), queue_size=100, policy="backpressure", width=1,
                    on_results=on_results)
    for i in range(40):
        w.offer(i, _frame(float(np.sin(i / 3))))
    w.start()
    assert done.wait(60)
    w.stop()
    assert w.join(30)
    B = AgentConfig().predictor.batch_size
    assert sorted(seen) == list(range(40))
    assert seen[B - 1] == 0 and seen[B] == 1  # step 15 out before the first training step
    assert seen[2 * B - 1] == 1 and seen[2 * B] == 2
    assert w.agent is not None and w.agent.total_updates == 2
