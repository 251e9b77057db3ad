"""Benchmark: fabric step (plasticity on) against the same model in torch-CPU.

For each preset (small (5,5,16), medium (13,13,64), large (17,17,128)) with
the default wiring (Local3D, 26-neighbourhood) and 5 branches x 10 segments,
it times our numba step and the vectorised torch step of
``lillith.bench.torch_fabric`` in the same run (torch in a fresh subprocess), with
the same thread count, and checks that both compute the same step.
Run: ``lillith bench fabric --json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numba
import numpy as np
import torch

from lillith.bench.torch_fabric import TorchFabric
from lillith.fabric.neural_fabric import PRESETS, NeuralFabric3D

N_INPUTS = 8


def _time_loop(fn: Any, min_time: float, min_iter: int) -> float:
    """Iterations per second of ``fn(i)`` over at least ``min_time`` seconds."""
    it = 0
    t0 = time.perf_counter()
    while True:
        fn(it)
        it += 1
        el = time.perf_counter() - t0
        if it >= min_iter and el >= min_time:
            return it / el


def _warm(fabric: NeuralFabric3D, xs: np.ndarray, steps: int) -> None:
    for i in range(steps):
        fabric.step(xs[i % len(xs)])


def equivalence_error(shape: tuple[int, int, int], steps: int = 5) -> float:
    """Max abs difference of activations between numba and torch after ``steps``."""
    fab = NeuralFabric3D(shape, n_inputs=N_INPUTS, seed=0)
    xs = np.random.default_rng(0).standard_normal((64, N_INPUTS)).astype(np.float32)
    _warm(fab, xs, 50)
    tf = TorchFabric(fab)
    err = 0.0
    for i in range(steps):
        fab.step(xs[i])
        a = tf.step(torch.from_numpy(xs[i]))
        err = max(err, float(np.abs(a.numpy() - fab.act).max()))
    return err


def _time_torch(name: str, xs: np.ndarray, threads: int, min_time: float) -> float:
    """Torch steps/s of a preset, warmed like ours (called in a fresh process)."""
    torch.set_num_threads(threads)
    fab = NeuralFabric3D(PRESETS[name], n_inputs=N_INPUTS, seed=0)
    _warm(fab, xs, 200)
    tf = TorchFabric(fab)
    xt = [torch.from_numpy(x) for x in xs]
    for i in range(5):
        tf.step(xt[i])
    return _time_loop(lambda i: tf.step(xt[i & 255]), min_time, 5)


def _inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((256, N_INPUTS)).astype(np.float32)


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure every preset; returns the JSON object printed by the CLI.

    The torch baseline of each preset runs in a fresh subprocess of this
    script (same inputs, same thread count), so that numba's and torch's
    OpenMP thread pools never compete for the two cores.
    """
    threads = numba.get_num_threads()
    min_time = 0.5 if quick else 3.0
    out: dict[str, Any] = {"threads": threads, "threading_layer": None}
    xs = _inputs()
    for name, shape in PRESETS.items():
        proc = subprocess.run(
            [sys.executable, "-m", "lillith.bench.bench_fabric", "--torch", name, str(threads),
             str(min_time)],
            capture_output=True, text=True, check=True,
        )
        theirs = float(proc.stdout.strip().splitlines()[-1])
        fab = NeuralFabric3D(shape, n_inputs=N_INPUTS, seed=0)
        _warm(fab, xs, 200)  # compile + settle the dynamics
        ours = _time_loop(lambda i, f=fab: f.step(xs[i & 255]), min_time, 20)
        if fab.parallel:
            out["threading_layer"] = numba.threading_layer()  # type: ignore[attr-defined]
        out[name] = {
            "shape": list(shape),
            "neurons": fab.n,
            "synapses": fab.nnz,
            "steps_per_s": round(ours, 1),
            "neuron_updates_per_s": round(ours * fab.n, 0),
            "synapse_updates_per_s": round(ours * fab.nnz, 0),
            # feedback synapses are gated off in normal mode (docs/model.md)
            "active_synapses": int(np.sum(fab.feedback == 0)),
            "torch_steps_per_s": round(theirs, 1),
            "ratio_vs_torch": round(ours / theirs, 2),
            "parallel": fab.parallel,
            "mean_activation": round(float(fab.act.mean()), 4),
        }
    out["equivalence_max_abs_diff_small"] = equivalence_error(PRESETS["small"])
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--torch":
        print(_time_torch(sys.argv[2], _inputs(), int(sys.argv[3]), float(sys.argv[4])))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
