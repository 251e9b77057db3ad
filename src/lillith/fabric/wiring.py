"""Wiring: builders of the fabric's CSR connectivity.

A wiring decides *who talks to whom* in a fabric of shape ``(X, Y, Z)``
(neurons numbered layer-major, see :mod:`lillith.fabric.topology`) and emits
an immutable :class:`~lillith.fabric.topology.Connectivity`. The vocabulary
follows the neural-circuit-policy ``Wiring`` of the ``ncps`` library
(``add_synapse``, ``add_sensory_synapse``, ``build``) but everything built in
is vectorised with numpy, so a ``(17, 17, 128)`` fabric wires in well under a
second.

Built-in wirings
----------------
:class:`Local3D`
    Every neuron hears all neurons within a Chebyshev radius (radius 1 is the
    26-neighbourhood).
:class:`MultiScale`
    Local3D plus fast / medium / slow populations with their own membrane
    time constants; slow neurons also integrate a few long-range inputs.
:class:`Hierarchical`
    z-slices grouped into layers: feed-forward, skip, feedback and lateral
    pathways.
:class:`Random`
    A fixed number of random presynaptic partners per neuron.
:class:`NCP`
    Sensory -> inter -> command (recurrent) -> motor groups along z.

Writing your own
----------------
Subclass :class:`Wiring` and override :meth:`Wiring._connect` (called once, on
the first :meth:`Wiring.build`), calling :meth:`Wiring.add_synapse` or the
vectorised :meth:`Wiring._add_synapses`; or call ``add_synapse`` on any wiring
from the outside. Randomness must come from ``self.rng`` (reset from ``seed``
before ``_connect`` runs), so construction is deterministic. Subclasses are
registered by class name for :meth:`Wiring.from_config`; constructor
parameters must be stored as attributes of the same name so that
:meth:`Wiring.to_config` can read them back.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from lillith.errors import WiringError
from lillith.fabric.topology import Connectivity, Shape3, n_neurons

__all__ = [
    "NCP",
    "Hierarchical",
    "Local3D",
    "MultiScale",
    "Random",
    "Wiring",
    "wiring_types",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
ShapeLike = Shape3 | Sequence[int] | int
RejectFn = Callable[[IntArray, IntArray], BoolArray]

WEIGHT_LOW = 0.5
"""Lower bound of the default (relative) synapse weight."""
WEIGHT_HIGH = 1.5
"""Upper bound of the default (relative) synapse weight."""

# entries per chunk of the dense random-key matrices used for exact sampling
_MATRIX_BUDGET = 1 << 21
# config keys that are not constructor parameters
_EXTRA_KEYS = ("synapses", "sensory_synapses", "tau_overrides", "population_overrides")
_INT32_MAX = int(np.iinfo(np.int32).max)

_REGISTRY: dict[str, type[Wiring]] = {}
_BUILTIN: set[str] = set()


# ---------------------------------------------------------------------------
# parameter validation
# ---------------------------------------------------------------------------
def _as_int(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (not a bool), else None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    return None


def _is_int(value: object) -> bool:
    return _as_int(value) is not None


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    v = _as_int(value)
    if v is None or v < minimum:
        raise WiringError(
            f"{name} must be an integer >= {minimum}", parameter=name, value=value
        )
    return v


def _check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    v = math.nan
    ok = False
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    ):
        v = float(value)
        ok = True
    below = low is not None and (v < low or (low_open and v == low))
    above = high is not None and v > high
    if not math.isfinite(v) or below or above:
        ok = False
    if not ok:
        raise WiringError(
            f"{name} must be a finite number"
            + (f" {'>' if low_open else '>='} {low}" if low is not None else "")
            + (f" and <= {high}" if high is not None else ""),
            parameter=name,
            value=value,
        )
    return v


def _check_triple(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    items = list(value) if isinstance(value, Iterable) else []
    if len(items) != 3:
        raise WiringError(f"{name} must hold three numbers", parameter=name, value=value)
    vals = tuple(
        _check_real(f"{name}[{i}]", v, low=0.0, low_open=positive) for i, v in enumerate(items)
    )
    if sum(vals) <= 0:
        raise WiringError(f"{name} must not sum to zero", parameter=name, value=value)
    return vals[0], vals[1], vals[2]


def _normalize_shape(shape: object) -> Shape3:
    if _is_int(shape):
        dims: list[object] = [1, 1, shape]
    else:
        dims = list(shape) if isinstance(shape, Iterable) else []
    ints = [_as_int(d) for d in dims]
    if len(ints) != 3 or not all(d is not None and d >= 1 for d in ints):
        raise WiringError(
            "shape must be three positive integers (X, Y, Z) or a neuron count", shape=shape
        )
    out = (int(ints[0] or 0), int(ints[1] or 0), int(ints[2] or 0))
    if n_neurons(out) > _INT32_MAX:
        raise WiringError("fabric too large for int32 neuron indices", shape=out)
    return out


def _jsonable(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if _is_int(value):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, name) for k, v in value.items()}
    raise WiringError(
        "wiring parameter is not JSON-serialisable", parameter=name, kind=type(value).__name__
    )


# ---------------------------------------------------------------------------
# vectorised geometry and sampling helpers
# ---------------------------------------------------------------------------
def _empty_int() -> IntArray:
    return np.empty(0, dtype=np.int64)


def _grid_coords(shape: Shape3, idx: IntArray | None = None) -> tuple[IntArray, IntArray, IntArray]:
    """Grid coordinates ``(x, y, z)`` of ``idx`` (default: every neuron)."""
    X, Y, _ = shape
    if idx is None:
        idx = np.arange(n_neurons(shape), dtype=np.int64)
    z, rem = np.divmod(idx, X * Y)
    x, y = np.divmod(rem, Y)
    return x, y, z


def _chebyshev(shape: Shape3, a: IntArray, b: IntArray) -> IntArray:
    """Chebyshev grid distance between neurons ``a`` and ``b`` (broadcasting)."""
    ax, ay, az = _grid_coords(shape, a)
    bx, by, bz = _grid_coords(shape, b)
    dist: IntArray = np.maximum(np.maximum(np.abs(ax - bx), np.abs(ay - by)), np.abs(az - bz))
    return dist


def _local_pairs(shape: Shape3, radius: int, *, planar: bool = False) -> tuple[IntArray, IntArray]:
    """All ``(src, dst)`` pairs within Chebyshev ``radius`` (no wrap, no self pairs).

    With ``planar`` only pairs in the same z-slice are produced.
    """
    X, Y, Z = shape
    XY = X * Y
    dst_all = np.arange(n_neurons(shape), dtype=np.int64)
    x, y, z = _grid_coords(shape)

    def axis_masks(coord: IntArray, size: int, r: int) -> dict[int, BoolArray]:
        r = min(r, size - 1)
        return {d: (coord + d >= 0) & (coord + d < size) for d in range(-r, r + 1)}

    mx = axis_masks(x, X, radius)
    my = axis_masks(y, Y, radius)
    mz = axis_masks(z, Z, 0 if planar else radius)
    srcs: list[IntArray] = []
    dsts: list[IntArray] = []
    for dz, okz in mz.items():
        for dx, okx in mx.items():
            okzx = okz & okx
            for dy, oky in my.items():
                if dx == 0 and dy == 0 and dz == 0:
                    continue
                d = dst_all[okzx & oky]
                dsts.append(d)
                srcs.append(d + (dz * XY + dx * Y + dy))
    if not srcs:
        return _empty_int(), _empty_int()
    return np.concatenate(srcs), np.concatenate(dsts)


def _row_chunks(rows: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _MATRIX_BUDGET // max(width, 1))
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


def _smallest_k(keys: FloatArray, k: int) -> tuple[IntArray, BoolArray]:
    """Columns of the ``k`` smallest keys of each row and whether they are finite."""
    rows, cols = keys.shape
    k = min(k, cols)
    if k <= 0:
        return np.empty((rows, 0), dtype=np.int64), np.empty((rows, 0), dtype=np.bool_)
    if k < cols:
        part = np.argpartition(keys, k - 1, axis=1)[:, :k].astype(np.int64)
    else:
        part = np.broadcast_to(np.arange(cols, dtype=np.int64), (rows, cols)).copy()
    ok = np.isfinite(np.take_along_axis(keys, part, axis=1))
    return part, ok


def _fill_distinct(
    rng: np.random.Generator,
    slots: IntArray,
    low: int,
    high: int,
    reject: RejectFn | None = None,
) -> None:
    """Fill the ``-1`` entries of ``slots`` in place with values from ``[low, high)``.

    Values within a row end up distinct and not rejected by ``reject(rows,
    values)``. Rejection sampling: callers guarantee that every row has at
    least twice as many admissible values as slots, so it converges fast.
    """
    active = np.nonzero((slots < 0).any(axis=1))[0]
    while active.size:
        sub = slots[active]
        empty = sub < 0
        sub[empty] = rng.integers(low, high, size=int(empty.sum()))
        if reject is not None:
            r, c = np.nonzero(empty)
            bad = reject(active[r], sub[r, c])
            sub[r[bad], c[bad]] = -1
        order = np.argsort(sub, axis=1, kind="stable")
        srt = np.take_along_axis(sub, order, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            rr, cc = np.nonzero(dup)
            sub[rr, order[rr, cc + 1]] = -1
        slots[active] = sub
        active = active[(sub < 0).any(axis=1)]


def _sample_rows(rng: np.random.Generator, rows: int, pool: int, k: int) -> IntArray:
    """``(rows, k)`` matrix of values in ``[0, pool)``, distinct within each row."""
    k = min(k, pool)
    if rows <= 0 or k <= 0:
        return np.empty((max(rows, 0), 0), dtype=np.int64)
    if k == pool:
        return np.broadcast_to(np.arange(pool, dtype=np.int64), (rows, pool)).copy()
    if 2 * k > pool:
        out = np.empty((rows, k), dtype=np.int64)
        for a, b in _row_chunks(rows, pool):
            out[a:b] = np.argpartition(rng.random((b - a, pool)), k - 1, axis=1)[:, :k]
        return out
    slots = np.full((rows, k), -1, dtype=np.int64)
    _fill_distinct(rng, slots, 0, pool)
    return slots


def _split_counts(total: int, fractions: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integer parts proportional to ``fractions``.

    Every part gets at least ``minimum`` (callers ensure it fits); the rest is
    shared by the largest-remainder method, so the parts sum to ``total``.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    fr = fr / fr.sum()
    rest = total - minimum * len(fr)
    raw = fr * rest
    base = np.floor(raw).astype(np.int64)
    left = int(rest - base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:left]] += 1
    return [int(v) + minimum for v in base]


def _near_choice(
    rng: np.random.Generator,
    shape: Shape3,
    src_range: tuple[int, int],
    dst_range: tuple[int, int],
    k: int,
    radius: int,
) -> tuple[IntArray, IntArray]:
    """``k`` distinct presynaptic neurons per target, preferring spatially near ones.

    Sources come from the contiguous block ``src_range`` (whole z-slices);
    for a target at plane position ``(x, y)`` the candidates within
    ``radius`` in x and y (any z of the block) are taken first, in random
    order; the remainder is filled with random neurons of the block.
    """
    X, Y, _ = shape
    XY = X * Y
    lo, hi = src_range
    m = hi - lo
    dst = np.arange(dst_range[0], dst_range[1], dtype=np.int64)
    rows = dst.size
    if k <= 0 or m <= 0 or rows == 0:
        return _empty_int(), _empty_int()
    if m <= k:
        return np.tile(np.arange(lo, hi, dtype=np.int64), rows), np.repeat(dst, m)
    px, py = np.divmod(dst % XY, Y)
    srcs: list[IntArray] = []
    if m <= 2 * k:
        # small source block: exact choice over the whole block, near ones first
        s_all = np.arange(lo, hi, dtype=np.int64)
        sx, sy = np.divmod(s_all % XY, Y)
        for a, b in _row_chunks(rows, m):
            far = (np.abs(sx[None, :] - px[a:b, None]) > radius) | (
                np.abs(sy[None, :] - py[a:b, None]) > radius
            )
            keys = rng.random((b - a, m)) + far
            part, _ = _smallest_k(keys, k)
            srcs.append((lo + part).ravel())
        return np.concatenate(srcs), np.repeat(dst, k)
    depth = m // XY
    rx, ry = min(radius, X - 1), min(radius, Y - 1)
    gx, gy = np.meshgrid(
        np.arange(-rx, rx + 1, dtype=np.int64), np.arange(-ry, ry + 1, dtype=np.int64),
        indexing="ij",
    )
    dx, dy = gx.ravel(), gy.ravel()
    zoff = np.arange(depth, dtype=np.int64) * XY
    width = dx.size * depth
    for a, b in _row_chunks(rows, width):
        cx = px[a:b, None] + dx[None, :]
        cy = py[a:b, None] + dy[None, :]
        valid = (cx >= 0) & (cx < X) & (cy >= 0) & (cy < Y)
        plane = cx * Y + cy
        cand = (lo + plane[:, :, None] + zoff[None, None, :]).reshape(b - a, width)
        keys = rng.random((b - a, width))
        keys[~np.repeat(valid, depth, axis=1)] = np.inf
        part, ok = _smallest_k(keys, k)
        slots = np.full((b - a, k), -1, dtype=np.int64)
        slots[:, : part.shape[1]] = np.where(ok, np.take_along_axis(cand, part, axis=1), -1)
        _fill_distinct(rng, slots, lo, hi)
        srcs.append(slots.ravel())
    return np.concatenate(srcs), np.repeat(dst, k)


# ---------------------------------------------------------------------------
# synapse storage
# ---------------------------------------------------------------------------
class _SynapseStore:
    """Append-only list of synapses ``(pre, dst, polarity, weight)``.

    ``pre`` is a presynaptic neuron or, for sensory synapses, an input channel.
    Scalar additions go to Python lists and are flushed into array chunks so
    the order of additions is preserved.
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[IntArray, IntArray, F32Array, FloatArray]] = []
        self._pre: list[int] = []
        self._dst: list[int] = []
        self._pol: list[float] = []
        self._w: list[float] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add_one(self, pre: int, dst: int, pol: float, w: float) -> None:
        self._pre.append(pre)
        self._dst.append(dst)
        self._pol.append(pol)
        self._w.append(w)
        self._size += 1

    def add_many(self, pre: IntArray, dst: IntArray, pol: F32Array, w: FloatArray) -> None:
        if pre.size == 0:
            return
        self._flush()
        self._chunks.append((pre, dst, pol, w))
        self._size += int(pre.size)

    def _flush(self) -> None:
        if self._pre:
            self._chunks.append((
                np.asarray(self._pre, dtype=np.int64),
                np.asarray(self._dst, dtype=np.int64),
                np.asarray(self._pol, dtype=np.float32),
                np.asarray(self._w, dtype=np.float64),
            ))
            self._pre, self._dst, self._pol, self._w = [], [], [], []

    def arrays(self) -> tuple[IntArray, IntArray, F32Array, FloatArray]:
        self._flush()
        if not self._chunks:
            return (_empty_int(), _empty_int(), np.empty(0, np.float32), np.empty(0, np.float64))
        if len(self._chunks) > 1:
            self._chunks = [
                (
                    np.concatenate([c[0] for c in self._chunks]),
                    np.concatenate([c[1] for c in self._chunks]),
                    np.concatenate([c[2] for c in self._chunks]),
                    np.concatenate([c[3] for c in self._chunks]),
                )
            ]
        return self._chunks[0]


