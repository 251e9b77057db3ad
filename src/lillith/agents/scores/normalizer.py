"""Per-channel online normalisation, robust to outliers and drift."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


class NormalizerState(NamedTuple):
    """The normaliser's statistics: ``mean``, ``scale`` float64 (C,), input
    units; ``count`` int64 (), frames learned."""

    mean: A
    scale: A
    count: A  # type: ignore[assignment]  # (the snapshot key; shadows tuple.count)


class RobustNormalizer:
    """Per-channel online normalisation robust to outliers and drift.

    Location ``m`` and scale ``s`` follow the stream with a Huber-clipped
    exponential moving average: a sample more than ``clip`` scales from the
    location moves the statistics as if it were ``clip`` scales away, so a
    spike barely shifts them while a sustained level shift is tracked within
    about ``1 / alpha`` steps. The rate starts at ``1 / (t + 1)`` (an exact
    running mean for the first samples) and decays to the floor ``alpha``.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    alpha : float
        Floor of the adaptation rate per step (1 / effective memory).
    clip : float
        Huber clip in scale units.
    min_scale : float
        Floor of the scale relative to ``1 + |m|``, so a constant channel
        does not divide by zero.
    z_max : float
        Normalised values are clipped to ``[-z_max, z_max]``.
    """

    def __init__(
        self,
        n_channels: int,
        *,
        alpha: float = 2e-3,
        clip: float = 3.0,
        min_scale: float = 1e-3,
        z_max: float = 10.0,
    ) -> None:
        self.n_channels = int(n_channels)
        self.alpha = float(alpha)
        self.clip = float(clip)
        self.min_scale = float(min_scale)
        self.z_max = float(z_max)
        self.mean = np.zeros(self.n_channels)
        self.scale = np.ones(self.n_channels)
        self.count = 0

    def _floor(self) -> F64:
        return self.min_scale * (1.0 + np.abs(self.mean))

    def score_one(self, x: F64) -> F64:
        """The frame ``x`` (shape (C,), input units) normalised with the current
        statistics, shape (C,), clipped to ``[-z_max, z_max]`` (zeros before the
        first frame has been learned: with no statistics yet, a frame lies at
        its own location, so an untrained forecast of it is persistence).
        Changes nothing."""
        if self.count == 0:
            return np.zeros(self.n_channels)
        return self._z(x - self.mean, np.maximum(self.scale, self._floor()))

    def _z(self, dev: F64, s: F64) -> F64:
        """``dev / s`` clipped to ``[-z_max, z_max]`` (a new array; np.clip's
        values, without its per-call overhead)."""
        z: F64 = dev / s
        np.maximum(z, -self.z_max, out=z)
        np.minimum(z, self.z_max, out=z)
        return z

    def effective_scale(self) -> F64:
        """Scale used by :meth:`transform` and :meth:`inverse` (floored), shape (C,)."""
        out: F64 = np.maximum(self.scale, self._floor())
        return out

    def inverse(self, z: F64) -> F64:
        """Map normalised values back to input units, shape (C,)."""
        out: F64 = self.mean + z * self.effective_scale()
        return out

    def learn_one(self, x: F64) -> None:
        """Update the statistics with one frame ``x`` (shape (C,))."""
        self.update_one(x)

    def update_one(self, x: F64) -> F64:
        """:meth:`score_one` then :meth:`learn_one` in one pass: returns ``x``
        normalised as ``score_one(x)`` returns it (shape (C,)), then updates
        the statistics with it."""
        if self.count == 0:
            self.mean = x.astype(np.float64).copy()
            self.scale = np.maximum(np.abs(x) * 0.1, self._floor())
            self.count = 1
            return np.zeros(self.n_channels)
        rate = max(1.0 / (self.count + 1), self.alpha)
        s = np.maximum(self.scale, self._floor())
        dev = x - self.mean
        z = self._z(dev, s)  # (score_one's values)
        lim = self.clip * s  # dev clipped to [-lim, lim] (np.clip's values, less overhead)
        np.maximum(dev, -lim, out=dev)
        np.minimum(dev, lim, out=dev)
        self.mean = self.mean + rate * dev
        # mean absolute deviation * 1.25 estimates the std of a normal
        self.scale = self.scale + rate * (1.25 * np.abs(dev) - self.scale)
        self.count += 1
        return z

    def state(self) -> NormalizerState:
        """The statistics as a :class:`NormalizerState` of copies."""
        return NormalizerState(self.mean.copy(), self.scale.copy(),
                               np.array(self.count, dtype=np.int64))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``norm/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another width).
        """
        c = self.n_channels
        a = read_arrays(state, {"mean": (np.float64, (c,)), "scale": (np.float64, (c,)),
                                "count": (np.int64, ())}, what="normaliser")
        self.mean, self.scale = a["mean"], a["scale"]
        self.count = int(a["count"])
