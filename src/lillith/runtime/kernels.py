"""The numba kernels' first compilation, said out loud at start.

The kernels are compiled on their first call and cached on disk
(``@njit(cache=True)``: ``__pycache__`` beside the modules, or
``$NUMBA_CACHE_DIR``). A first start compiles them all, about 20 s on the
2-core target, which used to pass in silence; :func:`warm_kernels` compiles
them up front with a log line before and after, when the cache does not
hold them yet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lillith.agents.config import AgentConfig

_TINY = {"fabric": {"shape": [2, 2, 3], "n_features": 4}, "som": {"map_shape": [3, 3]},
         "predictor": {"d_model": 4, "num_tiles": 2, "tiles_per_cluster": 2}}
"""A tiny agent: the same kernels (same signatures) as any other, compiled in a blink."""
WARM_FRAMES = 40
"""Frames the tiny agent processes: enough for a training micro-batch."""


def kernels_cached() -> bool:
    """Whether the fabric's compiled kernels are in numba's on-disk cache."""
    from lillith.fabric import _fabric_kernels

    src = Path(_fabric_kernels.__file__).resolve()
    env = os.environ.get("NUMBA_CACHE_DIR")  # when set, numba caches there only
    if env:
        return Path(env).is_dir() and any(Path(env).rglob(f"{src.stem}*.nbi"))
    return any((src.parent / "__pycache__").glob(f"{src.stem}*.nbi"))


def warm_kernels(log: Any) -> float | None:
    """Compile the kernels now when the cache does not hold them, logging
    ``compiling_kernels`` ("compiling kernels (first run)") before and
    ``kernels_compiled`` with the seconds after; returns the seconds, or
    None when they were cached (nothing done)."""
    if kernels_cached():
        return None
    from lillith.agents.agent import Agent

    log.info("compiling_kernels", detail="compiling kernels (first run): about 20 s, once; "
             "later starts load them from numba's cache")
    t0 = time.monotonic()
    agent = Agent(1, AgentConfig.model_validate(_TINY))
    agent.process_many(np.sin(np.arange(WARM_FRAMES, dtype=np.float64))[:, None])
    seconds = round(time.monotonic() - t0, 1)
    log.info("kernels_compiled", seconds=seconds)
    return seconds