def _merge_csr(
    first: tuple[IntArray, IntArray, F32Array, FloatArray],
    second: tuple[IntArray, IntArray, F32Array, FloatArray],
    n_rows: int,
    n_cols: int,
    *,
    drop_self: bool,
) -> tuple[IntArray, IntArray, F32Array, FloatArray, npt.NDArray[np.int64]]:
    """Concatenate, drop self pairs / duplicates (first wins) and sort by (dst, pre)."""
    pre = np.concatenate([first[0], second[0]])
    dst = np.concatenate([first[1], second[1]])
    pol = np.concatenate([first[2], second[2]])
    w = np.concatenate([first[3], second[3]])
    if drop_self:
        keep = pre != dst
        pre, dst, pol, w = pre[keep], dst[keep], pol[keep], w[keep]
    _, idx = np.unique(dst * max(n_cols, 1) + pre, return_index=True)
    pre, dst, pol, w = pre[idx], dst[idx], pol[idx], w[idx]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n_rows), out=indptr[1:])
    return pre, dst, pol, w, indptr


def _init_param_names(cls: type) -> list[str]:
    """Constructor parameter names of ``cls``, following ``**kwargs`` up the MRO."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        var_kw = False
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in names:
                names.append(p.name)
        if not var_kw:
            break
    return names


def wiring_types() -> dict[str, type[Wiring]]:
    """Registered wiring classes by type name (a copy).

    Returns
    -------
    dict
        ``{"Local3D": Local3D, ...}`` including user subclasses defined so far.
    """
    return dict(_REGISTRY)


def _register(cls: type[Wiring]) -> None:
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and name in _BUILTIN:
        raise WiringError(
            "a wiring subclass may not reuse the name of a built-in wiring", type=name
        )
    _REGISTRY[name] = cls


# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------
class Wiring:
    """Base wiring: a set of synapses over a 3D fabric, built into CSR.

    Parameters
    ----------
    shape : tuple of int or int
        Fabric shape ``(X, Y, Z)``. A single integer ``units`` means
        ``(1, 1, units)`` (one neuron per z-layer, ncps style).
    n_inputs : int, default 0
        Number of sensory channels. When it is positive and the wiring
        defines no sensory synapses, :meth:`build` projects every channel onto
        every neuron of the sensory face (z = 0) with random weights and signs.
    seed : int, default 0
        Seed of every random choice (``numpy.random.default_rng``).
    tau_m : float, default 20.0
        Membrane time constant of every neuron, ms (subclasses may override
        per neuron with :meth:`set_tau`).
    inhibitory_fraction : float, default 0.2
        Probability that a neuron is inhibitory. Decided once per neuron
        (:attr:`neuron_polarity`); built-in wirings give all outgoing
        synapses of a neuron its sign (Dale's law).

    Notes
    -----
    Synapses added from outside :meth:`_connect` (explicit additions) come
    before the ones ``_connect`` makes, so on a duplicate ``(src, dst)`` pair
    the explicit synapse wins. Self-loops are dropped by :meth:`build`.
    Explicit additions, :meth:`set_tau` and :meth:`set_population` calls made
    from outside ``_connect`` are part of :meth:`to_config`.

    Examples
    --------
    >>> w = Wiring((2, 2, 2))
    >>> w.add_synapse(0, 4)
    >>> w.add_synapse(4, 0, polarity=-1, weight=0.7)
    >>> w.build().nnz
    2
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    def __init__(
        self,
        shape: ShapeLike,
        *,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        self._shape = _normalize_shape(shape)
        self._n = n_neurons(self._shape)
        self.n_inputs = _check_int("n_inputs", n_inputs, 0)
        self.seed = _check_int("seed", seed, 0)
        self.tau_m = _check_real("tau_m", tau_m, low=0.0, low_open=True)
        self.inhibitory_fraction = _check_real(
            "inhibitory_fraction", inhibitory_fraction, low=0.0, high=1.0
        )
        sign_seq, conn_seq, extra_seq, sens_seq = np.random.SeedSequence(self.seed).spawn(4)
        self._conn_seq = conn_seq
        self._sens_seq = sens_seq
        inhibitory = np.random.default_rng(sign_seq).random(self._n) < self.inhibitory_fraction
        self._sign: F32Array = np.where(inhibitory, -1.0, 1.0).astype(np.float32)
        self._sign.flags.writeable = False
        #: Generator for ``_connect``; reset from ``seed`` before it runs.
        self.rng: np.random.Generator = np.random.default_rng(conn_seq)
        self._extra_rng = np.random.default_rng(extra_seq)
        self._syn = {"connect": _SynapseStore(), "extra": _SynapseStore()}
        self._sens = {"connect": _SynapseStore(), "extra": _SynapseStore()}
        self._base_tau: F32Array = np.full(self._n, self.tau_m, dtype=np.float32)
        self._base_pop: npt.NDArray[np.int8] = np.zeros(self._n, dtype=np.int8)
        self._tau_ops: list[tuple[IntArray, float]] = []
        self._pop_ops: list[tuple[IntArray, int]] = []
        self._in_connect = False
        self._connected = False
        self._cache: Connectivity | None = None

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> Shape3:
        """Fabric shape ``(X, Y, Z)``."""
        return self._shape

    @property
    def n_neurons(self) -> int:
        """Number of neurons ``X * Y * Z``."""
        return self._n

    @property
    def neuron_polarity(self) -> F32Array:
        """Dale sign of every neuron (+1 excitatory, -1 inhibitory), read-only float32."""
        return self._sign

    def __repr__(self) -> str:
        try:
            cfg = self.to_config()
        except WiringError:
            return f"{type(self).__name__}(shape={self._shape})"
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k not in ("type", *_EXTRA_KEYS))
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------ adding synapses
    @property
    def _mode(self) -> str:
        return "connect" if self._in_connect else "extra"

    def _draw_rng(self) -> np.random.Generator:
        return self.rng if self._in_connect else self._extra_rng

    def _touch(self) -> None:
        self._cache = None

    def _check_neuron(self, name: str, value: object) -> int:
        v = _as_int(value)
        if v is None or not 0 <= v < self._n:
            raise WiringError(
                "neuron index out of range", argument=name, value=value, n_neurons=self._n
            )
        return v

    @staticmethod
    def _check_polarity(value: object) -> float:
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        ):
            v = float(value)
            if v in (1.0, -1.0):
                return v
        raise WiringError("polarity must be +1 or -1", polarity=value)

    def _resolve_weight(self, weight: float | None) -> float:
        if weight is None:
            return float(self._draw_rng().uniform(WEIGHT_LOW, WEIGHT_HIGH))
        return _check_real("weight", weight, low=0.0)

    def add_synapse(
        self, src: int, dst: int, polarity: int = 1, weight: float | None = None
    ) -> None:
        """Add one recurrent synapse ``src -> dst``.

        Parameters
        ----------
        src, dst : int
            Presynaptic and postsynaptic neuron indices in ``[0, n_neurons)``.
        polarity : {1, -1}, default 1
            Excitatory (+1) or inhibitory (-1).
        weight : float, optional
            Relative weight magnitude (>= 0); default ``uniform(0.5, 1.5)``
            drawn from the wiring's generator. The fabric normalises rows.

        Raises
        ------
        WiringError
            On an index out of range, a polarity other than +-1 or a negative
            or non-finite weight.
        """
        s = self._check_neuron("src", src)
        d = self._check_neuron("dst", dst)
        p = self._check_polarity(polarity)
        w = self._resolve_weight(weight)
        self._syn[self._mode].add_one(s, d, p, w)
        self._touch()

    def add_sensory_synapse(
        self, channel: int, dst: int, polarity: int = 1, weight: float | None = None
    ) -> None:
        """Add one sensory synapse from input ``channel`` onto neuron ``dst``.

        Parameters
        ----------
        channel : int
            Input channel in ``[0, n_inputs)``.
        dst : int
            Postsynaptic neuron index.
        polarity : {1, -1}, default 1
            Sign of the synapse.
        weight : float, optional
            Relative weight magnitude (>= 0); default ``uniform(0.5, 1.5)``.

        Raises
        ------
        WiringError
            On a channel or neuron out of range, bad polarity or weight.
        """
        ch = _as_int(channel)
        if ch is None or not 0 <= ch < self.n_inputs:
            raise WiringError(
                "sensory channel out of range", channel=channel, n_inputs=self.n_inputs
            )
        d = self._check_neuron("dst", dst)
        p = self._check_polarity(polarity)
        w = self._resolve_weight(weight)
        self._sens[self._mode].add_one(ch, d, p, w)
        self._touch()

    def _vector_args(
        self,
        pre: npt.ArrayLike,
        dst: npt.ArrayLike,
        polarity: npt.ArrayLike | None,
        weight: npt.ArrayLike | None,
        pre_limit: int,
        pre_name: str,
    ) -> tuple[IntArray, IntArray, F32Array | None, FloatArray]:
        a = np.asarray(pre)
        b = np.asarray(dst)
        if a.shape != b.shape or a.ndim != 1:
            raise WiringError(
                "synapse arrays must be 1-D of equal length", shapes=(a.shape, b.shape)
            )
        if a.size and not (
            np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)
        ):
            raise WiringError(
                "synapse indices must be integers", dtypes=(str(a.dtype), str(b.dtype))
            )
        a = a.astype(np.int64)
        b = b.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= pre_limit):
            raise WiringError(f"{pre_name} out of range", limit=pre_limit)
        if b.size and (b.min() < 0 or b.max() >= self._n):
            raise WiringError("neuron index out of range", argument="dst", n_neurons=self._n)
        pol: F32Array | None = None
        if polarity is not None:
            pol = np.broadcast_to(np.asarray(polarity, dtype=np.float32), a.shape).copy()
            if pol.size and not np.all(np.abs(pol) == 1.0):
                raise WiringError("polarity must be +1 or -1")
        if weight is None:
            w = self._draw_rng().uniform(WEIGHT_LOW, WEIGHT_HIGH, size=a.size)
        else:
            w = np.broadcast_to(np.asarray(weight, dtype=np.float64), a.shape).copy()
            if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
                raise WiringError("weights must be finite and >= 0")
        return a, b, pol, w

    def _add_synapses(
        self,
        src_array: npt.ArrayLike,
        dst_array: npt.ArrayLike,
        polarity_array: npt.ArrayLike | None = None,
        weight_array: npt.ArrayLike | None = None,
    ) -> None:
        """Add many recurrent synapses at once (vectorised :meth:`add_synapse`).

        Parameters
        ----------
        src_array, dst_array : array_like of int, shape (m,)
            Presynaptic and postsynaptic neurons.
        polarity_array : array_like, optional
            +-1 per synapse (or a scalar); default: the Dale sign of each
            presynaptic neuron (:attr:`neuron_polarity`).
        weight_array : array_like, optional
            Weight magnitudes (or a scalar); default ``uniform(0.5, 1.5)``.

        Raises
        ------
        WiringError
            On indices out of range, bad polarity or bad weights.
        """
        src, dst, pol, w = self._vector_args(
            src_array, dst_array, polarity_array, weight_array, self._n, "presynaptic neuron"
        )
        if pol is None:
            pol = self._sign[src]
        self._syn[self._mode].add_many(src, dst, pol, w)
        self._touch()

    def _add_sensory_synapses(
        self,
        channel_array: npt.ArrayLike,
        dst_array: npt.ArrayLike,
        polarity_array: npt.ArrayLike | None = None,
        weight_array: npt.ArrayLike | None = None,
    ) -> None:
        """Add many sensory synapses at once (vectorised :meth:`add_sensory_synapse`).

        Parameters
        ----------
        channel_array, dst_array : array_like of int, shape (m,)
            Input channels and postsynaptic neurons.
        polarity_array : array_like, optional
            +-1 per synapse; default: random signs (input channels obey no
            Dale's law).
        weight_array : array_like, optional
            Weight magnitudes; default ``uniform(0.5, 1.5)``.
        """
        ch, dst, pol, w = self._vector_args(
            channel_array, dst_array, polarity_array, weight_array, self.n_inputs, "sensory channel"
        )
        if pol is None:
            pol = np.where(self._draw_rng().random(ch.size) < 0.5, -1.0, 1.0).astype(np.float32)
        self._sens[self._mode].add_many(ch, dst, pol, w)
        self._touch()

    def _neuron_array(self, neuron_indices: npt.ArrayLike) -> IntArray:
        idx = np.atleast_1d(np.asarray(neuron_indices))
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise WiringError("neuron indices must be integers", dtype=str(idx.dtype))
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise WiringError("neuron index out of range", n_neurons=self._n)
        return idx

    def set_tau(self, neuron_indices: npt.ArrayLike, tau: float) -> None:
        """Set the membrane time constant of some neurons.

        Parameters
        ----------
        neuron_indices : int or array_like of int
            Neurons to change.
        tau : float
            Time constant in ms (> 0).

        Raises
        ------
        WiringError
            On an index out of range or a non-positive ``tau``.
        """
        idx = self._neuron_array(neuron_indices)
        t = _check_real("tau", tau, low=0.0, low_open=True)
        if self._in_connect:
            self._base_tau[idx] = t
        else:
            self._tau_ops.append((idx, t))
        self._touch()

    def set_population(self, neuron_indices: npt.ArrayLike, label: int) -> None:
        """Set the population label of some neurons.

        Parameters
        ----------
        neuron_indices : int or array_like of int
            Neurons to label.
        label : int
            Population label in ``[0, 127]``.
        """
        idx = self._neuron_array(neuron_indices)
        lab = _check_int("label", label, 0)
        if lab > 127:
            raise WiringError("population label must fit int8", label=label)
        if self._in_connect:
            self._base_pop[idx] = lab
        else:
            self._pop_ops.append((idx, lab))
        self._touch()

    # ------------------------------------------------------------ building
    def _connect(self) -> None:
        """Create the wiring's own synapses (override in subclasses).

        Called once, by the first :meth:`build`, with :attr:`rng` freshly
        seeded. The base class adds nothing.
        """

    def _run_connect(self) -> None:
        self._syn["connect"] = _SynapseStore()
        self._sens["connect"] = _SynapseStore()
        self._base_tau = np.full(self._n, self.tau_m, dtype=np.float32)
        self._base_pop = np.zeros(self._n, dtype=np.int8)
        self.rng = np.random.default_rng(self._conn_seq)
        self._in_connect = True
        try:
            self._connect()
        finally:
            self._in_connect = False
        self._connected = True

    def _dense_face(self) -> tuple[IntArray, IntArray, F32Array, FloatArray]:
        face = self._shape[0] * self._shape[1]
        rng = np.random.default_rng(self._sens_seq)
        ch = np.tile(np.arange(self.n_inputs, dtype=np.int64), face)
        dst = np.repeat(np.arange(face, dtype=np.int64), self.n_inputs)
        w = rng.uniform(WEIGHT_LOW, WEIGHT_HIGH, size=ch.size)
        pol = np.where(rng.random(ch.size) < 0.5, -1.0, 1.0).astype(np.float32)
        return ch, dst, pol, w

    def _assemble(self) -> Connectivity:
        if not self._connected:
            self._run_connect()
        n = self._n
        src, dst, pol, w, indptr = _merge_csr(
            self._syn["extra"].arrays(), self._syn["connect"].arrays(), n, n, drop_self=True
        )
        X, Y, _ = self._shape
        feedback = (src // (X * Y) > dst // (X * Y)).astype(np.uint8)
        sens_first = self._sens["extra"].arrays()
        sens_second = self._sens["connect"].arrays()
        if self.n_inputs > 0 and sens_first[0].size + sens_second[0].size == 0:
            sens_second = self._dense_face()
        ch, _, spol, sw, s_indptr = _merge_csr(
            sens_first, sens_second, n, self.n_inputs, drop_self=False
        )
        tau = self._base_tau.copy()
        for idx, t in self._tau_ops:
            tau[idx] = t
        pop = self._base_pop.copy()
        for idx, lab in self._pop_ops:
            pop[idx] = lab
        gate, gate_pairs = self._gates(src, dst)
        conn = Connectivity(
            shape=self._shape,
            n_inputs=self.n_inputs,
            indptr=indptr,
            indices=src.astype(np.int32),
            weight=w.astype(np.float32),
            polarity=pol.astype(np.float32),
            feedback=feedback,
            s_indptr=s_indptr,
            s_indices=ch.astype(np.int32),
            s_weight=sw.astype(np.float32),
            s_polarity=spol.astype(np.float32),
            tau=tau,
            population=pop,
            gate=gate,
            gate_pairs=gate_pairs,
        )
        conn.validate()
        return conn

    def _gates(
        self, src: IntArray, dst: IntArray
    ) -> tuple[npt.NDArray[np.int32] | None, npt.NDArray[np.int32] | None]:
        """Gate of every built synapse and the gates' layer pairs (override in subclasses).

        Parameters
        ----------
        src, dst : ndarray, shape (nnz,), int64
            Pre- and postsynaptic neuron of each synapse, in CSR order.

        Returns
        -------
        gate : ndarray, shape (nnz,), int32, or None
            Gate index per synapse (-1 ungated).
        gate_pairs : ndarray, shape (n_gates, 2), int32, or None
            ``(source layer, target layer)`` of each gate.

        The base class gates nothing (``None, None``).
        """
        return None, None

    def build(self) -> Connectivity:
        """Build the CSR connectivity.

        Runs :meth:`_connect` on the first call only; later calls reflect
        synapses added since but otherwise return equal arrays.

        Returns
        -------
        Connectivity
            Validated CSR arrays (fresh copies the caller may modify): rows
            are postsynaptic neurons, sorted by presynaptic index, without
            self-loops or duplicate pairs; ``feedback`` marks synapses from a
            higher z-layer.
        """
        if self._cache is None:
            self._cache = self._assemble()
        conn = self._cache
        return replace(
            conn,
            **{
                f.name: getattr(conn, f.name).copy()
                for f in fields(conn)
                if isinstance(getattr(conn, f.name), np.ndarray)
            },
        )

    def synapse_count(self) -> int:
        """Number of recurrent synapses after building (duplicates and self-loops removed).

        Returns
        -------
        int
        """
        if self._cache is None:
            self._cache = self._assemble()
        return self._cache.nnz

    # ------------------------------------------------------------ config
    @staticmethod
    def _store_config(store: _SynapseStore, pre_key: str) -> dict[str, list[Any]]:
        pre, dst, pol, w = store.arrays()
        return {
            pre_key: pre.tolist(),
            "dst": dst.tolist(),
            "polarity": pol.astype(np.int64).tolist(),
            "weight": w.tolist(),
        }

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description from which :meth:`from_config` rebuilds it.

        Returns
        -------
        dict
            ``{"type": <class name>, <constructor parameters>...}``, plus the
            explicitly added synapses (``"synapses"``, ``"sensory_synapses"``)
            and ``set_tau`` / ``set_population`` calls made from outside
            :meth:`_connect` (``"tau_overrides"``, ``"population_overrides"``)
            when there are any (the synapse lists always for a plain
            :class:`Wiring`).

        Raises
        ------
        WiringError
            When a constructor parameter is not stored as an attribute of the
            same name or is not JSON-serialisable.
        """
        cls = type(self)
        cfg: dict[str, Any] = {"type": cls.__name__}
        for name in _init_param_names(cls):
            if name == "type" or name in _EXTRA_KEYS:
                raise WiringError("constructor parameter name is reserved", parameter=name)
            if not hasattr(self, name):
                raise WiringError(
                    "cannot serialise wiring: constructor parameter is not stored as an "
                    "attribute of the same name",
                    type=cls.__name__,
                    parameter=name,
                )
            cfg[name] = _jsonable(getattr(self, name), name)
        plain = cls is Wiring
        if plain or len(self._syn["extra"]):
            cfg["synapses"] = self._store_config(self._syn["extra"], "src")
        if plain or len(self._sens["extra"]):
            cfg["sensory_synapses"] = self._store_config(self._sens["extra"], "channel")
        if self._tau_ops:
            cfg["tau_overrides"] = [
                {"neurons": idx.tolist(), "tau": t} for idx, t in self._tau_ops
            ]
        if self._pop_ops:
            cfg["population_overrides"] = [
                {"neurons": idx.tolist(), "label": lab} for idx, lab in self._pop_ops
            ]
        return cfg

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Wiring:
        """Rebuild a wiring from :meth:`to_config` output.

        Parameters
        ----------
        cfg : mapping
            Must hold ``"type"`` naming a registered wiring class (a subclass
            of the class this is called on) plus its constructor parameters.

        Returns
        -------
        Wiring
            An instance whose :meth:`build` equals the original's.

        Raises
        ------
        WiringError
            On an unknown type or parameters the constructor rejects.
        """
        if not isinstance(cfg, Mapping) or not isinstance(cfg.get("type"), str):
            raise WiringError("wiring config must be a mapping with a 'type' string")
        params = dict(cfg)
        type_name = params.pop("type")
        klass = _REGISTRY.get(type_name)
        if klass is None or not issubclass(klass, cls):
            raise WiringError(
                "unknown wiring type",
                type=type_name, known=sorted(_REGISTRY), expected=cls.__name__,
            )
        extras = {k: params.pop(k) for k in _EXTRA_KEYS if k in params}
        try:
            obj = klass(**params)
        except TypeError as exc:
            raise WiringError(
                "wiring config does not match the constructor", type=type_name, error=str(exc)
            ) from exc
        obj._restore_extras(extras)
        return obj

    def _restore_extras(self, extras: Mapping[str, Any]) -> None:
        for key, store, pre_key in (
            ("synapses", self._syn["extra"], "src"),
            ("sensory_synapses", self._sens["extra"], "channel"),
        ):
            spec = extras.get(key)
            if not spec:
                continue
            try:
                pre = np.asarray(spec[pre_key], dtype=np.int64)
                dst = np.asarray(spec["dst"], dtype=np.int64)
                pol = np.asarray(spec["polarity"], dtype=np.float32)
                w = np.asarray(spec["weight"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise WiringError("malformed synapse list in config", key=key) from exc
            # a subclass may add the same synapses in its constructor: skip that prefix
            h_pre, h_dst, h_pol, h_w = store.arrays()
            k = len(store)
            if (
                k <= pre.size
                and np.array_equal(h_pre, pre[:k])
                and np.array_equal(h_dst, dst[:k])
                and np.array_equal(h_pol, pol[:k])
                and np.array_equal(h_w, w[:k])
            ):
                pre, dst, pol, w = pre[k:], dst[k:], pol[k:], w[k:]
            if key == "synapses":
                self._add_synapses(pre, dst, pol, w)
            else:
                self._add_sensory_synapses(pre, dst, pol, w)
        for key, setter, value_key in (
            ("tau_overrides", self.set_tau, "tau"),
            ("population_overrides", self.set_population, "label"),
        ):
            ops = extras.get(key) or []
            ops_have = self._tau_ops if key == "tau_overrides" else self._pop_ops
            have_cfg = [(i.tolist(), v) for i, v in ops_have]
            cfg_ops = [(list(op["neurons"]), op[value_key]) for op in ops]
            if cfg_ops[: len(have_cfg)] == have_cfg:
                cfg_ops = cfg_ops[len(have_cfg) :]
            for neurons, value in cfg_ops:
                setter(np.asarray(neurons, dtype=np.int64), value)


_register(Wiring)


# ---------------------------------------------------------------------------
# built-in wirings
# ---------------------------------------------------------------------------
class Local3D(Wiring):
    """Local 3D neighbourhood: each neuron hears every neuron within ``radius``.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    radius : int, default 1
        Chebyshev radius; 1 gives the 26-neighbourhood (7 inputs at a corner,
        no wrap-around).
    n_inputs, seed, tau_m, inhibitory_fraction
        See :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        radius: int = 1,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        super().__init__(
            shape, n_inputs=n_inputs, seed=seed, tau_m=tau_m,
            inhibitory_fraction=inhibitory_fraction,
        )
        self.radius = _check_int("radius", radius, 0)

    def _connect(self) -> None:
        src, dst = _local_pairs(self.shape, self.radius)
        self._add_synapses(src, dst)


class MultiScale(Local3D):
    """Fast, medium and slow populations over a local 3D neighbourhood.

    Neurons are assigned at random (exact counts from ``fractions``) to the
    fast (population 0), medium (1) and slow (2) populations, each with its
    own membrane time constant. Every neuron is wired like :class:`Local3D`;
    each slow neuron also receives ``long_range`` synapses from random
    neurons outside its neighbourhood (integration over space).

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    fractions : sequence of 3 float, default (0.5, 0.3, 0.2)
        Shares of fast / medium / slow neurons (normalised).
    taus : sequence of 3 float, default (5.0, 20.0, 80.0)
        Membrane time constants of the populations, ms.
    radius : int, default 1
        Local Chebyshev radius.
    long_range : int, default 4
        Extra long-range inputs per slow neuron (fewer only when the fabric
        has fewer neurons outside the neighbourhood).
    n_inputs, seed, tau_m, inhibitory_fraction
        See :class:`Wiring` (``tau_m`` is superseded by ``taus``).
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        fractions: Sequence[float] = (0.5, 0.3, 0.2),
        taus: Sequence[float] = (5.0, 20.0, 80.0),
        radius: int = 1,
        long_range: int = 4,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        super().__init__(
            shape, radius=radius, n_inputs=n_inputs, seed=seed, tau_m=tau_m,
            inhibitory_fraction=inhibitory_fraction,
        )
        self.fractions = _check_triple("fractions", fractions, positive=False)
        self.taus = _check_triple("taus", taus, positive=True)
        self.long_range = _check_int("long_range", long_range, 0)

    def _connect(self) -> None:
        n = self.n_neurons
        counts = _split_counts(n, self.fractions)
        perm = self.rng.permutation(n).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for p in range(3):
            members = perm[bounds[p] : bounds[p + 1]]
            self.set_population(members, p)
            self.set_tau(members, self.taus[p])
        super()._connect()
        slow = np.sort(perm[bounds[2] : bounds[3]])
        if self.long_range and slow.size:
            src, dst = self._long_range(slow)
            self._add_synapses(src, dst)

    def _long_range(self, rows: IntArray) -> tuple[IntArray, IntArray]:
        shape, r, k, n = self.shape, self.radius, self.long_range, self.n_neurons
        coords = _grid_coords(shape, rows)
        local = np.ones(rows.size, dtype=np.int64)
        for c, size in zip(coords, shape, strict=True):
            local *= np.minimum(c + r, size - 1) - np.maximum(c - r, 0) + 1
        if int((n - local).min()) >= 2 * k:
            slots = np.full((rows.size, k), -1, dtype=np.int64)

            def near(row_idx: IntArray, vals: IntArray) -> BoolArray:
                return _chebyshev(shape, rows[row_idx], vals) <= r

            _fill_distinct(self.rng, slots, 0, n, near)
            return slots.ravel(), np.repeat(rows, k)
        srcs: list[IntArray] = []
        dsts: list[IntArray] = []
        everyone = np.arange(n, dtype=np.int64)
        for a, b in _row_chunks(rows.size, n):
            keys = self.rng.random((b - a, n))
            keys[_chebyshev(shape, rows[a:b, None], everyone[None, :]) <= r] = np.inf
            part, ok = _smallest_k(keys, k)
            rr, cc = np.nonzero(ok)
            srcs.append(part[rr, cc])
            dsts.append(rows[a:b][rr])
        return np.concatenate(srcs), np.concatenate(dsts)


def _layer_bounds(Z: int, layers: object) -> tuple[list[int], int | list[int] | None]:
    """Layer z-boundaries ``[0, ..., Z]`` and the normalised ``layers`` argument."""
    if layers is None:
        return list(range(Z + 1)), None
    m = _as_int(layers)
    if m is not None:
        if not 1 <= m <= Z:
            raise WiringError("layers must lie in [1, Z]", layers=layers, Z=Z)
        return [(i * Z) // m for i in range(m + 1)], m
    vals = [_as_int(v) for v in layers] if isinstance(layers, Iterable) else [None]
    given = [v for v in vals if v is not None]
    if len(given) != len(vals):
        raise WiringError("layers must be None, an int or a list of z-boundaries", layers=layers)
    b = list(given)
    if b[:1] != [0]:
        b.insert(0, 0)
    if b[-1] != Z:
        b.append(Z)
    if any(hi <= lo for lo, hi in itertools.pairwise(b)) or b[-1] != Z:
        raise WiringError(
            "layer z-boundaries must increase strictly within [0, Z]", layers=layers, Z=Z
        )
    return b, given


class Hierarchical(Wiring):
    """Layers of z-slices with feed-forward, skip, feedback and lateral pathways.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    layers : None, int or list of int, optional
        Grouping of z-slices into layers: ``None`` makes every z-slice a
        layer, an int ``m`` splits ``Z`` into ``m`` near-equal layers, a list
        gives the z where each layer starts (``0`` and ``Z`` may be omitted),
        e.g. ``[0, 4, 8]`` with ``Z = 16`` gives ``[0, 4), [4, 8), [8, 16)``.
    fan_in : int, default 9
        Feed-forward inputs per neuron from the previous layer, chosen first
        among neurons within ``radius`` in x and y of the same position, then
        at random from the rest of that layer.
    skip : bool, default True
        Add skip connections from layer ``l - skip_distance``.
    skip_distance : int, default 2
        Layer distance spanned by skip connections (>= 2).
    skip_fan_in : int, default 3
        Skip inputs per neuron.
    feedback : bool, default True
        Add top-down feedback from layer ``l + 1`` (flagged ``feedback = 1``).
    feedback_fan_in : int, default 3
        Feedback inputs per neuron.
    lateral : bool, default True
        Add local in-plane connections (within ``radius`` in x and y, same z).
    radius : int, default 1
        Spatial radius of the preferred feed-forward / skip / feedback
        sources and of lateral connections.
    skip_gates : bool, default False
        Gate the skip pathway: every synapse from layer ``l - skip_distance``
        onto layer ``l`` (including explicitly added ones) carries the gate of
        the pair ``(l - skip_distance, l)``, a learned value in (0, 1) that
        multiplies its current (see ``docs/model.md``).
    n_inputs, seed, tau_m, inhibitory_fraction
        See :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        layers: int | Sequence[int] | None = None,
        fan_in: int = 9,
        skip: bool = True,
        skip_distance: int = 2,
        skip_fan_in: int = 3,
        feedback: bool = True,
        feedback_fan_in: int = 3,
        lateral: bool = True,
        radius: int = 1,
        skip_gates: bool = False,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        super().__init__(
            shape, n_inputs=n_inputs, seed=seed, tau_m=tau_m,
            inhibitory_fraction=inhibitory_fraction,
        )
        self.skip_gates = bool(skip_gates)
        self._bounds, self.layers = _layer_bounds(self.shape[2], layers)
        self.fan_in = _check_int("fan_in", fan_in, 0)
        self.skip = bool(skip)
        self.skip_distance = _check_int("skip_distance", skip_distance, 2)
        self.skip_fan_in = _check_int("skip_fan_in", skip_fan_in, 0)
        self.feedback = bool(feedback)
        self.feedback_fan_in = _check_int("feedback_fan_in", feedback_fan_in, 0)
        self.lateral = bool(lateral)
        self.radius = _check_int("radius", radius, 0)

    @property
    def layer_bounds(self) -> tuple[int, ...]:
        """z where each layer starts, followed by ``Z``."""
        return tuple(self._bounds)

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return len(self._bounds) - 1

    @property
    def layer_ids(self) -> npt.NDArray[np.int32]:
        """Layer of every neuron, shape ``(n,)``, int32."""
        X, Y, _ = self.shape
        z_layer = np.repeat(np.arange(self.n_layers, dtype=np.int32), np.diff(self._bounds))
        return np.repeat(z_layer, X * Y)

    def _project(self, src_layer: int, dst_layer: int, k: int) -> None:
        XY = self.shape[0] * self.shape[1]
        b = self._bounds
        src, dst = _near_choice(
            self.rng, self.shape,
            (b[src_layer] * XY, b[src_layer + 1] * XY),
            (b[dst_layer] * XY, b[dst_layer + 1] * XY),
            k, self.radius,
        )
        self._add_synapses(src, dst)

    def _gates(
        self, src: IntArray, dst: IntArray
    ) -> tuple[npt.NDArray[np.int32] | None, npt.NDArray[np.int32] | None]:
        """One gate per (source layer, target layer) pair of the skip pathway."""
        if not self.skip_gates:
            return None, None
        lid = self.layer_ids
        ls, ld = lid[src], lid[dst]
        is_skip = (ld - ls) == self.skip_distance
        targets = np.unique(ld[is_skip]).astype(np.int32)
        pairs = np.stack([targets - self.skip_distance, targets], axis=1).astype(np.int32)
        gate = np.full(src.shape[0], -1, dtype=np.int32)
        gate[is_skip] = np.searchsorted(targets, ld[is_skip]).astype(np.int32)
        return gate, pairs.reshape(-1, 2)

    def _connect(self) -> None:
        L = self.n_layers
        for lay in range(1, L):
            self._project(lay - 1, lay, self.fan_in)
            if self.skip and lay - self.skip_distance >= 0:
                self._project(lay - self.skip_distance, lay, self.skip_fan_in)
        if self.feedback:
            for lay in range(L - 1):
                self._project(lay + 1, lay, self.feedback_fan_in)
        if self.lateral:
            src, dst = _local_pairs(self.shape, self.radius, planar=True)
            self._add_synapses(src, dst)


class Random(Wiring):
    """Random sparse wiring: exactly ``fan_in`` distinct random inputs per neuron.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    fan_in : int, default 16
        Presynaptic partners per neuron (no self-loops); when
        ``fan_in >= n - 1`` every other neuron.
    n_inputs, seed, tau_m, inhibitory_fraction
        See :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        fan_in: int = 16,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        super().__init__(
            shape, n_inputs=n_inputs, seed=seed, tau_m=tau_m,
            inhibitory_fraction=inhibitory_fraction,
        )
        self.fan_in = _check_int("fan_in", fan_in, 0)

    def _connect(self) -> None:
        n = self.n_neurons
        offs = _sample_rows(self.rng, n, n - 1, self.fan_in)
        k = offs.shape[1]
        dst = np.arange(n, dtype=np.int64)[:, None]
        src = offs + (offs >= dst)
        self._add_synapses(src.ravel(), np.repeat(dst.ravel(), k))


class NCP(Wiring):
    """Neural circuit policy: sensory -> inter -> command (recurrent) -> motor.

    After the wirings of Lechner & Hasani (``ncps``). The neurons are split,
    in index order (i.e. along z), into four groups with population labels
    0 sensory, 1 inter, 2 command and 3 motor: the sensory group is the z = 0
    face by default, the motor group the last neurons. Input channels project
    onto the sensory group.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    sensory_fraction : float, optional
        Share of all neurons in the sensory group; default: the z = 0 face
        (or a quarter of the neurons when the face leaves too few).
    inter_fraction, command_fraction, motor_fraction : float
        Relative shares of the remaining neurons (defaults 0.4, 0.4, 0.2).
        With at least 4 neurons every group has at least one.
    sensory_fanout : int, default 8
        Inter neurons each sensory neuron projects to.
    inter_fanout : int, default 8
        Command neurons each inter neuron projects to.
    recurrent_command_synapses : int, optional
        Number of random command -> command synapses (distinct, no
        self-loops); default twice the number of command neurons.
    motor_fanin : int, default 8
        Command neurons each motor neuron receives from.
    input_fanout : int, optional
        Sensory neurons each input channel projects to; default all of them.
    n_inputs, seed, tau_m, inhibitory_fraction
        See :class:`Wiring`.

    Notes
    -----
    As in ``ncps``, target neurons no source chose (unreachable inter,
    command or sensory neurons, command neurons without a motor target)
    are connected to the mean fan of their stage, so the circuit has no
    dead ends. Fan-outs are clipped to the target group size.
    """

    GROUPS: ClassVar[tuple[str, ...]] = ("sensory", "inter", "command", "motor")

    def __init__(
        self,
        shape: ShapeLike,
        *,
        sensory_fraction: float | None = None,
        inter_fraction: float = 0.4,
        command_fraction: float = 0.4,
        motor_fraction: float = 0.2,
        sensory_fanout: int = 8,
        inter_fanout: int = 8,
        recurrent_command_synapses: int | None = None,
        motor_fanin: int = 8,
        input_fanout: int | None = None,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        super().__init__(
            shape, n_inputs=n_inputs, seed=seed, tau_m=tau_m,
            inhibitory_fraction=inhibitory_fraction,
        )
        self.sensory_fraction = (
            None if sensory_fraction is None
            else _check_real("sensory_fraction", sensory_fraction, low=0.0, high=1.0,
                             low_open=True)
        )
        self.inter_fraction, self.command_fraction, self.motor_fraction = _check_triple(
            "inter/command/motor fractions",
            (inter_fraction, command_fraction, motor_fraction), positive=True,
        )
        self.sensory_fanout = _check_int("sensory_fanout", sensory_fanout, 1)
        self.inter_fanout = _check_int("inter_fanout", inter_fanout, 1)
        self.recurrent_command_synapses = (
            None if recurrent_command_synapses is None
            else _check_int("recurrent_command_synapses", recurrent_command_synapses, 0)
        )
        self.motor_fanin = _check_int("motor_fanin", motor_fanin, 1)
        self.input_fanout = (
            None if input_fanout is None else _check_int("input_fanout", input_fanout, 1)
        )
        self._groups = self._group_ranges()

    def _group_ranges(self) -> dict[str, range]:
        n = self.n_neurons
        face = self.shape[0] * self.shape[1]
        if n < 4:
            sizes = {1: [1, 0, 0, 0], 2: [1, 0, 0, 1], 3: [1, 0, 1, 1]}[n]
        else:
            if self.sensory_fraction is None and n - face >= 3:
                n_s = face
            else:
                frac = 0.25 if self.sensory_fraction is None else self.sensory_fraction
                n_s = min(max(1, round(frac * n)), n - 3)
            sizes = [n_s, *_split_counts(
                n - n_s, (self.inter_fraction, self.command_fraction, self.motor_fraction), 1
            )]
        out: dict[str, range] = {}
        start = 0
        for name, size in zip(self.GROUPS, sizes, strict=True):
            out[name] = range(start, start + size)
            start += size
        return out

    @property
    def groups(self) -> dict[str, range]:
        """Neuron index range of each group: sensory, inter, command, motor."""
        return dict(self._groups)

    @property
    def sensory_neurons(self) -> range:
        """Indices of the sensory group (population 0)."""
        return self._groups["sensory"]

    @property
    def motor_neurons(self) -> range:
        """Indices of the motor group (population 3), the circuit's outputs."""
        return self._groups["motor"]

    def _fanout(self, src: range, dst: range, k: int) -> tuple[IntArray, IntArray]:
        """Each ``src`` neuron projects to ``k`` random ``dst``; unreachable ``dst`` get fed."""
        k = min(k, len(dst))
        offs = _sample_rows(self.rng, len(src), len(dst), k)
        s = np.repeat(np.arange(src.start, src.stop, dtype=np.int64), k)
        d = dst.start + offs.ravel()
        reached = np.bincount(offs.ravel(), minlength=len(dst)) > 0
        lost = np.nonzero(~reached)[0]
        if lost.size:
            mean_fanin = min(max(len(src) * k // len(dst), 1), len(src))
            extra = _sample_rows(self.rng, lost.size, len(src), mean_fanin)
            s = np.concatenate([s, src.start + extra.ravel()])
            d = np.concatenate([d, np.repeat(dst.start + lost, mean_fanin)])
        return s, d

    def _fanin(self, src: range, dst: range, k: int) -> tuple[IntArray, IntArray]:
        """Each ``dst`` neuron hears ``k`` random ``src``; ``src`` without target get one."""
        k = min(k, len(src))
        offs = _sample_rows(self.rng, len(dst), len(src), k)
        s = src.start + offs.ravel()
        d = np.repeat(np.arange(dst.start, dst.stop, dtype=np.int64), k)
        used = np.bincount(offs.ravel(), minlength=len(src)) > 0
        lost = np.nonzero(~used)[0]
        if lost.size:
            mean_fanout = min(max(len(dst) * k // len(src), 1), len(dst))
            extra = _sample_rows(self.rng, lost.size, len(dst), mean_fanout)
            s = np.concatenate([s, np.repeat(src.start + lost, mean_fanout)])
            d = np.concatenate([d, dst.start + extra.ravel()])
        return s, d

    def _connect(self) -> None:
        g = self._groups
        for p, name in enumerate(self.GROUPS):
            if len(g[name]):
                self.set_population(np.arange(g[name].start, g[name].stop), p)
        chain = [name for name in self.GROUPS if len(g[name])]
        fanout = {"sensory": self.sensory_fanout, "inter": self.inter_fanout,
                  "command": self.inter_fanout}
        for a, b in itertools.pairwise(chain):
            if b == "motor":
                src, dst = self._fanin(g[a], g[b], self.motor_fanin)
            else:
                src, dst = self._fanout(g[a], g[b], fanout[a])
            self._add_synapses(src, dst)
        cmd = g["command"]
        c = len(cmd)
        if c >= 2:
            want = 2 * c if self.recurrent_command_synapses is None else (
                self.recurrent_command_synapses)
            m = min(want, c * (c - 1))
            if m:
                pairs = self.rng.choice(c * (c - 1), size=m, replace=False, shuffle=False)
                s, j = np.divmod(pairs.astype(np.int64), c - 1)
                d = j + (j >= s)
                self._add_synapses(cmd.start + s, cmd.start + d)
        if self.n_inputs > 0:
            sens = g["sensory"]
            if self.input_fanout is None:
                ch = np.tile(np.arange(self.n_inputs, dtype=np.int64), len(sens))
                dst = np.repeat(np.arange(sens.start, sens.stop, dtype=np.int64), self.n_inputs)
            else:
                ch_range = range(self.n_inputs)
                s_off, d_abs = self._fanout(ch_range, sens, self.input_fanout)
                ch, dst = s_off, d_abs
            self._add_sensory_synapses(ch, dst)


_BUILTIN.update(_REGISTRY)
