"""Conv4D forward: numba kernel vs torch-CPU formulation, same thread count.

Run ``python -m lillith.bench.bench_conv4d [--quick]``; prints JSON with,
per size, ``numba_ms`` and ``torch_ms`` (median forward time after warm-up,
timed in alternating rounds), ``ratio_numba_vs_torch`` (``torch_ms / numba_ms``:
> 1 means numba is faster) and ``backend_auto`` (what ``Conv4D(backend="auto")``
runs for that size), plus the backward times for reference. The top-level
``backend_auto`` names the backend auto picks at the main encoder size
(``encoder_b8``). Both formulations run with
``torch.set_num_threads(numba.get_num_threads())``.

Run it on a quiet machine: with two cores, one busy core makes every
two-thread parallel region wait for a scheduler tick (timings quantised to
~4 ms); ``load_avg_1m`` is recorded for that reason.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch

from lillith.fabric.conv4d import (
    AUTO_NUMBA_MAX_MACS,
    Backend,
    Conv4D,
    conv4d_backward,
    conv4d_forward,
    conv4d_macs,
    resolve_backend,
)

# name -> (batch, (X, Y, Z, T), in_channels, out_channels, kernel, stride, padding)
SIZES: dict[str, tuple[int, tuple[int, int, int, int], int, int, int, int, int]] = {
    "small_b1_6x6x6x4_c2_o4": (1, (6, 6, 6, 4), 2, 4, 3, 1, 0),
    "encoder_b1_13x13x16x8_c4_o8": (1, (13, 13, 16, 8), 4, 8, 3, 1, 0),
    "encoder_b8_13x13x16x8_c4_o8": (8, (13, 13, 16, 8), 4, 8, 3, 1, 0),
    "medium_b1_8x8x8x6_c4_o8": (1, (8, 8, 8, 6), 4, 8, 3, 1, 0),
    "encoder_b8_stride2_pad1": (8, (13, 13, 16, 8), 4, 8, 3, 2, 1),
}
MAIN_SIZE = "encoder_b8_13x13x16x8_c4_o8"
BACKENDS: tuple[Backend, ...] = ("numba", "torch")
QUICK_SIZES = 3


def _interleaved_median_ms(
    fns: dict[str, Callable[[], Any]], rounds: int, per_round: int, warmup: int
) -> dict[str, float]:
    """Median wall time (ms) of each function, timed in alternating rounds.

    Alternating blocks of ``per_round`` calls spreads any drift in machine
    load evenly over the backends being compared.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: float(statistics.median(ts)) for name, ts in times.items()}


def run(*, quick: bool = False) -> dict[str, Any]:
    """Time both backends on each size.

    Parameters
    ----------
    quick : bool
        Fewer rounds, only the first three sizes, no backward timing.

    Returns
    -------
    dict
        ``{size_name: {"numba_ms", "torch_ms", "ratio_numba_vs_torch",
        "backend_auto", "macs", ...}, "backend_auto": str, "threads": int,
        "load_avg_1m": float, ...}``.
    """
    threads = int(numba.get_num_threads())
    torch.set_num_threads(threads)
    rounds, per_round, warmup = (3, 2, 2) if quick else (7, 3, 3)
    sizes = list(SIZES.items())[:QUICK_SIZES] if quick else list(SIZES.items())
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for name, (batch, spatial, cin, cout, k, s, p) in sizes:
        layer = Conv4D(cin, cout, (k,) * 4, stride=s, padding=p, seed=0)
        x = rng.standard_normal((batch, *spatial, cin)).astype(np.float32)
        gain = layer.gain
        fwd: dict[str, Callable[[], Any]] = {
            be: functools.partial(
                conv4d_forward, x, layer.weight, layer.bias, s, p, gain=gain, backend=be
            )
            for be in BACKENDS
        }
        outs = {be: fn() for be, fn in fwd.items()}
        fwd_ms = _interleaved_median_ms(fwd, rounds, per_round, warmup)
        y = outs["numba"]
        bwd_ms: dict[str, float] = {}
        if not quick:
            g = rng.standard_normal(y.shape).astype(np.float32)
            bwd: dict[str, Callable[[], Any]] = {
                be: functools.partial(conv4d_backward, x, layer.weight, g, s, p, backend=be)
                for be in BACKENDS
            }
            bwd_ms = _interleaved_median_ms(bwd, 3, 2, 1)
        macs = conv4d_macs(x.shape, layer.weight.shape, y.shape[1:5])
        auto = resolve_backend("auto", macs)
        entry: dict[str, Any] = {
            "shape_in": [batch, *spatial, cin],
            "shape_out": list(y.shape),
            "kernel": k,
            "stride": s,
            "padding": p,
            "macs": macs,
            "numba_ms": round(fwd_ms["numba"], 3),
            "torch_ms": round(fwd_ms["torch"], 3),
            "ratio_numba_vs_torch": round(fwd_ms["torch"] / fwd_ms["numba"], 3),
            "backend_auto": auto,
            "auto_is_faster": fwd_ms[auto] <= min(fwd_ms.values()),
            "max_abs_diff": float(np.abs(outs["numba"] - outs["torch"]).max()),
        }
        if bwd_ms:
            entry["numba_backward_ms"] = round(bwd_ms["numba"], 3)
            entry["torch_backward_ms"] = round(bwd_ms["torch"], 3)
        result[name] = entry
    result["backend_auto"] = result[MAIN_SIZE]["backend_auto"]
    result["auto_numba_max_macs"] = AUTO_NUMBA_MAX_MACS
    result["threads"] = threads
    result["timed_calls_per_backend"] = rounds * per_round
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Conv4D numba vs torch forward benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))
