"""The base wiring: synapses over a 3D fabric, built into CSR, and its config round-trip.

A wiring decides *who talks to whom* in a fabric of shape ``(X, Y, Z)``
(neurons numbered layer-major, see :mod:`lillith.fabric.topology`) and emits
an immutable :class:`~lillith.fabric.topology.Connectivity`. The vocabulary
follows the neural-circuit-policy ``Wiring`` of the ``ncps`` library
(``add_synapse``, ``add_sensory_synapse``, ``build``); the built-in families
(:mod:`lillith.fabric.wiring`) are vectorised with numpy.

The config round-trip is declared by the constructors: :meth:`Wiring.to_config`
reads back every constructor parameter (following ``**kwargs`` up the class
hierarchy) from the attribute of the same name, and :meth:`Wiring.from_config`
calls the registered class with them.

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
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from lillith.errors import WiringError
from lillith.fabric.topology import Connectivity, Shape3, n_neurons
from lillith.fabric.wiring.checks import (
    as_int,
    check_int,
    check_real,
    jsonable,
    normalize_shape,
)
from lillith.fabric.wiring.synapses import SynapseStore, merge_csr

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
ShapeLike = Shape3 | Sequence[int] | int

WEIGHT_LOW = 0.5
"""Lower bound of the default (relative) synapse weight."""
WEIGHT_HIGH = 1.5
"""Upper bound of the default (relative) synapse weight."""

# config keys that are not constructor parameters
_EXTRA_KEYS = ("synapses", "sensory_synapses", "tau_overrides", "population_overrides")

_REGISTRY: dict[str, type[Wiring]] = {}
_BUILTIN: set[str] = set()


class WiringOptions(TypedDict, total=False):
    """The constructor options every wiring takes (see :class:`Wiring`)."""

    n_inputs: int
    seed: int
    tau_m: float
    inhibitory_fraction: float


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


def _register(cls: type[Wiring], *, builtin: bool = False) -> None:
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and name in _BUILTIN:
        raise WiringError(
            "a wiring subclass may not reuse the name of a built-in wiring", type=name
        )
    _REGISTRY[name] = cls
    if builtin:
        _BUILTIN.add(name)


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

    def __init_subclass__(cls, *, builtin: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls, builtin=builtin)

    def __init__(
        self,
        shape: ShapeLike,
        *,
        n_inputs: int = 0,
        seed: int = 0,
        tau_m: float = 20.0,
        inhibitory_fraction: float = 0.2,
    ) -> None:
        self._shape = normalize_shape(shape)
        self._n = n_neurons(self._shape)
        self.n_inputs = check_int("n_inputs", n_inputs, 0)
        self.seed = check_int("seed", seed, 0)
        self.tau_m = check_real("tau_m", tau_m, low=0.0, low_open=True)
        self.inhibitory_fraction = check_real(
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
        self._syn = {"connect": SynapseStore(), "extra": SynapseStore()}
        self._sens = {"connect": SynapseStore(), "extra": SynapseStore()}
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
        v = as_int(value)
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
        return check_real("weight", weight, low=0.0)

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
        ch = as_int(channel)
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
        t = check_real("tau", tau, low=0.0, low_open=True)
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
        lab = check_int("label", label, 0)
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
        self._syn["connect"] = SynapseStore()
        self._sens["connect"] = SynapseStore()
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
        src, dst, pol, w, indptr = merge_csr(
            self._syn["extra"].arrays(), self._syn["connect"].arrays(), n, n, drop_self=True
        )
        X, Y, _ = self._shape
        feedback = (src // (X * Y) > dst // (X * Y)).astype(np.uint8)
        sens_first = self._sens["extra"].arrays()
        sens_second = self._sens["connect"].arrays()
        if self.n_inputs > 0 and sens_first[0].size + sens_second[0].size == 0:
            sens_second = self._dense_face()
        ch, _, spol, sw, s_indptr = merge_csr(
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
    def _store_config(store: SynapseStore, pre_key: str) -> dict[str, list[Any]]:
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
            cfg[name] = jsonable(getattr(self, name), name)
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


_register(Wiring, builtin=True)
