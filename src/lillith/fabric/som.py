"""Online self-organizing map (Kohonen SOM) with numba kernels.

The map is a rectangular 2D ``(a, b)`` or 3D ``(a, b, c)`` grid of ``n_units``
prototype vectors (``weights``, float32, shape ``(n_units, dim)``). Units are
numbered in C order of ``map_shape``; unit ``u`` sits at integer grid position
``np.unravel_index(u, map_shape)``.

One online step for a sample ``x`` at step ``t`` (``t`` counts samples learned
so far; it is the *only* clock, wall time is never used):

1. best-matching unit ``b = argmin_u ||x - w_u||^2`` (squared Euclidean,
   ties go to the lowest index);
2. schedule, exponential decay towards floors with time constant
   ``decay_steps``::

       e(t)     = exp(-t / decay_steps)
       sigma(t) = sigma_min + (sigma0 - sigma_min) * e(t)
       lr(t)    = lr_min    + (lr0    - lr_min)    * e(t)

3. Gaussian neighbourhood on the grid,
   ``h_u = exp(-||g_u - g_b||^2 / (2 sigma(t)^2))``, truncated: units with
   ``h_u < 1e-4`` are skipped;
4. ``w_u += lr(t) * h_u * (x - w_u)`` for the remaining units.

Because ``sigma_min > 0`` and ``lr_min > 0`` the map never freezes: after a
million steps a new region of input space is still learned. ``lr0`` is
bounded by 1 and defaults to 0.5, so the first sample cannot copy itself onto
every unit (``lr = 1`` with a wide neighbourhood collapses the whole map onto
its first sample).

Implementation notes
--------------------
The kernels are plain functions over arrays compiled with
``@njit(cache=True, nogil=True, fastmath=False)``; they never allocate, raise
or log inside the per-sample loop (scratch is preallocated once per map), so
a whole batch of online updates is one call that releases the GIL.

* Layout. The public weights are ``(n_units, dim)`` (``get_state``, the
  ``weights`` property), but the kernels keep them *feature-major*,
  ``(dim, n_units)`` float32 C-contiguous. Without ``fastmath`` LLVM may not
  reorder a floating-point sum, and numba disables the SLP vectoriser, so a
  per-unit reduction over ``dim`` runs scalar. With units innermost, both the
  distance pass and the update are element-wise loops over units that the
  loop vectoriser handles (about 6x faster here), and each distance is still
  summed over ``k`` in plain sequential order, so results are bit-identical to
  a straightforward loop (and to ``NUMBA_DISABLE_JIT=1``).
* Neighbourhood. ``h`` is evaluated as ``g(di) g(dj) g(dk)`` from one table
  ``g(o) = exp(-o^2 / (2 sigma^2))`` per step, only inside the bounding box
  of the truncation radius; the update touches the one contiguous run of
  units that spans that box (units in the run but outside the box, or with
  ``h < 1e-4``, get coefficient 0 and stay bit-for-bit unchanged). Late in
  training (small sigma) that is a small fraction of the map.
* Validation. Every row is checked for finiteness and magnitude by the
  training kernel itself before anything is learned (one pass, no extra
  dispatch); the wrapper turns a bad row into :class:`FabricError`.

The object is not thread-safe: one owner (the agent's worker) mutates it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, StateError
from lillith.fabric._som_kernels import (
    MAX_ABS_INPUT,
    NEIGHBOURHOOD_CUTOFF,
    _argmin,
    _bmu_batch,
    _dist_all,
    _first_bad_row,
    _top2_batch,
    _train,
    _u_matrix,
)
from lillith.records import read_arrays

__all__ = ["MAX_ABS_INPUT", "NEIGHBOURHOOD_CUTOFF", "SelfOrganizingMap", "SomState"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
A = npt.NDArray[Any]

# --------------------------------------------------------------------------
# typed wrapper
# --------------------------------------------------------------------------

_SCHEDULE_KEYS = ("sigma0", "sigma_min", "lr0", "lr_min", "decay_steps")


class SomState(NamedTuple):
    """A map's whole state (the snapshot keys under ``som/``).

    Attributes
    ----------
    weights : float32 (n_units, dim)
        Prototype vectors.
    coords : float32 (n_units, ndim_map)
        Grid position of each unit.
    map_shape : int64 (ndim_map,)
    step, ring_pos, ring_len, seed : int64 (1,)
        Samples learned; the recent window's next slot and fill; the seed.
    hits : int64 (n_units,)
        Times each unit was the best match.
    ring_bmu : int64 (qe_window,); ring_qe : float64 (qe_window,)
        The recent window's best matches (-1: empty) and their distances.
    sigma0, sigma_min, lr0, lr_min, decay_steps : float64 (1,)
        The schedule.
    """

    weights: A
    coords: A
    map_shape: A
    step: A
    ring_pos: A
    ring_len: A
    seed: A
    hits: A
    ring_bmu: A
    ring_qe: A
    sigma0: A
    sigma_min: A
    lr0: A
    lr_min: A
    decay_steps: A


class SelfOrganizingMap:
    """Online self-organizing map on a 2D or 3D grid.

    Parameters
    ----------
    map_shape : tuple of int
        Grid shape, ``(a, b)`` or ``(a, b, c)``; every side >= 1 and at least
        two units in total. Default ``(17, 17)``.
    dim : int
        Input dimension (length of each sample), >= 1. Required (it is
        positional after ``map_shape``, hence the ``None`` default).
    sigma0 : float, optional
        Initial neighbourhood radius in grid units. Default
        ``max(map_shape) / 2``.
    sigma_min : float
        Floor of the neighbourhood radius (grid units), ``0 < sigma_min <=
        sigma0``. Default 0.5.
    lr0 : float
        Initial learning rate, ``lr_min <= lr0 <= 1``. Default 0.5.
    lr_min : float
        Floor of the learning rate, ``> 0`` so learning never freezes.
        Default 0.01.
    decay_steps : float
        Time constant of the exponential annealing, in steps (samples
        learned). Default 10 000.
    init : {"random"}
        Weight initialisation: seeded uniform in ``[-init_scale, init_scale)``.
        Use :meth:`init_from_data` for a data-scaled initialisation.
    init_scale : float
        Half-width of the random initialisation. Default 0.1.
    seed : int
        Seed of the initialisation (training itself is deterministic).
    qe_window : int
        Length (samples) of the recent window used for utilisation and
        recent quantisation error, >= 2. Default 500.

    Raises
    ------
    FabricError
        If any parameter is out of range.

    Notes
    -----
    Methods that learn (:meth:`update`, :meth:`update_batch`) mutate the map;
    everything else is read-only. Inputs are converted to contiguous float32
    and must be finite with ``|x| <= MAX_ABS_INPUT``.
    """

    def __init__(
        self,
        map_shape: tuple[int, ...] = (17, 17),
        dim: int | None = None,
        *,
        sigma0: float | None = None,
        sigma_min: float = 0.5,
        lr0: float = 0.5,
        lr_min: float = 0.01,
        decay_steps: float = 10_000,
        init: Literal["random"] = "random",
        init_scale: float = 0.1,
        seed: int = 0,
        qe_window: int = 500,
    ) -> None:
        shape = _check_map_shape(map_shape)
        if dim is None:
            raise FabricError("dim (the input dimension) is required")
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise FabricError("dim must be a positive integer", dim=dim)
        if isinstance(qe_window, bool) or not isinstance(qe_window, int | np.integer):
            raise FabricError("qe_window must be an integer", qe_window=qe_window)
        if qe_window < 2:
            raise FabricError("qe_window must be >= 2", qe_window=qe_window)
        if init != "random":
            raise FabricError("unknown init", init=init, allowed=("random",))
        if not (_is_real(init_scale) and math.isfinite(init_scale) and init_scale > 0):
            raise FabricError("init_scale must be finite and > 0", init_scale=init_scale)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise FabricError("seed must be a non-negative integer", seed=seed)
        s0 = max(shape) / 2.0 if sigma0 is None else sigma0
        self._schedule = _check_schedule(s0, sigma_min, lr0, lr_min, decay_steps, FabricError)

        self.map_shape: tuple[int, ...] = shape
        self.dim: int = int(dim)
        self.n_units: int = int(np.prod(shape))
        self.qe_window: int = int(qe_window)
        self.seed: int = int(seed)
        self._shape3 = np.ones(3, dtype=np.int64)
        self._shape3[: len(shape)] = shape
        grid = np.indices(shape).reshape(len(shape), -1).T
        self._grid = np.ascontiguousarray(grid, dtype=np.int64)
        self._coords = np.ascontiguousarray(grid, dtype=np.float32)

        rng = np.random.default_rng(self.seed)
        w = rng.uniform(-init_scale, init_scale, size=(self.n_units, self.dim))
        # feature-major weights (dim, n_units): see the module notes
        self._wt: F32 = np.ascontiguousarray(w.T, dtype=np.float32)
        self._params = np.array(
            [*self._schedule, NEIGHBOURHOOD_CUTOFF, MAX_ABS_INPUT], dtype=np.float64
        )
        self._counters = np.zeros(3, dtype=np.int64)  # step, ring_pos, ring_len
        self._hits = np.zeros((2, self.n_units), dtype=np.int64)  # lifetime, recent window
        self._ring_bmu = np.full(self.qe_window, -1, dtype=np.int64)
        self._ring_qe = np.zeros(self.qe_window, dtype=np.float64)
        # scratch, preallocated once: Gaussian tables, distances + coefficients
        s12 = int(self._shape3[1] * self._shape3[2])
        self._gtab = np.zeros((5, max(int(self._shape3.max()), s12)), dtype=np.float64)
        self._scratch = np.zeros((2, self.n_units), dtype=np.float32)
        self._alive = np.zeros(self.n_units, dtype=np.int64)
        self._one_bmu = np.zeros(1, dtype=np.int64)

    # ------------------------------------------------------------------ input

    def _as_batch(self, X: npt.ArrayLike, name: str, *, allow_1d: bool, check: bool = True) -> F32:
        """Contiguous float32 ``(n, dim)``; values checked unless ``check=False``."""
        arr = _to_float32(X, name)
        if arr.ndim == 1 and allow_1d:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise FabricError(
                f"{name} must have shape (n, {self.dim})", shape=arr.shape, dim=self.dim
            )
        if check:
            _raise_if_bad(arr, int(_first_bad_row(arr, MAX_ABS_INPUT)), name)
        return arr

    def _as_sample(self, x: npt.ArrayLike, name: str = "x", *, check: bool = True) -> F32:
        """Contiguous float32 ``(dim,)``; values checked unless ``check=False``."""
        arr = _to_float32(x, name)
        if arr.shape != (self.dim,):
            raise FabricError(f"{name} must have shape ({self.dim},)", shape=arr.shape)
        if check:
            row = arr.reshape(1, -1)
            _raise_if_bad(row, int(_first_bad_row(row, MAX_ABS_INPUT)), name)
        return arr

    # --------------------------------------------------------------- learning

    def update(self, x: npt.ArrayLike) -> int:
        """Learn one sample online.

        Parameters
        ----------
        x : array_like, shape (dim,)
            The sample; converted to float32.

        Returns
        -------
        int
            Flat index (C order of ``map_shape``) of the best-matching unit,
            found before the update.

        Raises
        ------
        FabricError
            Wrong shape, non-numeric, non-finite or too-large values.
        """
        xs = self._as_sample(x, check=False)  # values are checked by the kernel
        self._run(xs.reshape(1, self.dim), self._one_bmu, "x")
        return int(self._one_bmu[0])

    learn_one = update

    def update_batch(self, X: npt.ArrayLike) -> I64:
        """Learn the rows of ``X`` one after another (online, in row order).

        Exactly equivalent to calling :meth:`update` on each row, but the
        whole batch is a single kernel call that releases the GIL.

        Parameters
        ----------
        X : array_like, shape (n, dim)
            Samples; converted to float32. ``n`` may be 0.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
            BMU flat index of each row, each found before that row's update.
        """
        Xs = self._as_batch(X, "X", allow_1d=False, check=False)
        out = np.empty(Xs.shape[0], dtype=np.int64)
        if Xs.shape[0]:
            self._run(Xs, out, "X")
        return out

    def _run(self, Xs: F32, out: I64, name: str) -> None:
        """Run the training kernel; it checks every row before learning any."""
        bad = _train(
            Xs,
            self._wt,
            self._shape3,
            self._params,
            self._counters,
            self._gtab,
            self._scratch,
            self._alive,
            self._hits,
            self._ring_bmu,
            self._ring_qe,
            out,
        )
        _raise_if_bad(Xs, int(bad), name)

    def init_from_data(self, X: npt.ArrayLike) -> None:
        """Re-initialise the weights scaled to data (seeded, no PCA).

        Each weight component is drawn uniformly from ``mean_k +/- std_k`` of
        feature ``k`` of ``X`` (``std_k`` floored at 1e-3). Only the weights
        change; step and statistics are kept.

        Parameters
        ----------
        X : array_like, shape (n, dim)
            Representative samples, ``n >= 1``.
        """
        Xs = self._as_batch(X, "X", allow_1d=True).astype(np.float64)
        mean = Xs.mean(axis=0)
        std = np.maximum(Xs.std(axis=0), 1e-3)
        rng = np.random.default_rng(self.seed)
        u = rng.uniform(-1.0, 1.0, size=(self.n_units, self.dim))
        self._wt[...] = (mean + u * std).astype(np.float32).T

    # -------------------------------------------------------------- inference

    def bmu(self, x: npt.ArrayLike) -> int:
        """Flat index of the best-matching unit of ``x`` (no learning).

        Parameters
        ----------
        x : array_like, shape (dim,)

        Returns
        -------
        int
            In ``[0, n_units)``; ties go to the lowest index.
        """
        xs = self._as_sample(x)
        dist = np.empty(self.n_units, dtype=np.float32)
        _dist_all(xs, self._wt, dist)
        b, _ = _argmin(dist)
        return int(b)

    def bmu_coords(self, x: npt.ArrayLike) -> tuple[int, ...]:
        """Grid coordinates (one int per map axis) of the BMU of ``x``."""
        idx = np.unravel_index(self.bmu(x), self.map_shape)
        return tuple(int(i) for i in idx)

    def bmus(self, X: npt.ArrayLike) -> I64:
        """BMU flat index of every row of ``X`` (shape ``(n, dim)``), int64 ``(n,)``."""
        Xs = self._as_batch(X, "X", allow_1d=True)
        out = np.empty(Xs.shape[0], dtype=np.int64)
        d2 = np.empty(Xs.shape[0], dtype=np.float64)
        _bmu_batch(Xs, self._wt, np.empty(self.n_units, dtype=np.float32), out, d2)
        return out

    def quantization_error(self, X: npt.ArrayLike) -> float:
        """Mean Euclidean distance from each sample to its BMU's weights.

        Parameters
        ----------
        X : array_like, shape (n, dim) or (dim,)
            ``n >= 1`` samples, in input units.

        Returns
        -------
        float
            Mean distance, in input units.
        """
        Xs = self._as_batch(X, "X", allow_1d=True)
        if Xs.shape[0] == 0:
            raise FabricError("quantization_error needs at least one sample")
        out = np.empty(Xs.shape[0], dtype=np.int64)
        d2 = np.empty(Xs.shape[0], dtype=np.float64)
        _bmu_batch(Xs, self._wt, np.empty(self.n_units, dtype=np.float32), out, d2)
        return float(np.sqrt(d2).mean())

    def topographic_error(self, X: npt.ArrayLike) -> float:
        """Fraction of samples whose first and second BMU are not grid neighbours.

        Neighbours are units at Chebyshev distance 1 on the grid (8 in 2D,
        26 in 3D).

        Parameters
        ----------
        X : array_like, shape (n, dim) or (dim,)
            ``n >= 1`` samples.

        Returns
        -------
        float
            In ``[0, 1]``.
        """
        Xs = self._as_batch(X, "X", allow_1d=True)
        if Xs.shape[0] == 0:
            raise FabricError("topographic_error needs at least one sample")
        i1 = np.empty(Xs.shape[0], dtype=np.int64)
        i2 = np.empty(Xs.shape[0], dtype=np.int64)
        _top2_batch(Xs, self._wt, np.empty(self.n_units, dtype=np.float32), i1, i2)
        cheb = np.abs(self._grid[i1] - self._grid[i2]).max(axis=1)
        return float((cheb > 1).mean())

    def get_activation_map(self, x: npt.ArrayLike) -> F32:
        """Similarity of every unit to ``x``, without changing any state.

        ``a_u = exp(-||x - w_u||^2 / mean_v ||x - w_v||^2)`` (all ones when
        every distance is zero).

        Parameters
        ----------
        x : array_like, shape (dim,)

        Returns
        -------
        numpy.ndarray of float32, shape map_shape
            Values in ``[0, 1]``; the BMU has the largest value.
        """
        xs = self._as_sample(x)
        dist = np.empty(self.n_units, dtype=np.float32)
        _dist_all(xs, self._wt, dist)
        d2 = dist.astype(np.float64)
        m = float(d2.mean())
        act = np.exp(-d2 / m) if m > 0.0 else np.ones(self.n_units, dtype=np.float64)
        return act.astype(np.float32).reshape(self.map_shape)

    def hit_map(self) -> I64:
        """Lifetime BMU counts per unit, int64 of shape ``map_shape`` (a copy)."""
        counts: I64 = self._hits[0].reshape(self.map_shape).copy()
        return counts

    def u_matrix(self) -> F64:
        """Mean Euclidean weight distance of each unit to its grid neighbours.

        Neighbours are Chebyshev distance 1 on the grid. Returns float64 of
        shape ``map_shape``, in input units.
        """
        out = np.empty(self.n_units, dtype=np.float64)
        _u_matrix(self._wt, self._shape3, out)
        return out.reshape(self.map_shape)

    # ----------------------------------------------------------------- status

    @property
    def step(self) -> int:
        """Number of samples learned so far (the annealing clock)."""
        return int(self._counters[0])

    @property
    def weights(self) -> F32:
        """Read-only view of the weights, float32 ``(n_units, dim)`` (Fortran order)."""
        v = self._wt.T
        v.flags.writeable = False
        return v

    @property
    def coords(self) -> F32:
        """Grid coordinates of the units, float32 ``(n_units, len(map_shape))`` (copy)."""
        return self._coords.copy()

    def schedule(self, step: int | None = None) -> tuple[float, float]:
        """``(sigma, lr)`` at ``step`` (default: the current step)."""
        t = self.step if step is None else int(step)
        sigma0, sigma_min, lr0, lr_min, decay_steps = self._schedule
        e = math.exp(-float(t) / decay_steps)
        return sigma_min + (sigma0 - sigma_min) * e, lr_min + (lr0 - lr_min) * e

    def _recent_qe(self) -> F64:
        """Recent BMU distances in chronological order (oldest first)."""
        _, pos, length = (int(v) for v in self._counters)
        if length < self.qe_window:
            return self._ring_qe[:length].copy()
        return np.roll(self._ring_qe, -pos)

    @property
    def last_quant_error(self) -> float:
        """BMU distance of the most recent update (0.0 before any)."""
        _, pos, length = (int(v) for v in self._counters)
        if length == 0:
            return 0.0
        return float(self._ring_qe[(pos - 1) % self.qe_window])

    def utilization_fraction(self) -> float:
        """Fraction of units that were BMU at least once in the recent window."""
        return float(np.count_nonzero(self._hits[1])) / self.n_units

    def get_training_status(self) -> dict[str, Any]:
        """Summary of training progress.

        Returns
        -------
        dict
            ``trained`` (bool): at least ``max(qe_window, decay_steps / 10)``
            steps learned and the recent quantisation error is stable (mean of
            the newer half of the window within 10 % of the older half);
            ``utilization_fraction`` (float in [0, 1]); ``recent_quant_error``
            (float, mean BMU distance over the window, measured during
            learning before each update; NaN before the first sample);
            ``step`` (int); ``sigma`` and ``lr`` (float, current schedule);
            ``n_units`` (int).
        """
        qe = self._recent_qe()
        recent = float(qe.mean()) if qe.size else float("nan")
        sigma, lr = self.schedule()
        trained = False
        if self.step >= max(self.qe_window, self._schedule[4] / 10.0) and qe.size >= 2:
            half = qe.size // 2
            old = float(qe[:half].mean())
            new = float(qe[half:].mean())
            trained = abs(new - old) <= 0.1 * max(old, 1e-12)
        return {
            "trained": bool(trained),
            "utilization_fraction": self.utilization_fraction(),
            "recent_quant_error": recent,
            "step": self.step,
            "sigma": sigma,
            "lr": lr,
            "n_units": self.n_units,
        }

    # ------------------------------------------------------------------ state

    def state(self) -> SomState:
        """The whole learner as a :class:`SomState` of copies."""
        sched = [np.array([v], dtype=np.float64) for v in self._schedule]
        return SomState(np.ascontiguousarray(self._wt.T), self._coords.copy(),
                        np.array(self.map_shape, dtype=np.int64),
                        self._counters[0:1].copy(), self._counters[1:2].copy(),
                        self._counters[2:3].copy(), np.array([self.seed], dtype=np.int64),
                        self._hits[0].copy(), self._ring_bmu.copy(), self._ring_qe.copy(),
                        *sched)

    def get_state(self) -> dict[str, np.ndarray[Any, Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``som/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore a state produced by :meth:`get_state`.

        The map shape, ``dim`` and ``qe_window`` must match this instance; the
        schedule hyper-parameters are taken from the state. After restoring,
        learning continues bit-identically to the map that was saved.

        Raises
        ------
        StateError
            Missing keys, wrong shapes or dtypes, or inconsistent values. The
            instance is left unchanged.
        """
        one = (np.int64, (1,))
        a = read_arrays(state, {
            "weights": (np.float32, (self.n_units, self.dim)),
            "coords": (np.float32, self._coords.shape), "map_shape": (np.int64, None),
            "step": one, "ring_pos": one, "ring_len": one, "seed": one,
            "hits": (np.int64, (self.n_units,)), "ring_bmu": (np.int64, (self.qe_window,)),
            "ring_qe": (np.float64, (self.qe_window,)),
            **{k: (np.float64, (1,)) for k in _SCHEDULE_KEYS}},
            what="SOM", optional=("coords", "seed"))
        map_shape = tuple(int(v) for v in a["map_shape"].ravel())
        if map_shape != self.map_shape:
            raise StateError("SOM map_shape mismatch", expected=self.map_shape, got=map_shape)
        if not np.all(np.isfinite(a["weights"])):
            raise StateError("SOM weights contain non-finite values")
        if "coords" in a and not np.array_equal(a["coords"], self._coords):
            raise StateError("SOM coords do not match map_shape")
        step, pos, length = (int(a[k][0]) for k in ("step", "ring_pos", "ring_len"))
        hits, ring_bmu, ring_qe = a["hits"], a["ring_bmu"], a["ring_qe"]
        s0, smin, l0, lmin, tau = (float(a[k][0]) for k in _SCHEDULE_KEYS)
        schedule = _check_schedule(s0, smin, l0, lmin, tau, StateError)
        if step < 0 or np.any(hits < 0):
            raise StateError("SOM step and hits must be non-negative", step=step)
        if not (0 <= length <= self.qe_window and 0 <= pos < self.qe_window):
            raise StateError("SOM ring position out of range", ring_pos=pos, ring_len=length)
        if length < self.qe_window and pos != length:
            raise StateError("SOM ring is inconsistent", ring_pos=pos, ring_len=length)
        valid = ring_bmu[:length]
        if np.any(valid < 0) or np.any(valid >= self.n_units):
            raise StateError("SOM ring holds unit indices out of range")
        if not np.all(np.isfinite(ring_qe[:length])) or np.any(ring_qe[:length] < 0):
            raise StateError("SOM ring distances must be finite and >= 0")
        if step < length:
            raise StateError("SOM ring holds more samples than steps", step=step, ring_len=length)

        self._wt[...] = a["weights"].T
        self._counters[:] = (step, pos, length)
        self._hits[0] = hits
        self._hits[1] = np.bincount(valid, minlength=self.n_units)
        self._ring_bmu[:] = ring_bmu
        self._ring_qe[:] = ring_qe
        self._schedule = schedule
        self._params[:5] = schedule
        if "seed" in a:
            self.seed = int(a["seed"][0])

    @classmethod
    def from_state(cls, state: Mapping[str, npt.ArrayLike]) -> SelfOrganizingMap:
        """Build a map from :meth:`get_state` output (shape, dim, window inferred)."""
        for key in ("map_shape", "weights", "ring_bmu"):
            if key not in state:
                raise StateError("SOM state is missing keys", missing=[key])
        map_shape = tuple(int(v) for v in np.asarray(state["map_shape"]).ravel())
        weights = np.asarray(state["weights"])
        ring = np.asarray(state["ring_bmu"])
        if weights.ndim != 2 or ring.ndim != 1:
            raise StateError("SOM state arrays have wrong rank")
        try:
            som = cls(map_shape, int(weights.shape[1]), qe_window=int(ring.shape[0]))
        except FabricError as exc:
            raise StateError("SOM state describes an invalid map", reason=exc.message) from exc
        som.set_state(state)
        return som


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _check_map_shape(map_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(map_shape)
    except TypeError:
        raise FabricError("map_shape must be a tuple of 2 or 3 ints", map_shape=map_shape) from None
    if len(shape) not in (2, 3) or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise FabricError("map_shape must be 2 or 3 positive ints", map_shape=map_shape)
    out = tuple(int(s) for s in shape)
    if int(np.prod(out)) < 2:
        raise FabricError("map needs at least two units", map_shape=out)
    return out


def _check_schedule(
    sigma0: float,
    sigma_min: float,
    lr0: float,
    lr_min: float,
    decay_steps: float,
    error: type[FabricError] | type[StateError],
) -> tuple[float, float, float, float, float]:
    raw = (sigma0, sigma_min, lr0, lr_min, decay_steps)
    if not all(_is_real(v) for v in raw):
        raise error(
            "schedule parameters must be real numbers",
            **dict(zip(_SCHEDULE_KEYS, raw, strict=True)),
        )
    vals = tuple(float(v) for v in raw)
    s0, smin, l0, lmin, tau = vals
    fields = dict(zip(_SCHEDULE_KEYS, vals, strict=True))
    if not all(math.isfinite(v) for v in vals):
        raise error("schedule parameters must be finite", **fields)
    if not 0.0 < smin <= s0:
        raise error("need 0 < sigma_min <= sigma0", **fields)
    if not 0.0 < lmin <= l0 <= 1.0:
        raise error("need 0 < lr_min <= lr0 <= 1", **fields)
    if not tau > 0.0:
        raise error("decay_steps must be > 0", **fields)
    return s0, smin, l0, lmin, tau


def _is_real(v: object) -> bool:
    """True for int / float (Python or numpy), False for bool and anything else."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _to_float32(x: npt.ArrayLike, name: str) -> F32:
    """Convert to a contiguous float32 array or raise FabricError."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        return x  # fast path for the per-sample API
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise FabricError(f"{name} is not array-like", reason=str(exc)) from None
    if arr.dtype.kind not in "biuf":
        raise FabricError(f"{name} must be real numeric", dtype=str(arr.dtype))
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            # values too large for float32 become inf and are rejected below
            arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _raise_if_bad(X2: F32, bad: int, name: str) -> None:
    """Raise FabricError describing row ``bad`` of ``X2`` (no-op when ``bad < 0``)."""
    if bad < 0:
        return
    row = X2[bad]
    n_bad = int(np.count_nonzero(~np.isfinite(row)))
    if n_bad:
        raise FabricError(f"{name} contains non-finite values", row=bad, count=n_bad)
    raise FabricError(
        f"{name} has values beyond the accepted magnitude",
        row=bad,
        max_abs=float(np.abs(row).max()),
        limit=MAX_ABS_INPUT,
    )
