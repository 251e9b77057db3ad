"""Benchmark: snapshot write / load time and size, and event-loop lag while writing.

For the small, medium and large agents (fabric presets, 1 channel, after 64
frames), in the same run:

- ``write_s``: median wall time of ``SnapshotStore.awrite`` (zarr v3 through
  its async API, CRC-32 per array, fsync of every file and directory, atomic
  rename, LATEST replaced) on an idle machine;
- ``np_save_s``: median time of ``numpy.save`` of the same arrays, one
  ``.npy`` file each, no fsync (the baseline the target names), and
  ``np_save_fsync_s`` the same followed by fsync of every file (the durable
  equivalent); ``ratio_vs_np_save`` = write_s / np_save_s;
- ``load_s``: median time of ``SnapshotStore.load`` (every checksum verified);
- ``loop_lag_p99_ms``: 99th percentile of how late a 1 ms ``asyncio.sleep``
  wakes while snapshots are written, with the agent processing frames on its
  worker thread at the same time (as in the daemon); ``loop_lag_idle_p99_ms``
  the same without writes; ``frames_during_writes``: frames the worker
  processed while the writes ran (it is not stopped by a checkpoint).

Targets: medium write <= 0.5 s and within 2x of numpy.save; loop lag p99
<= 10 ms. Run: ``lillith bench checkpoint --json``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import torch

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.fabric.neural_fabric import PRESETS
from lillith.state import SnapshotStore


def _np_save(state: dict[str, np.ndarray], d: str, *, fsync: bool) -> float:
    os.makedirs(d)
    t0 = time.perf_counter()
    paths = []
    for k, v in state.items():
        p = os.path.join(d, k.replace("/", ".") + ".npy")
        np.save(p, v)
        paths.append(p)
    if fsync:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0


async def _lag_during(agent: Agent, store: SnapshotStore, writes: int,
                      stream: np.ndarray) -> tuple[list[float], list[float], int]:
    """Lag samples (s) with and without writes while a worker processes frames."""
    stop = threading.Event()
    frames = {"n": 0}
    requests: queue.SimpleQueue[concurrent.futures.Future[tuple[dict[str, Any], int]]] = (
        queue.SimpleQueue())

    def worker() -> None:
        # the agent's actor: frames, and at a step boundary the copy asked for
        i = 0
        while not stop.is_set():
            agent.process_many(stream[i % 1000:i % 1000 + 8])
            frames["n"] += 8
            i += 8
            while not requests.empty():
                fut = requests.get()
                fut.set_result((agent.get_state(), agent.step))

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    samples: list[float] = []
    writing = {"on": False}
    idle: list[float] = []
    busy: list[float] = []

    async def probe() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = max(time.perf_counter() - t0 - 0.001, 0.0)
            (busy if writing["on"] else idle).append(lag)
            samples.append(lag)

    task = asyncio.create_task(probe())
    await asyncio.sleep(1.0)  # idle baseline: the worker alone
    during = 0
    for _ in range(writes):
        fut: concurrent.futures.Future[tuple[dict[str, Any], int]] = concurrent.futures.Future()
        requests.put(fut)  # the worker's copy at a step boundary, as in the daemon
        state, step = await asyncio.wrap_future(fut)
        writing["on"] = True
        n0 = frames["n"]
        await store.awrite(state, step=step)
        during += frames["n"] - n0
        writing["on"] = False
        await asyncio.sleep(0.05)
    task.cancel()
    stop.set()
    th.join()
    return idle, busy, during


def measure(preset: str, quick: bool) -> dict[str, Any]:
    cfg = AgentConfig.model_validate({"fabric": {"shape": PRESETS[preset]}, "seed": 0})
    agent = Agent(1, cfg)
    rng = np.random.default_rng(0)
    stream = (10 + np.sin(np.arange(2000) / 7) + 0.1 * rng.standard_normal(2000))[:, None]
    agent.process_many(stream[:64])
    state = agent.get_state()
    reps = 3 if quick else 7
    root = tempfile.mkdtemp(prefix="lillith-bench-ckpt-")
    try:
        store = SnapshotStore(os.path.join(root, "state"), keep_last=2)
        store.write(state, step=agent.step)  # warm-up (imports, first directory)
        write, load, npsave, npsync = [], [], [], []
        for r in range(reps):
            t0 = time.perf_counter()
            info = store.write(state, step=agent.step + r + 1)
            write.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.load()
            load.append(time.perf_counter() - t0)
            npsave.append(_np_save(state, os.path.join(root, f"np{r}"), fsync=False))
            npsync.append(_np_save(state, os.path.join(root, f"nps{r}"), fsync=True))
        lag_store = SnapshotStore(os.path.join(root, "lag"), keep_last=2)
        idle, busy, during = asyncio.run(_lag_during(agent, lag_store, 3 if quick else 8,
                                                     stream))
        w, n = statistics.median(write), statistics.median(npsave)
        return {
            "write_s": round(w, 4), "load_s": round(statistics.median(load), 4),
            "bytes": info.bytes, "state_bytes": int(sum(v.nbytes for v in state.values())),
            "arrays": len(state), "np_save_s": round(n, 4),
            "np_save_fsync_s": round(statistics.median(npsync), 4),
            "ratio_vs_np_save": round(w / n, 2),
            "ratio_vs_np_save_fsync": round(w / statistics.median(npsync), 2),
            "loop_lag_p99_ms": round(float(np.percentile(busy, 99)) * 1e3, 3),
            "loop_lag_idle_p99_ms": round(float(np.percentile(idle, 99)) * 1e3, 3),
            "frames_during_writes": during,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = False) -> dict[str, Any]:
    """Every preset; targets checked for the medium agent."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {p: measure(p, quick) for p in ("small", "medium", "large")}
    m = out["medium"]
    out["targets"] = {"medium_write_s_max": 0.5, "medium_ratio_vs_np_save_max": 2.0,
                      "loop_lag_p99_ms_max": 10.0,
                      "medium_write_ok": m["write_s"] <= 0.5,
                      "medium_ratio_ok": m["ratio_vs_np_save"] <= 2.0,
                      "loop_lag_ok": all(out[p]["loop_lag_p99_ms"] <= 10.0
                                         for p in ("small", "medium", "large"))}
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv)))
