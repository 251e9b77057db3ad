"""`BiologicalNonlinearity`: the fabric's output nonlinearity as a stand-alone layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, StateError
from lillith.fabric import _fabric_kernels as K
from lillith.fabric.params import FabricParams

F32 = npt.NDArray[np.float32]


class BiologicalNonlinearity:
    """Tanh-based activation with refractoriness and adaptation that recover.

    The same function the fabric applies to its somata (``docs/model.md``,
    "Output nonlinearity"), for use on any vector of voltages:
    ``a = tanh(max(0, (v - V_half)/V_scale)) * (1 - rho*ref) / (1 + g_a*adapt)``,
    after which ``ref`` and ``adapt`` are updated (adaptation relaxes toward
    the output, so it recovers when the input stops).

    Parameters
    ----------
    size : int
        Number of units.
    params : FabricParams, optional
        Constants (``v_half``, ``v_scale``, ``rho_ref``, ``tau_ref``,
        ``g_adapt``, ``tau_adapt``, ``dt``).
    """

    def __init__(self, size: int, *, params: FabricParams | None = None) -> None:
        if size < 1:
            raise FabricError("size must be >= 1", size=size)
        self.params = params or FabricParams()
        self.params.validate()
        self._p = self.params.pack()
        self.ref = np.zeros(size, dtype=np.float32)
        self.adapt = np.zeros(size, dtype=np.float32)
        self._out = np.zeros(size, dtype=np.float32)

    def __call__(self, v: npt.ArrayLike) -> F32:
        """Apply to voltages ``v`` (mV), shape (size,); returns activations in [0, 1].

        The returned array is an internal buffer overwritten by the next call.
        """
        va = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
        if va.shape != self.ref.shape or not np.all(np.isfinite(va)):
            raise FabricError("voltages must be finite with one value per unit",
                              size=int(va.size), expected=int(self.ref.size))
        K._bio_nonlinearity(va, self.ref, self.adapt, self._p, self._out)
        return self._out

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Refractory and adaptation state as plain arrays (copies)."""
        return {"ref": self.ref.copy(), "adapt": self.adapt.copy()}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        for k in ("ref", "adapt"):
            arr = np.asarray(state[k], dtype=np.float32)
            if arr.shape != self.ref.shape:
                raise StateError("nonlinearity state has wrong shape", array=k,
                                 shape=arr.shape, expected=self.ref.shape)
            setattr(self, k, arr.copy())
