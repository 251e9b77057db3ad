"""Crash test: SIGKILL ``lillith run`` at random moments, restart, and check that
every restart resumes from a complete, verified snapshot, that ``lillith inspect
--verify`` passes after every kill (a kill during retention's delete once left
a half snapshot behind), that nothing is lost beyond the frames since that
snapshot, and that the agent after all the kills is bit-identical to one that
ran straight through.

Run with ``make crash`` (CI runs it); it takes a few minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lillith.runtime.cli import main as lillith
from lillith.state import SnapshotStore

KILLS = int(os.environ.get("CRASH_KILLS", "50"))


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by the kill
                out.append(json.loads(line))
    return out


def _run(state: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LILLITH_LOG__FORMAT": "json",
           "LILLITH_STATE__CHECKPOINT_EVERY_SECONDS": "3600"}
    return subprocess.Popen([sys.executable, "-m", "lillith.runtime.cli", "run", "--state",
                             str(state), *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.crash
def test_sigkill_at_random_moments_resumes_from_verified_snapshots(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261123)
    state = tmp_path / "state"
    store = SnapshotStore(state)
    expected_resume: int | None = None
    kills = 0
    cycle = 0
    mid_write = 0
    while kills < KILLS:
        cycle += 1
        log = tmp_path / f"run{cycle}.log"
        proc = _run(state, log, "--checkpoint-every", "200")
        # let it start, then kill it at a random moment of its work (often mid-write)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not any(
                e["event"] == "agent_started" for e in _events(log)):
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        kills += 1
        # the whole store verifies after every kill, whenever it came (exit 2: no
        # snapshot yet, before the first one was written)
        code = lillith(["inspect", str(state), "--verify", "--json"])
        assert code == 0 or (code == 2 and store.latest_name() is None), (cycle, code)
        ev = _events(log)
        resumed = [e["step"] for e in ev if e["event"] == "state_resumed"]
        if expected_resume is None:
            assert not resumed
        else:
            # resumed from exactly the snapshot LATEST named, verified before the restart
            assert resumed == [expected_resume], (cycle, resumed, expected_resume)
        written = [e["step"] for e in ev if e["event"] == "snapshot_written"]
        latest = store.latest_name()
        if latest is None:
            assert not written
            expected_resume = None
            continue
        info = store.verify(latest)
        assert info.ok, (latest, info.problems)
        # nothing lost beyond the frames since the last snapshot the run reported
        if written:
            assert info.step >= max(written)
        expected_resume = info.step
        # a kill during a write leaves a temporary group: the next start removes it
        mid_write += any(p.name.startswith(".tmp-") for p in (state / "snapshots").iterdir())
    # finish cleanly a little further on, then compare with a straight run
    assert expected_resume is not None and expected_resume > 0
    target = expected_resume + 300
    log = tmp_path / "final.log"
    proc = _run(state, log, "--checkpoint-every", "200", "--until-step", str(target))
    assert proc.wait(600) == 0, log.read_text()[-2000:]
    assert not [p for p in (state / "snapshots").iterdir() if p.name.startswith(".tmp-")]
    straight_dir = tmp_path / "straight"
    log = tmp_path / "straight.log"
    proc = _run(straight_dir, log, "--checkpoint-every", "100000", "--until-step", str(target))
    assert proc.wait(900) == 0, log.read_text()[-2000:]
    a = store.load().state
    b = SnapshotStore(straight_dir).load().state
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    print(f"{kills} kills ({mid_write} during a snapshot write), final step {target}")
