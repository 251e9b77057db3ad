"""Conv4D forward: numba kernel vs torch-CPU formulation, same thread count.

Run ``python bench/bench_conv4d.py [--quick]``; prints JSON with, per size,
``numba_ms``, ``torch_ms`` (median forward time) and
``ratio_numba_vs_torch`` (``torch_ms / numba_ms``: > 1 means numba is
faster), plus ``backend_auto``, the backend ``Conv4D(backend="auto")`` uses.
Both formulations run with ``torch.set_num_threads(numba.get_num_threads())``.
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

from lillith.fabric.conv4d import AUTO_BACKEND, Conv4D, conv4d_forward

# name -> (batch, (X, Y, Z, T), in_channels, out_channels, kernel, stride, padding)
SIZES: dict[str, tuple[int, tuple[int, int, int, int], int, int, int, int, int]] = {
    "small_b1_6x6x6x4_c2_o4": (1, (6, 6, 6, 4), 2, 4, 3, 1, 0),
    "encoder_b1_13x13x16x8_c4_o8": (1, (13, 13, 16, 8), 4, 8, 3, 1, 0),
    "encoder_b8_13x13x16x8_c4_o8": (8, (13, 13, 16, 8), 4, 8, 3, 1, 0),
    "encoder_b8_pad1_stride2": (8, (13, 13, 16, 8), 4, 8, 3, 2, 1),
}


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def run(*, quick: bool = False) -> dict[str, Any]:
    """Time the forward pass of both backends on each size.

    Parameters
    ----------
    quick : bool
        Fewer repeats and only the first three sizes (for smoke runs).

    Returns
    -------
    dict
        ``{size_name: {"numba_ms", "torch_ms", "ratio_numba_vs_torch", ...},
        "backend_auto": str, "threads": int, "load_avg_1m": float}``.
    """
    threads = int(numba.get_num_threads())
    torch.set_num_threads(threads)
    repeats, warmup = (5, 2) if quick else (15, 3)
    sizes = list(SIZES.items())[:3] if quick else list(SIZES.items())
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for name, (batch, spatial, cin, cout, k, s, p) in sizes:
        layer = Conv4D(cin, cout, (k,) * 4, stride=s, padding=p, seed=0)
        x = rng.standard_normal((batch, *spatial, cin)).astype(np.float32)
        gain = layer.gain
        timings: dict[str, float] = {}
        outs: dict[str, np.ndarray[Any, Any]] = {}
        for backend in ("numba", "torch"):
            fwd = functools.partial(
                conv4d_forward, x, layer.weight, layer.bias, s, p, gain=gain, backend=backend
            )
            outs[backend] = fwd()
            timings[backend] = _median_ms(fwd, repeats, warmup)
        result[name] = {
            "shape_in": [batch, *spatial, cin],
            "shape_out": list(outs["numba"].shape),
            "numba_ms": round(timings["numba"], 3),
            "torch_ms": round(timings["torch"], 3),
            "ratio_numba_vs_torch": round(timings["torch"] / timings["numba"], 3),
            "max_abs_diff": float(np.abs(outs["numba"] - outs["torch"]).max()),
        }
    result["backend_auto"] = AUTO_BACKEND
    result["threads"] = threads
    result["load_avg_1m"] = os.getloadavg()[0]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))
