"""Sparse-lookup tile FFN with signature surgery (seed 004, made real).

The seed's ``SparseLookupFFNv2`` routed every token to one "tile" by an argmax
over signature scores, so the task loss never reached the signatures or the
calibration spline; its island statistics rounded the signatures before
measuring them (so ``ternary_fraction`` was trivially 1), and "frozen"
signatures drifted under weight decay. This module keeps the seed's names and
API and makes each of those parts do what its name says.

Model
-----
For a token ``x`` (``d = d_model``), with ``T = num_tiles`` tiles grouped in
``C = T / K`` clusters of ``K = tiles_per_cluster`` consecutive tiles::

    xn   = LayerNorm(x)                  (identity with input_norm=False)
    c    = W_c2 silu(W_c1 xn + b_c1) + b_c2                 routing code, (d,)
    z_t  = (c . s_t) / (sqrt(d) * temperature)              tile logits, (T,)
    z_C  = mean_{t in C} z_t                                (= c . mean signature of C)
    C*   = argmax_C z_C,   t* = argmax_{t in C*} z_t        hierarchical top-1
    P_t  = softmax_C(z_C)[C(t)] * softmax_{u in C(t)}(z_u)[t]   joint route probability
    g    = spline(cos(c, s_t*))                             gate in (0, 1)
    y_t  = W2[t] silu(W1[t] xn + b1[t]) + b2[t]             tile expert, d -> H -> d
    out  = x + g * dropout(y_t*)                            residual FFN

``s_t`` is the *effective* signature of tile ``t`` (see "Frozen signatures").
Only the chosen tile's expert is evaluated for the output (``O(N d H)``), and
the output value is exactly the top-1 output above. How the (non
differentiable) choice gets a gradient is ``router_grad``:

* ``"mixture"`` (default): ``y_t*`` is replaced by
  ``y_t* + (m - stop_grad(m))`` with ``m = sum_t P_t stop_grad(y_t)``; the
  added term is exactly zero in value, but its gradient is that of the soft
  mixture, ``dL/dP_t = g dL/dout . y_t``: the router is pushed toward the
  tiles whose output would have been better for this token (the
  straight-through softmax estimator). This needs every tile's output for
  every token *without* gradient (one extra batched pass, ``O(N T d H)``,
  skipped when no gradient is being recorded); expert weights themselves
  are trained by the chosen tile only.
* ``"straight_through"``: ``g`` is multiplied by ``P_t* / stop_grad(P_t*)``
  (value exactly 1, gradient ``dP / P``; ``P_t* >= 1 / T``, so it is
  bounded). Cheaper for many tiles, but the router only learns whether the
  chosen tile helped, not whether another would have helped more.

Either way the task loss reaches the compression net, the signatures (all
of them through ``P``, the chosen one also through ``cos``) and the spline.
With ``use_score_calibration=False``, ``g = 1``.

The input LayerNorm makes the tiles blind to the scale (and mean) of ``x``;
that is the usual pre-norm choice inside a transformer block, but a
standalone FFN on low-dimensional inputs whose amplitude matters should use
``input_norm=False``.

Frozen signatures
-----------------
The learnable parameter ``signatures_raw`` (T, d) is never used directly:
every consumer (routing, regularisers, analysis, statistics, state) reads the
effective signatures ``torch.where(frozen_mask[:, None], frozen_values,
signatures_raw)``. A frozen row therefore receives no gradient and is
*bit-for-bit* the stored buffer, whatever the optimiser does to the raw row
(Adam momentum, AdamW weight decay). Unfreezing copies the buffer back into
the raw row, so learning resumes from the frozen value (the optimiser's
moment estimates for that row are stale; they decay away).

Aux losses
----------
All entries of ``aux_losses`` are already multiplied by their weight;
``total_aux`` is their sum. A term whose weight is 0 is not computed (its
entry is a zero tensor). The unweighted values come from
:meth:`SparseLookupFFNv2.compute_ternary_loss` and friends.

* ``balance`` = ``T * sum_t f_t P_t`` (Switch Transformer): ``f_t`` fraction
  of the batch's tokens routed to ``t`` (no gradient), ``P_t`` mean joint
  route probability ``softmax_C * softmax_{t in C}`` over the batch.
  Equals 1 for a perfectly uniform router.
* ``ternary`` = mean squared distance of each signature value to the nearest
  of {-1, 0, +1}.
* ``sparsity`` = mean absolute signature value (L1).
* ``diversity`` = mean over ordered pairs ``i != j`` of ``cos(s_i, s_j)^2``.

Performance
-----------
A forward pass is a fixed sequence of about 60 tensor operations whatever
``T`` is: no Python loop over tiles or tokens, no host synchronisation
(except ``labels.max()`` when claim tracking is requested). The output uses
only the chosen tiles, gathered and applied by one batched matmul
(``baddbmm``) per layer, ``O(N d H)``; the ``"mixture"`` router gradient adds
one no-grad pass over all tiles, ``O(N T d H)``, when gradients are recorded.
Usage and claim counters are updated under ``torch.no_grad``. Inputs are not checked
for non-finite values (the sensor layer rejects them before they get here).

Evolution of hidden units (seed 002)
-----------------------------------
A hidden unit is a pair ``(t, j)``: column ``j`` of ``w1[t]``, entry ``b1[t, j]``
and row ``j`` of ``w2[t]``.

* **Fitness.** While gradients are recorded (``track=True`` and autograd on),
  the forward pass puts a tensor hook on the chosen tiles' hidden activation
  ``a`` (N, H); on backward it adds ``|a * dL/da|``, averaged over the tokens
  each tile received, into a per-unit EMA ``unit_importance`` (T, H) (decay
  ``fitness_decay`` per backward, only for tiles that received tokens). About
  eight small tensor operations per backward; nothing at all without
  gradients. Optionally (``fitness_diversity`` / ``fitness_stability`` > 0)
  the hook also keeps EMAs of ``a``, ``a^2`` and ``a a^T`` per tile, from
  which :meth:`SparseLookupFFNv2.fitness_components` derives *diversity*
  (1 - mean ``|corr|`` with the other units of the tile) and *stability*
  (``E[a]^2 / E[a^2]``, 1 for a constant activation); *energy*
  (1 - weight norm / the tile's largest) needs no tracking. Each component
  is in [0, 1] within its tile (importance divided by the tile's maximum);
  :meth:`SparseLookupFFNv2.unit_fitness` is their weighted mean (default
  importance only, seed 002 idea 7 otherwise).
* **Lineage.** Every unit has a unique int64 id, two parent ids (-1: none),
  a generation and a birth step; ids are never reused.
* **Apoptosis** (:meth:`SparseLookupFFNv2.apoptosis`) removes, per unfrozen
  observed tile, the ``floor(prune_rate * H)`` least fit units and regrows
  each slot from fitness-weighted parents among the tile's survivors, by
  functional preservation (an exact Net2Net split: output unchanged), mutation
  or crossover (output-weight row of the child starts at zero: output
  unchanged too, see the method). Optimiser moments of the regrown slices
  are zeroed in place.

The modules are not thread-safe: one owner (the agent's worker) mutates them.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lillith.agents._infer import _ffn_rows
from lillith.errors import LillithError, StateError

__all__ = [
    "ANALYSIS_THRESHOLD",
    "REGROWTH_STRATEGIES",
    "TERNARY_TOLERANCE",
    "ScoreCalibrationSpline",
    "SparseLookupBlockV2",
    "SparseLookupFFNv2",
    "TileError",
    "reset_optimizer_moments",
]

#: A signature value counts as "near" a ternary level (for
#: :meth:`SparseLookupFFNv2.get_island_stats`) when within this distance of it.
TERNARY_TOLERANCE = 0.1
#: :meth:`SparseLookupFFNv2.get_signature_analysis` calls a dimension positive
#: when ``s > 0.5``, negative when ``s < -0.5`` and zero otherwise.
ANALYSIS_THRESHOLD = 0.5

_STATE_VERSION = 1
_CONFIG_KEYS = (
    "d_model",
    "num_tiles",
    "tiles_per_cluster",
    "grid_size",
    "compress_hidden",
    "tile_hidden",
    "use_score_calibration",
    "input_norm",
)
_HYPER_KEYS = (
    "dropout",
    "ternary_weight",
    "sparsity_weight",
    "diversity_weight",
    "balance_weight",
    "temperature",
    "usage_decay",
)
_ROUTER_GRADS = ("mixture", "straight_through")
_EXTRA_KEYS = ("config", "hyper", "counters", "claim_counts", "surgery_history", "rng_state")
#: Entries of the state added with unit fitness and lineage; a state without
#: any of them (written before they existed) restores fresh defaults.
_EVOLUTION_KEYS = (
    "fitness_config",
    "unit_importance",
    "unit_fitness_obs",
    "unit_act_mean",
    "unit_act_sq",
    "unit_act_cross",
    "lineage_ids",
    "lineage_parents",
    "lineage_generation",
    "lineage_birth",
    "lineage_next",
)
_FITNESS_NAMES = ("importance", "diversity", "stability", "energy")
#: Regrowth strategies of :meth:`SparseLookupFFNv2.apoptosis`.
REGROWTH_STRATEGIES = ("preservation", "mutation", "crossover")


def _np(t: Tensor) -> npt.NDArray[np.float32]:
    """A numpy view of a float32 tensor's current values (no copy)."""
    out: npt.NDArray[np.float32] = t.detach().numpy()
    return out


class TileError(LillithError):
    """Invalid tile configuration, tile index, signature or input shape."""


def _make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed) % (2**63))
    return gen


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> Tensor:
    """float32 tensor uniform in ``[-bound, bound]`` drawn from ``gen``."""
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise TileError(f"{name} must be an integer", **{name: value})
    try:
        v = operator.index(value)
    except TypeError as e:
        raise TileError(f"{name} must be an integer", **{name: value}) from e
    if v < 1:
        raise TileError(f"{name} must be >= 1", **{name: v})
    return v


def _check_weight(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise TileError(f"{name} must be finite and >= 0", **{name: value})
    return v


def reset_optimizer_moments(optimizer: torch.optim.Optimizer, param: Tensor, index: Any) -> int:
    """Zero an optimiser's per-element state of ``param[index]``, in place.

    Every state tensor of ``param`` with the parameter's own shape (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's
    ``momentum_buffer``; RMSprop's ``square_avg``, ...) gets ``[index] = 0``;
    scalar entries such as Adam's ``step`` are per parameter and stay. The
    state tensors are modified in place, so the optimiser (fused or not)
    keeps using the same objects. A parameter the optimiser has no state
    for yet (never stepped, or not one of its parameters) is left alone.

    With Adam the bias correction then treats the zeroed elements as
    long-trained: the first update of a zeroed element is about
    ``lr * (1 - beta1) / sqrt(1 - beta2)`` (~3.2 lr with the defaults)
    in the direction of its gradient, then the moments catch up.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    param : Tensor
        A parameter (the very object the optimiser holds).
    index : index expression
        Anything ``tensor[index] = 0`` accepts (ints, slices, index tensors).

    Returns
    -------
    int
        Number of state tensors modified.
    """
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    with torch.no_grad():
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[index] = 0
                touched += 1
    return touched


# ----------------------------------------------------------------------------
# score calibration
# ----------------------------------------------------------------------------


class ScoreCalibrationSpline(nn.Module):
    """Learnable monotone piecewise-linear map from a score to a gate in [0, 1].

    ``num_knots`` knots sit at fixed, evenly spaced positions
    ``x_0 = x_min < ... < x_{n-1} = x_max``. Their values are
    ``y_k = sum_{j <= k} w_j`` with ``w = softmax(logits)`` over ``n + 1``
    learnable logits, so ``0 < y_0 < y_1 < ... < y_{n-1} < 1``: monotone and
    bounded by construction, for any parameter values. Between knots the map
    interpolates linearly, ``min(y_k + f (y_{k+1} - y_k), y_{k+1})`` with
    ``f`` the position inside segment ``k``; outside ``[x_min, x_max]`` it is
    constant (``y_0`` resp. ``y_{n-1}``). Every output is computed by the same
    element-wise operations, each monotone under rounding, so the map is
    non-decreasing *in floating point* too (a matmul formulation is not: its
    summation order varies between rows). The gradient reaches the input
    (inside the domain) and every logit.

    With zero logits (the initial value) the map is a straight ramp from
    ``1 / (n + 1)`` to ``n / (n + 1)``.

    Parameters
    ----------
    num_knots : int, default 8
        Number of knots, >= 2.
    x_min, x_max : float, default -1.0, 1.0
        Domain of the knots (``x_min < x_max``). The tile FFN feeds cosine
        similarities, so the default covers their whole range.
    """

    def __init__(self, num_knots: int = 8, x_min: float = -1.0, x_max: float = 1.0) -> None:
        super().__init__()
        n = _check_positive_int("num_knots", num_knots)
        if n < 2:
            raise TileError("num_knots must be >= 2", num_knots=n)
        lo, hi = float(x_min), float(x_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise TileError("spline domain must satisfy x_min < x_max", x_min=lo, x_max=hi)
        self.num_knots = n
        self.x_min = lo
        self.x_max = hi
        self._inv_h = (n - 1) / (hi - lo)
        #: Learnable logits, float32 (num_knots + 1,): softmax gives the knot increments.
        self.logits = nn.Parameter(torch.zeros(n + 1))

    def knot_positions(self) -> Tensor:
        """Knot positions ``x_k``, float32 (num_knots,)."""
        return torch.linspace(self.x_min, self.x_max, self.num_knots)

    def knot_values(self) -> Tensor:
        """Knot values ``y_k``, float (num_knots,), increasing, in (0, 1)."""
        w = torch.softmax(self.logits, 0)
        return torch.cumsum(w, 0)[: self.num_knots]

    def forward(self, scores: Tensor) -> Tensor:
        """Calibrate raw scores.

        Parameters
        ----------
        scores : Tensor, float, any shape
            Raw scores.

        Returns
        -------
        Tensor
            Gates, same shape and dtype as ``scores``, in [0, 1] (in (0, 1)
            unless a softmax weight underflows).
        """
        n = self.num_knots
        logits: Tensor = self.logits
        if scores.dtype != logits.dtype:
            logits = logits.to(scores.dtype)
        y = torch.cumsum(torch.softmax(logits, 0), 0)
        lo, hi = y[: n - 1], y[1:n]
        table = torch.stack((lo, hi - lo, hi), 1)  # (n - 1, 3): left, step, right
        u = ((scores - self.x_min) * self._inv_h).clamp(0.0, float(n - 1))
        with torch.no_grad():
            seg = u.floor().clamp_(max=float(n - 2))
        rows = table[seg.long()]  # (..., 3)
        return torch.minimum(torch.addcmul(rows[..., 0], u - seg, rows[..., 1]), rows[..., 2])

    def table(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32],
                             npt.NDArray[np.float32]]:
        """Per segment: left value, step and right value, float32 (num_knots - 1,) each."""
        n = self.num_knots
        logits = _np(self.logits)
        w = np.exp(logits - logits.max())
        y = np.cumsum(w / w.sum()).astype(np.float32)
        lo, hi = y[: n - 1], y[1:n]
        return np.ascontiguousarray(lo), np.ascontiguousarray(hi - lo), np.ascontiguousarray(hi)

    def extra_repr(self) -> str:
        return f"num_knots={self.num_knots}, x_min={self.x_min}, x_max={self.x_max}"


# ----------------------------------------------------------------------------
# tile FFN
# ----------------------------------------------------------------------------


class SparseLookupFFNv2(nn.Module):
    """Hierarchically routed top-1 tile FFN with signature surgery and regularisers.

    See the module docstring for the equations. Call it as
    ``output, routing_info, aux_losses = ffn(x, labels=None)``.

    Parameters
    ----------
    d_model : int, default 128
        Model dimension ``d``.
    num_tiles : int, default 64
        Number of tiles ``T``; a multiple of ``tiles_per_cluster``.
    tiles_per_cluster : int, default 8
        Tiles per routing cluster ``K``; tile ``t`` belongs to cluster ``t // K``.
    grid_size : int, default 16
        Knots of the score calibration spline (>= 2).
    compress_hidden : int, optional
        Hidden width of the compression (routing) net; default ``max(1, d // 4)``.
    dropout : float, default 0.1
        Dropout on the tile output (training mode only), in [0, 1).
    use_score_calibration : bool, default True
        Gate tile outputs by the calibration spline of the chosen tile's
        cosine score; without it the gate is 1.
    ternary_weight, sparsity_weight, diversity_weight, balance_weight : float, default 0.01
        Weights of the auxiliary losses (>= 0; 0 skips the computation).
    tile_hidden : int, optional
        Hidden width ``H`` of each tile's expert; default ``max(4, d // 4)``.
    temperature : float, default 1.0
        Softmax temperature of the route probabilities (> 0).
    seed : int, optional
        Seed of the initialisation generator (also used by :meth:`reseed_tile`).
        Same seed, same parameters, same outputs. ``None``: nondeterministic.
    usage_decay : float, default 0.99
        Per-forward decay of the usage EMA (:meth:`tile_usage`), in [0, 1).
    router_grad : {"mixture", "straight_through"}, default "mixture"
        How the task loss reaches the router (module docstring). Changes
        gradients only, never output values; not part of the state.
    input_norm : bool, default True
        Apply a learnable LayerNorm to ``x`` before routing and the experts
        (parameters ``norm_weight``, ``norm_bias``; ``None`` when False).
    track_fitness : bool, default True, keyword-only
        Record hidden-unit fitness during backward (module docstring,
        "Evolution of hidden units"); changes no output or gradient.
    fitness_decay : float, default 0.99, keyword-only
        Per-backward decay of the fitness EMAs, in [0, 1).
    fitness_importance, fitness_diversity, fitness_stability, fitness_energy : float
        Keyword-only weights (>= 0, not all 0) of the fitness components in
        :meth:`unit_fitness`; default 1, 0, 0, 0 (importance only). See
        :meth:`configure_fitness`.

    Raises
    ------
    TileError
        Invalid configuration (e.g. ``num_tiles % tiles_per_cluster != 0``).

    Attributes
    ----------
    signatures_raw : Parameter, float32 (T, d)
        Raw learnable signatures; use :attr:`signatures` for the effective ones.
    w1, b1, w2, b2 : Parameter, float32 (T, d, H), (T, H), (T, H, d), (T, d)
        Tile experts.
    frozen_mask : buffer, bool (T,)
    frozen_values : buffer, float32 (T, d)
        Values of frozen signatures (rows of unfrozen tiles are unused).
    usage_counts : buffer, int64 (T,)
        Tokens routed to each tile since the last :meth:`reset_stats`.
    usage_ema : buffer, float32 (T,)
        EMA of the per-forward fraction of tokens routed to each tile.
    unit_importance : buffer, float32 (T, H)
        EMA of ``|a * dL/da|`` per hidden unit (not in ``state_dict()``; in
        :meth:`get_state`).
    unit_fitness_obs : buffer, int64 (T,)
        Backward passes in which each tile had tokens (fitness observations).
    unit_act_mean, unit_act_sq : buffer, float32 (T, H)
        EMAs of ``a`` and ``a^2`` (tracked when diversity or stability count).
    unit_act_cross : buffer, float32 (T, H, H), or (0, H, H) when unused
        EMA of ``a a^T`` per tile (tracked when diversity counts).
    """

    frozen_mask: Tensor
    frozen_values: Tensor
    usage_counts: Tensor
    usage_ema: Tensor
    unit_importance: Tensor
    unit_fitness_obs: Tensor
    unit_act_mean: Tensor
    unit_act_sq: Tensor
    unit_act_cross: Tensor
    _offdiag: Tensor

    HISTORY_LIMIT = 10_000
    """Surgery-history entries kept (oldest dropped first)."""

    def __init__(
        self,
        d_model: int = 128,
        num_tiles: int = 64,
        tiles_per_cluster: int = 8,
        grid_size: int = 16,
        compress_hidden: int | None = None,
        dropout: float = 0.1,
        use_score_calibration: bool = True,
        ternary_weight: float = 0.01,
        sparsity_weight: float = 0.01,
        diversity_weight: float = 0.01,
        balance_weight: float = 0.01,
        tile_hidden: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
        usage_decay: float = 0.99,
        router_grad: str = "mixture",
        input_norm: bool = True,
        *,
        track_fitness: bool = True,
        fitness_decay: float = 0.99,
        fitness_importance: float = 1.0,
        fitness_diversity: float = 0.0,
        fitness_stability: float = 0.0,
        fitness_energy: float = 0.0,
    ) -> None:
        super().__init__()
        if router_grad not in _ROUTER_GRADS:
            raise TileError(
                "router_grad must be 'mixture' or 'straight_through'", router_grad=router_grad
            )
        self.router_grad = router_grad
        d = _check_positive_int("d_model", d_model)
        T = _check_positive_int("num_tiles", num_tiles)
        K = _check_positive_int("tiles_per_cluster", tiles_per_cluster)
        if T % K != 0:
            raise TileError(
                "num_tiles must be a multiple of tiles_per_cluster",
                num_tiles=T,
                tiles_per_cluster=K,
            )
        G = _check_positive_int("grid_size", grid_size)
        if G < 2:
            raise TileError("grid_size must be >= 2", grid_size=G)
        Hc = max(1, d // 4) if compress_hidden is None else compress_hidden
        Hc = _check_positive_int("compress_hidden", Hc)
        H = max(4, d // 4) if tile_hidden is None else tile_hidden
        H = _check_positive_int("tile_hidden", H)
        self.d_model = d
        self.num_tiles = T
        self.tiles_per_cluster = K
        self.num_clusters = T // K
        self.grid_size = G
        self.compress_hidden = Hc
        self.tile_hidden = H
        self.use_score_calibration = bool(use_score_calibration)
        self._set_hyper(
            dropout=dropout,
            ternary_weight=ternary_weight,
            sparsity_weight=sparsity_weight,
            diversity_weight=diversity_weight,
            balance_weight=balance_weight,
            temperature=temperature,
            usage_decay=usage_decay,
        )
        self.seed = seed
        self._gen = _make_generator(seed)
        gen = self._gen

        # input norm and compression (routing) net
        self.input_norm = bool(input_norm)
        self.norm_weight: nn.Parameter | None = None
        self.norm_bias: nn.Parameter | None = None
        if self.input_norm:
            self.norm_weight = nn.Parameter(torch.ones(d))
            self.norm_bias = nn.Parameter(torch.zeros(d))
        self.compress_w1 = nn.Parameter(_uniform((Hc, d), 1.0 / math.sqrt(d), gen))
        self.compress_b1 = nn.Parameter(_uniform((Hc,), 1.0 / math.sqrt(d), gen))
        self.compress_w2 = nn.Parameter(_uniform((d, Hc), 1.0 / math.sqrt(Hc), gen))
        self.compress_b2 = nn.Parameter(_uniform((d,), 1.0 / math.sqrt(Hc), gen))
        # signatures and tile experts
        self.signatures_raw = nn.Parameter(self._random_signatures(T))
        self.w1 = nn.Parameter(torch.empty(T, d, H))
        self.b1 = nn.Parameter(torch.empty(T, H))
        self.w2 = nn.Parameter(torch.empty(T, H, d))
        self.b2 = nn.Parameter(torch.empty(T, d))
        with torch.no_grad():
            for t in range(T):
                self._init_expert(t)
        self.calibration: ScoreCalibrationSpline | None = (
            ScoreCalibrationSpline(G) if self.use_score_calibration else None
        )

        self.register_buffer("frozen_mask", torch.zeros(T, dtype=torch.bool))
        self.register_buffer("frozen_values", torch.zeros(T, d))
        self.register_buffer("usage_counts", torch.zeros(T, dtype=torch.int64))
        self.register_buffer("usage_ema", torch.full((T,), 1.0 / T))
        self.register_buffer("_offdiag", 1.0 - torch.eye(T), persistent=False)
        self._any_frozen = False
        self._claims = torch.zeros(T, 0, dtype=torch.int64)
        self._history: list[dict[str, Any]] = []
        self._forward_calls = 0
        self._history_seq = 0

        # hidden-unit fitness (non-persistent buffers: get_state carries them,
        # state_dict() stays as it was) and lineage
        self.register_buffer("unit_importance", torch.zeros(T, H), persistent=False)
        self.register_buffer(
            "unit_fitness_obs", torch.zeros(T, dtype=torch.int64), persistent=False
        )
        self.register_buffer("unit_act_mean", torch.zeros(T, H), persistent=False)
        self.register_buffer("unit_act_sq", torch.zeros(T, H), persistent=False)
        self.register_buffer("unit_act_cross", torch.zeros(0, H, H), persistent=False)
        self.track_fitness = True
        self.fitness_decay = 0.99
        self.fitness_weights: dict[str, float] = {"importance": 1.0}
        self.configure_fitness(
            track=track_fitness,
            decay=fitness_decay,
            importance=fitness_importance,
            diversity=fitness_diversity,
            stability=fitness_stability,
            energy=fitness_energy,
        )
        self._lineage_ids = np.arange(T * H, dtype=np.int64).reshape(T, H)
        self._lineage_parents = np.full((T, H, 2), -1, dtype=np.int64)
        self._lineage_generation = np.zeros((T, H), dtype=np.int64)
        self._lineage_birth = np.zeros((T, H), dtype=np.int64)
        self._next_unit_id = T * H

    # ------------------------------------------------------------ internals

    def _set_hyper(self, **values: float) -> None:
        dropout = float(values["dropout"])
        if not (math.isfinite(dropout) and 0.0 <= dropout < 1.0):
            raise TileError("dropout must be in [0, 1)", dropout=dropout)
        temperature = float(values["temperature"])
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise TileError("temperature must be > 0", temperature=temperature)
        decay = float(values["usage_decay"])
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise TileError("usage_decay must be in [0, 1)", usage_decay=decay)
        weights = {
            k: _check_weight(k, values[k])
            for k in ("ternary_weight", "sparsity_weight", "diversity_weight", "balance_weight")
        }
        self.dropout = dropout
        self.temperature = temperature
        self.usage_decay = decay
        self.ternary_weight = weights["ternary_weight"]
        self.sparsity_weight = weights["sparsity_weight"]
        self.diversity_weight = weights["diversity_weight"]
        self.balance_weight = weights["balance_weight"]
        self._score_scale = 1.0 / (math.sqrt(self.d_model) * temperature)

    def _random_signatures(self, n: int) -> Tensor:
        """``n`` random signatures, float32 (n, d), N(0, 0.5^2) from the init generator."""
        return torch.randn(n, self.d_model, generator=self._gen) * 0.5

    def _init_expert(self, t: int) -> None:
        """Re-initialise tile ``t``'s expert from the init generator (under no_grad)."""
        d, H, gen = self.d_model, self.tile_hidden, self._gen
        dev = self.w1.device
        self.w1[t].copy_(_uniform((d, H), 1.0 / math.sqrt(d), gen).to(dev))
        self.b1[t].copy_(_uniform((H,), 1.0 / math.sqrt(d), gen).to(dev))
        self.w2[t].copy_(_uniform((H, d), 1.0 / math.sqrt(H), gen).to(dev))
        self.b2[t].zero_()

    def _effective_signatures(self) -> Tensor:
        """Effective signatures, float32 (T, d): frozen rows from the buffer."""
        if not self._any_frozen:
            return self.signatures_raw
        return torch.where(self.frozen_mask.unsqueeze(1), self.frozen_values, self.signatures_raw)

    def _check_tile(self, tile_idx: int) -> int:
        if isinstance(tile_idx, bool):
            raise TileError("tile index must be an integer", tile_idx=tile_idx)
        try:
            t = operator.index(tile_idx)
        except TypeError as e:
            raise TileError("tile index must be an integer", tile_idx=tile_idx) from e
        if not 0 <= t < self.num_tiles:
            raise TileError("tile index out of range", tile_idx=t, num_tiles=self.num_tiles)
        return t

    def _as_signature(self, signature: Tensor | npt.ArrayLike) -> Tensor:
        try:
            sig = torch.as_tensor(signature, dtype=self.signatures_raw.dtype)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TileError("signature must be a numeric vector") from e
        if sig.shape != (self.d_model,):
            raise TileError(
                "signature has the wrong shape",
                shape=tuple(sig.shape),
                expected=(self.d_model,),
            )
        if not bool(torch.isfinite(sig).all()):
            raise TileError("signature contains non-finite values")
        return sig.to(self.signatures_raw.device)

    def _record(self, op: str, tile_idx: int, tag: str = "", **extra: Any) -> None:
        """Append a surgery-history entry; ``extra`` must be JSON-serialisable."""
        entry: dict[str, Any] = {
            "op": op,
            "tile_idx": int(tile_idx),
            "tag": str(tag),
            "step": self._forward_calls,
            "seq": self._history_seq,
            "frozen": bool(self.frozen_mask[tile_idx]),
        }
        entry.update(extra)
        self._history.append(entry)
        self._history_seq += 1
        if len(self._history) > self.HISTORY_LIMIT:  # the log has every entry; keep the newest
            del self._history[: len(self._history) - self.HISTORY_LIMIT]

    def _refresh_frozen_flag(self) -> None:
        self._any_frozen = bool(self.frozen_mask.any())

    @staticmethod
    def _ternary(sig: Tensor) -> Tensor:
        target = torch.round(sig.detach().clamp(-1.0, 1.0))
        return (sig - target).square().mean()

    @staticmethod
    def _sparsity(sig: Tensor) -> Tensor:
        return sig.abs().mean()

    def _diversity(self, sig: Tensor, norms: Tensor | None = None) -> Tensor:
        T = sig.shape[0]
        if T < 2:
            return sig.new_zeros(())
        if norms is None:
            norms = torch.linalg.vector_norm(sig, dim=1)
        sn = sig / norms.clamp_min(1e-8).unsqueeze(1)
        gram = sn @ sn.t()
        return (gram.square() * self._offdiag).sum() / (T * (T - 1))

    # ------------------------------------------------------------ forward

    def forward(
        self, x: Tensor, labels: Tensor | None = None, *, track: bool = True
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Route each token to one tile and add its gated output.

        Parameters
        ----------
        x : Tensor, float32 (N, d) or (B, L, d)
            Tokens.
        labels : Tensor, integer, shape ``x.shape[:-1]``, optional
            Class labels for claim tracking (negative values are ignored).
            The class table grows to ``labels.max() + 1`` as needed.
        track : bool, default True
            Update usage counters (and claims when ``labels`` is given); when
            gradients are recorded, also hook the hidden-unit fitness update
            onto the backward pass (``track_fitness``).

        Returns
        -------
        output : Tensor, same shape and dtype as ``x``
            ``x + gate * tile_output`` (residual FFN).
        routing_info : dict of str to Tensor, each of shape ``x.shape[:-1]``
            ``tile_idx`` int64 chosen tile; ``cluster_idx`` int64 chosen
            cluster; ``gate`` float gate value; ``score`` float cosine of the
            routing code with the chosen signature; ``prob`` float route
            probability of the chosen tile. All detached.
        aux_losses : dict of str to Tensor (0-d, float)
            Weighted ``balance``, ``ternary``, ``sparsity``, ``diversity`` and
            their sum ``total_aux``.

        Raises
        ------
        TileError
            ``x`` is not 2-D/3-D with last dimension ``d_model`` or has no
            tokens; ``labels`` has the wrong shape or dtype.
        """
        d = self.d_model
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise TileError(
                "x must have shape (N, d_model) or (B, L, d_model)",
                shape=tuple(x.shape),
                d_model=d,
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d)
        N = x2.shape[0]
        if N == 0:
            raise TileError("x must contain at least one token", shape=tuple(x.shape))
        if labels is not None and (
            labels.shape != lead or labels.is_floating_point() or labels.dtype == torch.bool
        ):
            raise TileError(
                "labels must be an integer tensor of shape x.shape[:-1]",
                shape=tuple(labels.shape),
                dtype=str(labels.dtype),
                expected=tuple(lead),
            )
        T, C, K = self.num_tiles, self.num_clusters, self.tiles_per_cluster

        xn = F.layer_norm(x2, (d,), self.norm_weight, self.norm_bias) if self.input_norm else x2
        code = F.linear(
            F.silu(F.linear(xn, self.compress_w1, self.compress_b1)),
            self.compress_w2,
            self.compress_b2,
        )
        sig = self._effective_signatures()
        sig_norms = torch.linalg.vector_norm(sig, dim=1)  # (T,)
        dots = code @ sig.t()  # (N, T)
        z = (dots * self._score_scale).view(N, C, K)
        z_cluster = z.mean(-1)  # (N, C) == code . mean cluster signature
        joint = (torch.softmax(z_cluster, -1).unsqueeze(-1) * torch.softmax(z, -1)).view(N, T)
        with torch.no_grad():
            cl = z_cluster.argmax(-1, keepdim=True)  # (N, 1)
            idx1 = cl * K + z.argmax(-1).gather(1, cl)  # (N, 1)
            idx = idx1.view(N)
        p = joint.gather(1, idx1)  # (N, 1)
        cos = dots.gather(1, idx1) / (
            torch.linalg.vector_norm(code, dim=1, keepdim=True) * sig_norms[idx1]
        ).clamp_min(1e-8)

        hidden = F.silu(torch.baddbmm(self.b1[idx].unsqueeze(1), xn.unsqueeze(1), self.w1[idx]))
        y = torch.baddbmm(self.b2[idx].unsqueeze(1), hidden, self.w2[idx]).view(N, d)
        if self.dropout > 0.0 and self.training:
            y = F.dropout(y, self.dropout, True)
        if self.router_grad == "mixture" and joint.requires_grad:
            with torch.no_grad():
                hid_all = F.silu(torch.einsum("nd,tdh->tnh", xn, self.w1) + self.b1.unsqueeze(1))
                y_all = torch.baddbmm(self.b2.unsqueeze(1), hid_all, self.w2)  # (T, N, d)
            mix = torch.einsum("nt,tnd->nd", joint, y_all)
            y = y + (mix - mix.detach())  # value exactly y; gradient of the mixture to joint
        if self.router_grad == "mixture":
            gate = (
                torch.ones_like(cos) if self.calibration is None else self.calibration.forward(cos)
            )
        else:
            straight = p / p.detach()
            gate = (
                straight if self.calibration is None else self.calibration.forward(cos) * straight
            )
        out = torch.addcmul(x2, gate, y).view(x.shape)

        with torch.no_grad():
            counts = torch.bincount(idx, minlength=T)
        zero = x2.new_zeros(())
        aux: dict[str, Tensor] = {}
        total = zero
        if self.balance_weight > 0.0:
            frac = counts.to(joint.dtype) / N
            aux["balance"] = (self.balance_weight * T) * (frac @ joint.mean(0))
            total = total + aux["balance"]
        else:
            aux["balance"] = zero
        for name, weight in (
            ("ternary", self.ternary_weight),
            ("sparsity", self.sparsity_weight),
            ("diversity", self.diversity_weight),
        ):
            if weight > 0.0:
                if name == "ternary":
                    value = self._ternary(sig)
                elif name == "sparsity":
                    value = self._sparsity(sig)
                else:
                    value = self._diversity(sig, sig_norms)
                aux[name] = weight * value
                total = total + aux[name]
            else:
                aux[name] = zero
        aux["total_aux"] = total

        if track:
            with torch.no_grad():
                self._forward_calls += 1
                self.usage_counts.add_(counts)
                self.usage_ema.mul_(self.usage_decay).add_(
                    counts, alpha=(1.0 - self.usage_decay) / N
                )
                if labels is not None:
                    self._track_claims(idx, labels.reshape(-1))
            if self.track_fitness and hidden.requires_grad:
                hidden.register_hook(  # type: ignore[no-untyped-call]
                    self._fitness_hook(hidden.detach(), idx, counts)
                )

        info = {
            "tile_idx": idx.view(lead),
            "cluster_idx": cl.view(lead),
            "gate": gate.detach().view(lead),
            "score": cos.detach().view(lead),
            "prob": p.detach().view(lead),
        }
        return out, info, aux

    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The output of :meth:`forward` for tokens ``x``, without torch.

        No autograd, no counters, no auxiliary losses: the inference pass of
        a streaming agent, where torch's per-operation dispatch (about 40
        small operations) costs far more than the arithmetic. A numba kernel
        computes each row by the same loops whatever ``N``, so a row's result
        never depends on the others or on the shape of the call. Same
        equations as :meth:`forward`; the values agree to float32 rounding (a
        token whose two best routes score within rounding of each other may
        take the other one).

        Parameters
        ----------
        x : ndarray, float32, shape (N, d_model)
            Tokens.

        Returns
        -------
        ndarray, float32, shape (N, d_model)
            ``x + gate * tile_output``.
        """
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise TileError("x must have shape (N, d_model)", shape=x.shape, d_model=self.d_model)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        args = self.infer_args()
        work = np.empty(2 * self.d_model + self.compress_hidden + self.num_tiles
                        + self.tile_hidden, dtype=np.float32)
        _ffn_rows(*(x, *args, work, out))
        return out

    def infer_args(self) -> tuple[Any, ...]:
        """The arguments of the inference kernel after the tokens, as of now:
        float32 numpy views of the parameters (no copy: they follow in-place
        updates) and the arrays derived from them (effective signatures,
        calibration table), which do not. A caller that keeps them must take
        them again after a training step or any change of signatures."""
        d = self.d_model
        one = np.ones(d, dtype=np.float32)
        nw = one if self.norm_weight is None else _np(self.norm_weight)
        nb = one if self.norm_bias is None else _np(self.norm_bias)
        cal = self.calibration
        if cal is None:
            lo = step = hi = one[:1]
            x_min = inv_h = np.float32(0.0)
        else:
            lo, step, hi = cal.table()
            x_min, inv_h = np.float32(cal.x_min), np.float32(cal._inv_h)
        return (self.input_norm, nw, nb, _np(self.compress_w1), _np(self.compress_b1),
                _np(self.compress_w2), _np(self.compress_b2),
                np.ascontiguousarray(_np(self._effective_signatures())),
                np.float32(self._score_scale), self.tiles_per_cluster, _np(self.w1),
                _np(self.b1), _np(self.w2), _np(self.b2), cal is not None, lo, step, hi,
                x_min, inv_h)

    def route(self, x: Tensor | npt.ArrayLike) -> dict[str, Tensor]:
        """Routing only: no gradient, no counters, no expert evaluated.

        Parameters
        ----------
        x : Tensor or array-like, float (N, d) or (B, L, d)
            Tokens.

        Returns
        -------
        dict of str to Tensor
            ``tile_idx`` int64 and ``cluster_idx`` int64 (the choice
            :meth:`forward` makes for the same tokens), ``score`` float32 (the
            cosine of the routing code with the chosen signature), each of
            shape ``x.shape[:-1]``; ``code`` float32 (N, d), the routing codes
            of the flattened tokens.

        Raises
        ------
        TileError
            ``x`` has the wrong shape or no tokens.
        """
        d = self.d_model
        try:
            xt = torch.as_tensor(x, dtype=self.compress_w1.dtype, device=self.compress_w1.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TileError("x must be a numeric array") from e
        if xt.dim() not in (2, 3) or xt.shape[-1] != d or xt.numel() == 0:
            raise TileError(
                "x must have shape (N, d_model) or (B, L, d_model) with tokens",
                shape=tuple(xt.shape),
                d_model=d,
            )
        lead = xt.shape[:-1]
        x2 = xt.reshape(-1, d)
        N = x2.shape[0]
        C, K = self.num_clusters, self.tiles_per_cluster
        with torch.no_grad():
            xn = F.layer_norm(x2, (d,), self.norm_weight, self.norm_bias) if self.input_norm else x2
            code = F.linear(
                F.silu(F.linear(xn, self.compress_w1, self.compress_b1)),
                self.compress_w2,
                self.compress_b2,
            )
            sig = self._effective_signatures()
            sig_norms = torch.linalg.vector_norm(sig, dim=1)
            dots = code @ sig.t()
            z = (dots * self._score_scale).view(N, C, K)
            cl = z.mean(-1).argmax(-1, keepdim=True)
            idx1 = cl * K + z.argmax(-1).gather(1, cl)
            cos = dots.gather(1, idx1) / (
                torch.linalg.vector_norm(code, dim=1, keepdim=True) * sig_norms[idx1]
            ).clamp_min(1e-8)
        return {
            "tile_idx": idx1.view(lead),
            "cluster_idx": cl.view(lead),
            "score": cos.view(lead),
            "code": code,
        }

    def _track_claims(self, idx: Tensor, labels: Tensor) -> None:
        lab = labels.to(device=idx.device, dtype=torch.int64)
        valid = lab >= 0
        if not bool(valid.all()):
            lab, idx = lab[valid], idx[valid]
        if lab.numel() == 0:
            return
        n_cls = max(int(lab.max()) + 1, self._claims.shape[1])
        claims = self._claims
        if claims.device != idx.device:
            claims = claims.to(idx.device)
        if n_cls > claims.shape[1]:
            grown = torch.zeros(self.num_tiles, n_cls, dtype=torch.int64, device=idx.device)
            grown[:, : claims.shape[1]] = claims
            claims = grown
        claims += torch.bincount(idx * n_cls + lab, minlength=self.num_tiles * n_cls).view(
            self.num_tiles, n_cls
        )
        self._claims = claims

    # ------------------------------------------------------------ fitness

    def _fitness_hook(self, hidden: Tensor, idx: Tensor, counts: Tensor) -> Any:
        """Backward hook on the hidden activation (N, 1, H) of the chosen tiles."""

        def hook(grad: Tensor) -> None:
            with torch.no_grad():
                self._observe_fitness(hidden, grad, idx, counts)

        return hook

    def _observe_fitness(self, hidden: Tensor, grad: Tensor, idx: Tensor, counts: Tensor) -> None:
        """Fold one batch's ``|a * dL/da|`` (and activity moments) into the EMAs."""
        T, H = self.num_tiles, self.tile_hidden
        a = hidden.view(-1, H)
        imp = a * grad.reshape(-1, H)
        sums = imp.new_zeros(T, H).index_add_(0, idx, imp.abs_())
        cf = counts.to(a.dtype).unsqueeze(1)  # (T, 1)
        inv = cf.clamp_min(1.0).reciprocal_()
        w = cf.clamp_max(1.0).mul_(1.0 - self.fitness_decay)  # (T, 1), 0 where unseen
        self.unit_importance.lerp_(sums.mul_(inv), w)  # weight 0 leaves a row bit-unchanged
        self.unit_fitness_obs.add_(counts.clamp_max(1))
        weights = self.fitness_weights
        if weights["diversity"] > 0.0 or weights["stability"] > 0.0:
            self.unit_act_mean.lerp_(a.new_zeros(T, H).index_add_(0, idx, a).mul_(inv), w)
            self.unit_act_sq.lerp_(a.new_zeros(T, H).index_add_(0, idx, a * a).mul_(inv), w)
            if self.unit_act_cross.shape[0] == T:
                cross = a.new_zeros(T, H, H).index_add_(0, idx, a.unsqueeze(2) * a.unsqueeze(1))
                self.unit_act_cross.lerp_(cross.mul_(inv.unsqueeze(2)), w.unsqueeze(2))

    def configure_fitness(
        self,
        *,
        track: bool | None = None,
        decay: float | None = None,
        importance: float | None = None,
        diversity: float | None = None,
        stability: float | None = None,
        energy: float | None = None,
    ) -> None:
        """Change how hidden-unit fitness is recorded and combined.

        Arguments left ``None`` keep their current value. Turning diversity
        on allocates the (T, H, H) cross-moment EMA (zeros: its correlations
        start uninformative and fill in with the decay).

        Parameters
        ----------
        track : bool, optional
            Record fitness during backward.
        decay : float, optional
            EMA decay per backward, in [0, 1).
        importance, diversity, stability, energy : float, optional
            Weights of the components of :meth:`unit_fitness` (>= 0; their
            sum must stay > 0).

        Raises
        ------
        TileError
            Invalid values; nothing is changed.
        """
        new_weights = dict(self.fitness_weights)
        for name, value in zip(
            _FITNESS_NAMES, (importance, diversity, stability, energy), strict=True
        ):
            if value is not None:
                new_weights[name] = _check_weight(f"fitness_{name}", value)
        new_weights = {k: new_weights.get(k, 0.0) for k in _FITNESS_NAMES}
        if sum(new_weights.values()) <= 0.0:
            raise TileError("fitness weights must not all be 0", **new_weights)
        new_decay = self.fitness_decay if decay is None else float(decay)
        if not (math.isfinite(new_decay) and 0.0 <= new_decay < 1.0):
            raise TileError("fitness_decay must be in [0, 1)", fitness_decay=decay)
        self.fitness_weights = new_weights
        self.fitness_decay = new_decay
        if track is not None:
            self.track_fitness = bool(track)
        T, H = self.num_tiles, self.tile_hidden
        if new_weights["diversity"] > 0.0 and self.unit_act_cross.shape[0] != T:
            self.unit_act_cross = self.unit_importance.new_zeros(T, H, H)

    def fitness_components(self) -> dict[str, npt.NDArray[np.float32]]:
        """The four fitness components per hidden unit, each float32 (T, H) in [0, 1].

        Returns
        -------
        dict of str to numpy.ndarray
            ``importance``: ``unit_importance`` divided by its tile's maximum
            (0 for a tile never observed); ``diversity``: 1 - mean over the
            tile's other units of ``|corr(a_j, a_k)|`` from the activity EMAs
            (1 while no cross moments are tracked); ``stability``:
            ``E[a]^2 / E[a^2]`` (0 while untracked); ``energy``: 1 - norm of
            the unit's weights ``(w1[:, j], b1[j], w2[j, :])`` divided by the
            tile's largest.
        """
        with torch.no_grad():
            comps = self._fitness_tensors(_FITNESS_NAMES)
        return {k: v.cpu().numpy().astype(np.float32) for k, v in comps.items()}

    def _fitness_tensors(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        T, H = self.num_tiles, self.tile_hidden
        out: dict[str, Tensor] = {}
        eps = 1e-12
        if "importance" in names:
            imp = torch.nan_to_num(self.unit_importance.detach(), nan=0.0, posinf=0.0)
            imp = imp.clamp_min(0.0)
            out["importance"] = imp / imp.amax(1, keepdim=True).clamp_min(eps)
        if "stability" in names or "diversity" in names:
            mean = self.unit_act_mean.detach()
            sq = self.unit_act_sq.detach()
            var = (sq - mean * mean).clamp_min(0.0)
            if "stability" in names:
                out["stability"] = ((mean * mean) / sq.clamp_min(eps)).clamp(0.0, 1.0)
            if "diversity" in names:
                if self.unit_act_cross.shape[0] != T or H < 2:
                    out["diversity"] = torch.ones_like(mean)
                else:
                    cov = self.unit_act_cross.detach() - mean.unsqueeze(2) * mean.unsqueeze(1)
                    sd = var.sqrt()
                    corr = (cov / (sd.unsqueeze(2) * sd.unsqueeze(1)).clamp_min(eps)).abs()
                    corr = corr.clamp(0.0, 1.0) * (1.0 - torch.eye(H, device=corr.device))
                    out["diversity"] = 1.0 - corr.sum(2) / (H - 1)
        if "energy" in names:
            norm = (
                self.w1.detach().square().sum(1)
                + self.b1.detach().square()
                + self.w2.detach().square().sum(2)
            ).sqrt()
            out["energy"] = 1.0 - norm / norm.amax(1, keepdim=True).clamp_min(eps)
        return out

    def unit_fitness(self) -> Tensor:
        """Combined hidden-unit fitness, float32 (T, H) in [0, 1], a detached copy.

        The weighted mean of :meth:`fitness_components` with the weights of
        :meth:`configure_fitness` (components of weight 0 are not computed).
        Only comparisons within a tile are meaningful.
        """
        weights = {k: w for k, w in self.fitness_weights.items() if w > 0.0}
        with torch.no_grad():
            comps = self._fitness_tensors(tuple(weights))
            total = sum(weights.values())
            fit = torch.zeros_like(self.unit_importance)
            for name, w in weights.items():
                fit.add_(comps[name], alpha=w / total)
        return fit

    def unit_lineage(self) -> dict[str, npt.NDArray[np.int64]]:
        """Lineage of the current hidden units (copies).

        Returns
        -------
        dict of str to numpy.ndarray
            ``ids`` int64 (T, H), unique, never reused; ``parents`` int64
            (T, H, 2), parent ids (-1: none; one parent for preservation and
            mutation, two for crossover); ``generation`` int64 (T, H), 0 for
            units made at initialisation or by :meth:`reseed_tile`, else
            ``1 + max(parents' generations)``; ``birth`` int64 (T, H), the
            ``step`` of the apoptosis (or reseed, -1 if none was given) that
            made the unit, 0 at initialisation; ``next_id`` int64 (1,).
        """
        return {
            "ids": self._lineage_ids.copy(),
            "parents": self._lineage_parents.copy(),
            "generation": self._lineage_generation.copy(),
            "birth": self._lineage_birth.copy(),
            "next_id": np.array([self._next_unit_id], dtype=np.int64),
        }

    def _reset_units(self, t: int, step: int) -> None:
        """Fresh lineage (no parents) and empty fitness for every unit of tile ``t``."""
        H = self.tile_hidden
        self._lineage_ids[t] = np.arange(self._next_unit_id, self._next_unit_id + H)
        self._next_unit_id += H
        self._lineage_parents[t] = -1
        self._lineage_generation[t] = 0
        self._lineage_birth[t] = step
        with torch.no_grad():
            self.unit_importance[t] = 0.0
            self.unit_fitness_obs[t] = 0
            self.unit_act_mean[t] = 0.0
            self.unit_act_sq[t] = 0.0
            if self.unit_act_cross.shape[0] == self.num_tiles:
                self.unit_act_cross[t] = 0.0

    # ------------------------------------------------------------ regularisers

    def compute_ternary_loss(self) -> Tensor:
        """Unweighted ternary loss, 0-d float32: mean squared distance to {-1, 0, +1}."""
        return self._ternary(self._effective_signatures())

    def compute_sparsity_loss(self) -> Tensor:
        """Unweighted sparsity loss, 0-d float32: mean absolute signature value."""
        return self._sparsity(self._effective_signatures())

    def compute_diversity_loss(self) -> Tensor:
        """Unweighted diversity loss, 0-d float32: mean off-diagonal squared cosine."""
        return self._diversity(self._effective_signatures())

    # ------------------------------------------------------------ surgery

    @property
    def signatures(self) -> Tensor:
        """Effective signatures, float32 (T, d), a detached copy."""
        return self._effective_signatures().detach().clone()

    def insert_signature(
        self,
        tile_idx: int,
        signature: Tensor | npt.ArrayLike,
        freeze: bool = True,
        tag: str = "",
    ) -> None:
        """Write a designed signature into a tile.

        Parameters
        ----------
        tile_idx : int
            Tile, ``0 <= tile_idx < num_tiles``.
        signature : Tensor or array-like, shape (d_model,)
            Finite values; stored as float32 exactly.
        freeze : bool, default True
            Freeze the tile afterwards; ``False`` leaves it trainable (and
            unfreezes it if it was frozen).
        tag : str
            Free text recorded in the surgery history.

        Raises
        ------
        TileError
            Bad tile index or signature shape / values.
        """
        t = self._check_tile(tile_idx)
        sig = self._as_signature(signature)
        with torch.no_grad():
            self.signatures_raw[t].copy_(sig)
            if freeze:
                self.frozen_values[t].copy_(sig)
            self.frozen_mask[t] = bool(freeze)
        self._refresh_frozen_flag()
        self._record("insert", t, tag)

    def freeze_signature(self, tile_idx: int, *, tag: str = "") -> None:
        """Freeze a tile's current effective signature (no-op value-wise if frozen).

        ``tag`` is free text for the surgery history.
        """
        t = self._check_tile(tile_idx)
        with torch.no_grad():
            if not bool(self.frozen_mask[t]):
                self.frozen_values[t].copy_(self.signatures_raw[t])
                self.frozen_mask[t] = True
        self._refresh_frozen_flag()
        self._record("freeze", t, tag)

    def unfreeze_signature(self, tile_idx: int, *, tag: str = "") -> None:
        """Unfreeze a tile; its raw signature restarts from the frozen value.

        ``tag`` is free text for the surgery history.
        """
        t = self._check_tile(tile_idx)
        with torch.no_grad():
            if bool(self.frozen_mask[t]):
                self.signatures_raw[t].copy_(self.frozen_values[t])
                self.frozen_mask[t] = False
        self._refresh_frozen_flag()
        self._record("unfreeze", t, tag)

    def is_frozen(self, tile_idx: int) -> bool:
        """Whether tile ``tile_idx``'s signature is frozen."""
        return bool(self.frozen_mask[self._check_tile(tile_idx)])

    def reseed_tile(
        self,
        tile_idx: int,
        signature: Tensor | npt.ArrayLike | None = None,
        *,
        step: int | None = None,
        tag: str = "",
    ) -> None:
        """Re-initialise a tile: new expert weights and a new (unfrozen) signature.

        The expert is drawn from the module's init generator; the signature
        is ``signature`` if given, else random N(0, 0.5^2). The tile's usage
        count and claim counts are zeroed and its usage EMA set to the
        uniform share ``1 / num_tiles`` (a grace period before it can look
        dead again). Its hidden units are new: fresh lineage ids (no parents,
        generation 0, birth ``step``, -1 when not given) and zero fitness.
        Optimiser moments of the tile's parameters are not touched (see
        :func:`reset_optimizer_moments`). Recorded in the surgery history as
        ``"reseed"`` with ``tag``.
        """
        t = self._check_tile(tile_idx)
        birth = -1 if step is None else operator.index(step)
        sig = (
            self._random_signatures(1)[0].to(self.signatures_raw.device)
            if signature is None
            else self._as_signature(signature)
        )
        with torch.no_grad():
            self._init_expert(t)
            self.signatures_raw[t].copy_(sig)
            self.frozen_mask[t] = False
            self.usage_counts[t] = 0
            self.usage_ema[t] = 1.0 / self.num_tiles
            if self._claims.shape[1] > 0:
                self._claims[t] = 0
        self._reset_units(t, birth)
        self._refresh_frozen_flag()
        self._record("reseed", t, tag)

    def apoptosis(
        self,
        *,
        prune_rate: float,
        regrowth: str = "preservation",
        mutation_strength: float = 0.1,
        step: int,
        optimizer: torch.optim.Optimizer | None = None,
        seed: int | None = None,
        min_age: int = 0,
        min_observations: int = 1,
    ) -> dict[str, Any]:
        """Remove the least fit hidden units of each tile and regrow their slots.

        For every tile that is not frozen and has at least
        ``min_observations`` fitness observations, the
        ``k = min(floor(prune_rate * H), H - 1)`` units of lowest
        :meth:`unit_fitness` among those at least ``min_age`` steps old die
        (ties: lowest index). Each dead unit is first silenced (its ``w2`` row
        zeroed), then its slot ``c`` is refilled from parents drawn among the
        tile's survivors with probability proportional to fitness:

        * ``"preservation"`` (Net2Net split of one parent ``p``):
          ``w1[:, c] = w1[:, p]``, ``b1[c] = b1[p]``, then ``w2[p, :]`` is
          halved and copied to ``w2[c, :]``. Parent and child compute the same
          activation and share the parent's output, so the FFN's output equals
          that of the pruned network (up to float summation order). The two
          share the parent's importance (halved: ``dL/da`` halves with
          ``w2``) and its activity statistics.
        * ``"mutation"``: ``w1[:, c] = w1[:, p] + e``, ``b1[c] = b1[p] + e0``,
          ``e ~ N(0, (mutation_strength * rms(w1[:, p]))^2)``; ``w2[c, :] = 0``.
        * ``"crossover"``: two distinct parents ``p1, p2``,
          ``alpha ~ U(0.3, 0.7)``, ``w1[:, c] = alpha w1[:, p1] + (1 - alpha)
          w1[:, p2] + e`` (``b1`` likewise) with the "small" noise
          ``e ~ N(0, (0.5 * mutation_strength * rms(blend))^2)``;
          ``w2[c, :] = 0``. With a single survivor it falls back to mutation.

        Mutation and crossover children start with a zero output row, so the
        FFN's output is again that of the pruned network, whatever the noise:
        the change an apoptosis makes is bounded by the dead units'
        contributions. The child's ``w2`` row gets gradient at once
        (``a_c * dL/dy``) and its input weights follow as it grows. Their
        importance starts at the median of the tile's survivors (so they are
        not the obvious next victims), their activity statistics at the first
        parent's. Lineage: a new unique id, parent ids, generation
        ``1 + max(parents')``, birth ``step``.

        Parameters
        ----------
        prune_rate : float
            Largest fraction of each tile's units to remove, in [0, 1).
            Rounded down per tile: ``prune_rate < 1 / H`` removes nothing.
        regrowth : {"preservation", "mutation", "crossover"}, default "preservation"
        mutation_strength : float, default 0.1
            Noise relative to the parent's weight scale (>= 0).
        step : int
            The caller's step, stored as the birth step of the new units and
            in the history.
        optimizer : torch.optim.Optimizer, optional
            When given, its per-element state for the regrown slices of
            ``w1``, ``b1`` and ``w2`` (Adam's ``exp_avg``, ``exp_avg_sq``, ...)
            is zeroed in place (:func:`reset_optimizer_moments`); the
            parameter objects stay the same.
        seed : int, optional
            Seed of the draws (parents, noise, alpha). ``None``: the module's
            init generator (part of the state, so a restored module draws the
            same; it also feeds :meth:`reseed_tile`).
        min_age : int, default 0
            Units younger than this many steps (``step - birth``) are spared.
        min_observations : int, default 1
            Tiles with fewer fitness observations (backward passes with tokens)
            are skipped: their fitness says nothing yet.

        Returns
        -------
        dict
            ``op`` "apoptosis"; ``step``; ``strategy`` (as requested);
            ``died``, ``born`` (lists of unit ids, in birth order: ``born[i]``
            replaced ``died[i]``); ``parents`` (list of [id, id], -1 for
            none); ``tiles``, ``units`` (tile and slot of each birth);
            ``strategies`` (per birth: the one used); ``turnover`` dict:
            ``died``, ``born`` (counts), ``per_tile`` (list of T counts),
            ``fraction`` (of all units), ``frozen_skipped``,
            ``unobserved_skipped`` (lists of tiles); ``moments_reset`` (state
            tensors modified).

        Raises
        ------
        TileError
            Invalid arguments (nothing changed).
        """
        rate = float(prune_rate)
        if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
            raise TileError("prune_rate must be in [0, 1)", prune_rate=prune_rate)
        if regrowth not in REGROWTH_STRATEGIES:
            raise TileError(
                "regrowth must be one of " + ", ".join(REGROWTH_STRATEGIES), regrowth=regrowth
            )
        strength = _check_weight("mutation_strength", mutation_strength)
        for name, value in (
            ("step", step),
            ("min_age", min_age),
            ("min_observations", min_observations),
        ):
            if isinstance(value, bool):
                raise TileError(f"{name} must be an integer", **{name: value})
            try:
                operator.index(value)
            except TypeError as e:
                raise TileError(f"{name} must be an integer", **{name: value}) from e
        step_i = operator.index(step)
        age_min = operator.index(min_age)
        obs_min = operator.index(min_observations)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TileError("optimizer must be a torch.optim.Optimizer")
        gen = self._gen if seed is None else _make_generator(seed)
        T, H, d = self.num_tiles, self.tile_hidden, self.d_model
        k = min(math.floor(rate * H + 1e-9), H - 1)
        fit = self.unit_fitness().cpu()
        frozen = self.frozen_mask.cpu().numpy()
        obs = self.unit_fitness_obs.cpu().numpy()
        old_enough = (step_i - self._lineage_birth) >= age_min  # (T, H)
        has_cross = self.unit_act_cross.shape[0] == T
        dev = self.w1.device
        w1, b1, w2 = self.w1, self.b1, self.w2
        imp = self.unit_importance
        died: list[int] = []
        born: list[int] = []
        parents_out: list[list[int]] = []
        tiles_out: list[int] = []
        units_out: list[int] = []
        used: list[str] = []
        per_tile = [0] * T
        frozen_skipped: list[int] = []
        unobserved_skipped: list[int] = []
        with torch.no_grad():
            for t in range(T) if k > 0 else ():
                if frozen[t]:
                    frozen_skipped.append(t)
                    continue
                if obs[t] < obs_min:
                    unobserved_skipped.append(t)
                    continue
                f = fit[t]
                order = torch.argsort(f, stable=True).tolist()
                dead = [j for j in order if old_enough[t, j]][:k]
                if not dead:
                    continue
                dead_set = set(dead)
                survivors = [j for j in range(H) if j not in dead_set]
                surv = torch.tensor(survivors, dtype=torch.int64)
                pw = f[surv].double().clamp_min(0.0)
                pw = pw + 1e-6 * float(pw.max()) + 1e-12
                newborn_imp = float(imp[t, surv.to(dev)].median())
                w2[t, torch.tensor(dead, device=dev)] = 0.0  # silence the dead
                tile_died: list[int] = []
                tile_born: list[int] = []
                for c in dead:
                    strategy = regrowth
                    if strategy == "crossover" and len(survivors) < 2:
                        strategy = "mutation"
                    n_par = 2 if strategy == "crossover" else 1
                    pick = torch.multinomial(pw, n_par, replacement=False, generator=gen)
                    par = [survivors[i] for i in pick.tolist()]
                    p = par[0]
                    if strategy == "preservation":
                        w1[t, :, c] = w1[t, :, p]
                        b1[t, c] = b1[t, p]
                        w2[t, p].mul_(0.5)
                        w2[t, c] = w2[t, p]
                        imp[t, p] *= 0.5
                        imp[t, c] = imp[t, p]
                    else:
                        if strategy == "mutation":
                            base_w, base_b, rel = w1[t, :, p], b1[t, p], strength
                        else:
                            alpha = 0.3 + 0.4 * float(torch.rand((), generator=gen))
                            q = par[1]
                            base_w = alpha * w1[t, :, p] + (1.0 - alpha) * w1[t, :, q]
                            base_b = alpha * b1[t, p] + (1.0 - alpha) * b1[t, q]
                            rel = 0.5 * strength
                        scale = float(base_w.square().mean().sqrt())
                        if not (math.isfinite(scale) and scale > 0.0):
                            scale = 1.0 / math.sqrt(d)
                        noise = (torch.randn(d + 1, generator=gen) * (rel * scale)).to(dev)
                        w1[t, :, c] = base_w + noise[:d]
                        b1[t, c] = base_b + noise[d]
                        w2[t, c] = 0.0
                        imp[t, c] = newborn_imp
                    self.unit_act_mean[t, c] = self.unit_act_mean[t, p]
                    self.unit_act_sq[t, c] = self.unit_act_sq[t, p]
                    if has_cross:
                        cross = self.unit_act_cross[t]
                        cross[c, :] = cross[p, :]
                        cross[:, c] = cross[:, p]
                        cross[c, c] = cross[p, p]
                    # lineage
                    par_ids = [int(self._lineage_ids[t, j]) for j in par]
                    new_id = self._next_unit_id
                    self._next_unit_id += 1
                    tile_died.append(int(self._lineage_ids[t, c]))
                    tile_born.append(new_id)
                    self._lineage_ids[t, c] = new_id
                    pair = [*par_ids, -1][:2]
                    self._lineage_parents[t, c] = pair
                    self._lineage_generation[t, c] = 1 + max(
                        int(self._lineage_generation[t, j]) for j in par
                    )
                    self._lineage_birth[t, c] = step_i
                    parents_out.append(pair)
                    tiles_out.append(t)
                    units_out.append(c)
                    used.append(strategy)
                died.extend(tile_died)
                born.extend(tile_born)
                per_tile[t] = len(tile_died)
                self._record(
                    "apoptosis",
                    t,
                    regrowth,
                    agent_step=step_i,
                    died=tile_died,
                    born=tile_born,
                )
        moments = 0
        if optimizer is not None and tiles_out:
            tt = torch.tensor(tiles_out, dtype=torch.int64, device=dev)
            cc = torch.tensor(units_out, dtype=torch.int64, device=dev)
            moments += reset_optimizer_moments(optimizer, self.w1, (tt, slice(None), cc))
            moments += reset_optimizer_moments(optimizer, self.b1, (tt, cc))
            moments += reset_optimizer_moments(optimizer, self.w2, (tt, cc, slice(None)))
        return {
            "op": "apoptosis",
            "step": step_i,
            "strategy": regrowth,
            "died": died,
            "born": born,
            "parents": parents_out,
            "tiles": tiles_out,
            "units": units_out,
            "strategies": used,
            "turnover": {
                "died": len(died),
                "born": len(born),
                "per_tile": per_tile,
                "fraction": len(died) / (T * H),
                "frozen_skipped": frozen_skipped,
                "unobserved_skipped": unobserved_skipped,
            },
            "moments_reset": moments,
        }

    def get_signature_analysis(self, tile_idx: int) -> dict[str, Any]:
        """Describe a tile's effective signature.

        A dimension is positive when ``s > ANALYSIS_THRESHOLD`` (0.5),
        negative when ``s < -0.5``, zero otherwise (``|s| <= 0.5``).

        Returns
        -------
        dict
            ``tile_idx`` int, ``positive_dims`` list[int], ``negative_dims``
            list[int], ``zero_count`` int, ``frozen`` bool.
        """
        t = self._check_tile(tile_idx)
        s = self._effective_signatures()[t].detach().cpu().numpy()
        pos = np.flatnonzero(s > ANALYSIS_THRESHOLD)
        neg = np.flatnonzero(s < -ANALYSIS_THRESHOLD)
        return {
            "tile_idx": t,
            "positive_dims": [int(i) for i in pos],
            "negative_dims": [int(i) for i in neg],
            "zero_count": int(s.size - pos.size - neg.size),
            "frozen": bool(self.frozen_mask[t]),
        }

    def get_surgery_history(self) -> list[dict[str, Any]]:
        """Surgery operations, oldest first (copies): the newest
        :attr:`HISTORY_LIMIT` of them (``seq`` keeps counting, so a gap at the
        start shows what was dropped).

        Each entry: ``op`` ("insert", "freeze", "unfreeze", "reseed",
        "apoptosis"), ``tile_idx``, ``tag``, ``step`` (tracked forward calls
        so far), ``seq`` (running operation number), ``frozen`` (state after
        the op). Apoptosis entries (one per tile that changed, ``tag`` the
        strategy) add ``agent_step`` (the ``step`` given to
        :meth:`apoptosis`), ``died`` and ``born`` (lists of unit ids).
        """
        return [dict(h) for h in self._history]

    # ------------------------------------------------------------ claims

    def get_claim_rate(self, tile_idx: int, target_class: int) -> float:
        """Fraction of tracked tokens of ``target_class`` routed to ``tile_idx``.

        0.0 when the class has not been seen.
        """
        t = self._check_tile(tile_idx)
        try:
            c = operator.index(target_class)
        except TypeError as e:
            raise TileError("target_class must be an integer", target_class=target_class) from e
        if c < 0:
            raise TileError("target_class must be >= 0", target_class=c)
        if c >= self._claims.shape[1]:
            return 0.0
        col = self._claims[:, c]
        total = int(col.sum())
        return 0.0 if total == 0 else int(col[t]) / total

    def get_tile_purity(self, tile_idx: int) -> tuple[int, float]:
        """``(dominant_class, purity)`` of a tile's tracked traffic; ``(-1, 0.0)`` if unused.

        Purity is the fraction of the tile's labelled tokens that belong to
        its dominant class (ties go to the lowest class).
        """
        t = self._check_tile(tile_idx)
        if self._claims.shape[1] == 0:
            return -1, 0.0
        row = self._claims[t]
        total = int(row.sum())
        if total == 0:
            return -1, 0.0
        dom = int(row.argmax())
        return dom, int(row[dom]) / total

    def claim_counts(self) -> npt.NDArray[np.int64]:
        """Tracked claims, int64 (num_tiles, num_classes_seen), a copy."""
        return self._claims.cpu().numpy().copy()

    def reset_claim_tracking(self) -> None:
        """Forget all claim counts (and the classes seen)."""
        self._claims = torch.zeros(self.num_tiles, 0, dtype=torch.int64)

    # ------------------------------------------------------------ statistics

    def get_island_stats(self) -> dict[str, float]:
        """Statistics of the raw effective signatures (no rounding first).

        Returns
        -------
        dict of str to float
            ``ternary_fraction``: fraction of values within
            ``TERNARY_TOLERANCE`` (0.1) of -1, 0 or +1; ``sparsity``: fraction
            within 0.1 of 0; ``mean_pairwise_similarity``: mean ``|cos|`` over
            tile pairs ``i < j`` (0 for a single tile); ``diversity``:
            ``1 - mean_pairwise_similarity``.
        """
        s = self._effective_signatures().detach().double()
        near = (s - torch.round(s.clamp(-1.0, 1.0))).abs() <= TERNARY_TOLERANCE
        zero = s.abs() <= TERNARY_TOLERANCE
        T = s.shape[0]
        if T > 1:
            sn = F.normalize(s, dim=1, eps=1e-12)
            gram = (sn @ sn.t()).abs()
            iu = torch.triu_indices(T, T, 1, device=s.device)
            sim = float(gram[iu[0], iu[1]].mean())
        else:
            sim = 0.0
        return {
            "ternary_fraction": float(near.double().mean()),
            "sparsity": float(zero.double().mean()),
            "mean_pairwise_similarity": sim,
            "diversity": 1.0 - sim,
        }

    def get_routing_stats(self) -> dict[str, Any]:
        """Routing statistics since the last :meth:`reset_stats`.

        Returns
        -------
        dict
            ``num_tiles``, ``num_clusters``, ``active_tiles`` (tiles with at
            least one routed token), ``frozen_tiles``, ``total_tokens`` (int);
            ``usage`` (list of float, per-tile fraction of routed tokens, all
            0 before any token), ``usage_mean``, ``usage_std`` (population)
            of that list; ``usage_ema`` (list of float, see :meth:`tile_usage`).
        """
        counts = self.usage_counts.detach().cpu().numpy().astype(np.float64)
        total = float(counts.sum())
        usage = counts / total if total > 0 else np.zeros_like(counts)
        return {
            "num_tiles": self.num_tiles,
            "num_clusters": self.num_clusters,
            "active_tiles": int(np.count_nonzero(counts)),
            "frozen_tiles": int(self.frozen_mask.sum()),
            "total_tokens": int(total),
            "usage_mean": float(usage.mean()),
            "usage_std": float(usage.std()),
            "usage": [float(u) for u in usage],
            "usage_ema": [float(u) for u in self.tile_usage()],
        }

    def tile_usage(self) -> npt.NDArray[np.float64]:
        """Recent usage, float64 (num_tiles,): EMA of per-forward token fractions.

        Starts (and restarts after :meth:`reset_stats`) at ``1 / num_tiles``.
        """
        return self.usage_ema.detach().cpu().numpy().astype(np.float64)

    def reset_stats(self) -> None:
        """Reset usage counts, usage EMA and claim tracking."""
        with torch.no_grad():
            self.usage_counts.zero_()
            self.usage_ema.fill_(1.0 / self.num_tiles)
        self.reset_claim_tracking()

    # ------------------------------------------------------------ state

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Complete state as plain numpy arrays (copies, no pickle).

        Returns
        -------
        dict of str to numpy.ndarray
            Every entry of ``state_dict()`` under its own name (parameters
            float32, ``frozen_mask`` bool, ``usage_counts`` int64, ...), plus
            ``config`` int64 (7,) (d_model, num_tiles, tiles_per_cluster,
            grid_size, compress_hidden, tile_hidden, use_score_calibration);
            ``hyper`` float64 (7,) (dropout, the four loss weights,
            temperature, usage_decay); ``counters`` int64 (3,) (state version,
            tracked forward calls, surgery sequence number); ``claim_counts``
            int64 (num_tiles, classes); ``surgery_history`` uint8, UTF-8 JSON
            of :meth:`get_surgery_history`; ``rng_state`` uint8, the init
            generator's state (used by :meth:`reseed_tile`). Hidden-unit
            evolution: ``fitness_config`` float64 (6,) (track flag, decay,
            weights of importance, diversity, stability, energy);
            ``unit_importance``, ``unit_act_mean``, ``unit_act_sq`` float32
            (T, H); ``unit_act_cross`` float32 (T, H, H) or (0, H, H);
            ``unit_fitness_obs`` int64 (T,); ``lineage_ids``,
            ``lineage_generation``, ``lineage_birth`` int64 (T, H);
            ``lineage_parents`` int64 (T, H, 2); ``lineage_next`` int64 (1,).
        """
        state: dict[str, npt.NDArray[Any]] = {
            k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()
        }
        state["config"] = np.array([self._config()[k] for k in _CONFIG_KEYS], dtype=np.int64)
        state["hyper"] = np.array([getattr(self, k) for k in _HYPER_KEYS], dtype=np.float64)
        state["counters"] = np.array(
            [_STATE_VERSION, self._forward_calls, self._history_seq], dtype=np.int64
        )
        state["claim_counts"] = self.claim_counts()
        state["surgery_history"] = np.frombuffer(
            json.dumps(self._history).encode("utf-8"), dtype=np.uint8
        ).copy()
        state["rng_state"] = self._gen.get_state().numpy().copy()
        w = self.fitness_weights
        state["fitness_config"] = np.array(
            [float(self.track_fitness), self.fitness_decay, *(w[k] for k in _FITNESS_NAMES)],
            dtype=np.float64,
        )
        for key in (
            "unit_importance",
            "unit_fitness_obs",
            "unit_act_mean",
            "unit_act_sq",
            "unit_act_cross",
        ):
            state[key] = getattr(self, key).detach().cpu().numpy().copy()
        state["lineage_ids"] = self._lineage_ids.copy()
        state["lineage_parents"] = self._lineage_parents.copy()
        state["lineage_generation"] = self._lineage_generation.copy()
        state["lineage_birth"] = self._lineage_birth.copy()
        state["lineage_next"] = np.array([self._next_unit_id], dtype=np.int64)
        return state

    def _config(self) -> dict[str, int]:
        return {
            "d_model": self.d_model,
            "num_tiles": self.num_tiles,
            "tiles_per_cluster": self.tiles_per_cluster,
            "grid_size": self.grid_size,
            "compress_hidden": self.compress_hidden,
            "tile_hidden": self.tile_hidden,
            "use_score_calibration": int(self.use_score_calibration),
            "input_norm": int(self.input_norm),
        }

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore a state produced by :meth:`get_state`, exactly.

        The configuration must match this instance; hyper-parameters (loss
        weights, dropout, temperature, usage decay) are taken from the state.
        Parameters are copied in place, so optimisers built on this module
        stay attached.

        A state without the hidden-unit evolution entries (written before
        they existed) restores fresh lineage and empty fitness and keeps this
        instance's fitness configuration.

        Raises
        ------
        StateError
            Missing keys, wrong shapes or dtypes, non-finite parameters,
            inconsistent values. The instance is left unchanged.
        """
        own = self.state_dict()
        missing = [k for k in (*own.keys(), *_EXTRA_KEYS) if k not in state]
        if missing:
            raise StateError("tile state is missing keys", missing=missing)
        config = np.asarray(state["config"])
        expected = np.array([self._config()[k] for k in _CONFIG_KEYS], dtype=np.int64)
        if config.shape != expected.shape or not np.array_equal(config, expected):
            raise StateError(
                "tile state belongs to another configuration",
                expected=expected.tolist(),
                got=config.tolist(),
            )
        tensors: dict[str, Tensor] = {}
        for key, ref in own.items():
            arr = np.asarray(state[key])
            if tuple(arr.shape) != tuple(ref.shape):
                raise StateError(
                    "tile state array has wrong shape",
                    array=key,
                    shape=arr.shape,
                    expected=tuple(ref.shape),
                )
            want = torch.empty((), dtype=ref.dtype).numpy().dtype
            if arr.dtype.kind != want.kind:
                raise StateError(
                    "tile state array has wrong dtype", array=key, dtype=str(arr.dtype)
                )
            arr = np.ascontiguousarray(arr, dtype=want)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise StateError("tile state array has non-finite values", array=key)
            tensors[key] = torch.from_numpy(arr.copy())
        hyper = np.asarray(state["hyper"], dtype=np.float64)
        if hyper.shape != (len(_HYPER_KEYS),):
            raise StateError("tile state 'hyper' has wrong shape", shape=hyper.shape)
        counters = np.asarray(state["counters"])
        if counters.shape != (3,) or counters.dtype.kind not in "iu":
            raise StateError("tile state 'counters' must be int64 (3,)", shape=counters.shape)
        if int(counters[0]) != _STATE_VERSION or int(counters[1]) < 0 or int(counters[2]) < 0:
            raise StateError("tile state counters are invalid", counters=counters.tolist())
        claims = np.asarray(state["claim_counts"])
        if (
            claims.ndim != 2
            or claims.shape[0] != self.num_tiles
            or claims.dtype.kind not in "iu"
            or (claims.size and int(claims.min()) < 0)
        ):
            raise StateError("tile state 'claim_counts' is invalid", shape=claims.shape)
        raw_hist = np.asarray(state["surgery_history"])
        if raw_hist.dtype != np.uint8 or raw_hist.ndim != 1:
            raise StateError("tile state 'surgery_history' must be uint8 (n,)")
        try:
            history = json.loads(raw_hist.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StateError("tile state 'surgery_history' is not UTF-8 JSON") from e
        if not isinstance(history, list) or not all(
            isinstance(h, dict) and {"op", "tile_idx", "tag", "step", "seq"} <= h.keys()
            for h in history
        ):
            raise StateError("tile state 'surgery_history' has the wrong structure")
        rng = np.asarray(state["rng_state"])
        gen = torch.Generator()
        try:
            gen.set_state(torch.from_numpy(np.ascontiguousarray(rng, dtype=np.uint8)).clone())
        except (RuntimeError, ValueError, TypeError) as e:
            raise StateError("tile state 'rng_state' is invalid") from e
        evolution = self._evolution_from_state(state)
        try:
            self._set_hyper(**{k: float(v) for k, v in zip(_HYPER_KEYS, hyper, strict=True)})
        except TileError as e:
            raise StateError("tile state hyper-parameters are invalid", reason=str(e)) from e

        # commit
        self._commit_evolution(evolution)
        self.load_state_dict(tensors, strict=True)
        self._claims = torch.from_numpy(np.ascontiguousarray(claims, dtype=np.int64).copy()).to(
            self.usage_counts.device
        )
        self._history = [dict(h) for h in history]
        self._forward_calls = int(counters[1])
        self._history_seq = int(counters[2])
        self._gen = gen
        self._refresh_frozen_flag()

    def _evolution_from_state(self, state: Mapping[str, npt.ArrayLike]) -> dict[str, Any] | None:
        """Validated evolution entries of ``state`` (None when it has none)."""
        present = [k for k in _EVOLUTION_KEYS if k in state]
        if not present:
            return None
        missing = [k for k in _EVOLUTION_KEYS if k not in state]
        if missing:
            raise StateError("tile state is missing keys", missing=missing)
        T, H = self.num_tiles, self.tile_hidden

        def arr(key: str, shapes: tuple[tuple[int, ...], ...], kind: str) -> npt.NDArray[Any]:
            a = np.asarray(state[key])
            if tuple(a.shape) not in shapes or a.dtype.kind not in kind:
                raise StateError(
                    "tile state array has wrong shape or dtype",
                    array=key,
                    shape=a.shape,
                    dtype=str(a.dtype),
                )
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise StateError("tile state array has non-finite values", array=key)
            return a

        cfg = arr("fitness_config", ((2 + len(_FITNESS_NAMES),),), "f")
        weights = {k: float(v) for k, v in zip(_FITNESS_NAMES, cfg[2:], strict=True)}
        if (
            cfg[0] not in (0.0, 1.0)
            or not 0.0 <= cfg[1] < 1.0
            or min(weights.values()) < 0.0
            or sum(weights.values()) <= 0.0
        ):
            raise StateError("tile state 'fitness_config' is invalid", value=cfg.tolist())
        out: dict[str, Any] = {
            "track": bool(cfg[0]),
            "decay": float(cfg[1]),
            "weights": weights,
        }
        for key in ("unit_importance", "unit_act_mean", "unit_act_sq"):
            out[key] = np.ascontiguousarray(arr(key, ((T, H),), "f"), dtype=np.float32)
        out["unit_act_cross"] = np.ascontiguousarray(
            arr("unit_act_cross", ((T, H, H), (0, H, H)), "f"), dtype=np.float32
        )
        ints = {
            "unit_fitness_obs": ((T,),),
            "lineage_ids": ((T, H),),
            "lineage_parents": ((T, H, 2),),
            "lineage_generation": ((T, H),),
            "lineage_birth": ((T, H),),
            "lineage_next": ((1,),),
        }
        for key, shapes in ints.items():
            out[key] = np.ascontiguousarray(arr(key, shapes, "iu"), dtype=np.int64)
        ids, nxt = out["lineage_ids"], int(out["lineage_next"][0])
        parents = out["lineage_parents"]
        if (
            int(out["unit_fitness_obs"].min()) < 0
            or int(ids.min()) < 0
            or int(ids.max()) >= nxt
            or np.unique(ids).size != ids.size
            or int(parents.min()) < -1
            or int(parents.max()) >= nxt
            or int(out["lineage_generation"].min()) < 0
            or int(out["lineage_birth"].min()) < -1
        ):
            raise StateError("tile state lineage or fitness counters are inconsistent")
        return out

    def _commit_evolution(self, evo: dict[str, Any] | None) -> None:
        T, H = self.num_tiles, self.tile_hidden
        with torch.no_grad():
            if evo is None:
                for buf in (self.unit_importance, self.unit_act_mean, self.unit_act_sq):
                    buf.zero_()
                self.unit_fitness_obs.zero_()
                self.unit_act_cross.zero_()
                self._lineage_ids = np.arange(T * H, dtype=np.int64).reshape(T, H)
                self._lineage_parents = np.full((T, H, 2), -1, dtype=np.int64)
                self._lineage_generation = np.zeros((T, H), dtype=np.int64)
                self._lineage_birth = np.zeros((T, H), dtype=np.int64)
                self._next_unit_id = T * H
                return
            self.track_fitness = evo["track"]
            self.fitness_decay = evo["decay"]
            self.fitness_weights = dict(evo["weights"])
            for key in ("unit_importance", "unit_act_mean", "unit_act_sq", "unit_fitness_obs"):
                target: Tensor = getattr(self, key)
                target.copy_(torch.from_numpy(evo[key]))
            self.unit_act_cross = torch.from_numpy(evo["unit_act_cross"].copy()).to(
                self.unit_importance.device
            )
            if self.fitness_weights["diversity"] > 0.0 and self.unit_act_cross.shape[0] != T:
                self.unit_act_cross = self.unit_importance.new_zeros(T, H, H)
            self._lineage_ids = evo["lineage_ids"].copy()
            self._lineage_parents = evo["lineage_parents"].copy()
            self._lineage_generation = evo["lineage_generation"].copy()
            self._lineage_birth = evo["lineage_birth"].copy()
            self._next_unit_id = int(evo["lineage_next"][0])

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_tiles={self.num_tiles}, "
            f"tiles_per_cluster={self.tiles_per_cluster}, tile_hidden={self.tile_hidden}, "
            f"compress_hidden={self.compress_hidden}, grid_size={self.grid_size}"
        )


# ----------------------------------------------------------------------------
# transformer block
# ----------------------------------------------------------------------------


class SparseLookupBlockV2(nn.Module):
    """Pre-norm transformer block whose FFN is a :class:`SparseLookupFFNv2`.

    ``h = x + dropout(Attn(LayerNorm(x)))``, then ``out = ffn(h)``. The FFN
    carries its own LayerNorm and residual (``ffn(h) = h + gate * tile(LN(h))``),
    so the second half is the usual ``LayerNorm -> FFN -> residual``; the
    second LayerNorm's parameters are ``block.ffn.norm_weight`` / ``norm_bias``.
    Attention is multi-head self-attention through
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Parameters
    ----------
    d_model : int, default 128
    n_heads : int, default 4
        Must divide ``d_model``.
    num_tiles, tiles_per_cluster, grid_size, compress_hidden, dropout,
    use_score_calibration, ternary_weight, sparsity_weight, diversity_weight,
    balance_weight, tile_hidden, temperature :
        As for :class:`SparseLookupFFNv2`; ``dropout`` also applies to the
        attention weights and output (training mode only).
    seed : int, optional
        Seeds the attention initialisation and (derived) the FFN's.

    Attributes
    ----------
    ffn : SparseLookupFFNv2
        The tile FFN, with the surgery API.
    """

    def __init__(
        self,
        d_model: int = 128,
        n_heads: int = 4,
        num_tiles: int = 64,
        tiles_per_cluster: int = 8,
        grid_size: int = 16,
        compress_hidden: int | None = None,
        dropout: float = 0.1,
        use_score_calibration: bool = True,
        ternary_weight: float = 0.01,
        sparsity_weight: float = 0.01,
        diversity_weight: float = 0.01,
        balance_weight: float = 0.01,
        tile_hidden: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        d = _check_positive_int("d_model", d_model)
        h = _check_positive_int("n_heads", n_heads)
        if d % h != 0:
            raise TileError("n_heads must divide d_model", d_model=d, n_heads=h)
        self.d_model = d
        self.n_heads = h
        gen = _make_generator(seed)
        bound = 1.0 / math.sqrt(d)
        self.ln1_weight = nn.Parameter(torch.ones(d))
        self.ln1_bias = nn.Parameter(torch.zeros(d))
        self.qkv_weight = nn.Parameter(_uniform((3 * d, d), bound, gen))
        self.qkv_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_weight = nn.Parameter(_uniform((d, d), bound, gen))
        self.out_bias = nn.Parameter(torch.zeros(d))
        ffn_seed = None if seed is None else int(torch.randint(0, 2**62, (1,), generator=gen))
        self.ffn = SparseLookupFFNv2(
            d_model=d,
            num_tiles=num_tiles,
            tiles_per_cluster=tiles_per_cluster,
            grid_size=grid_size,
            compress_hidden=compress_hidden,
            dropout=dropout,
            use_score_calibration=use_score_calibration,
            ternary_weight=ternary_weight,
            sparsity_weight=sparsity_weight,
            diversity_weight=diversity_weight,
            balance_weight=balance_weight,
            tile_hidden=tile_hidden,
            temperature=temperature,
            seed=ffn_seed,
        )

    def forward(
        self, x: Tensor, is_causal: bool = True, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Attention then tile FFN.

        Parameters
        ----------
        x : Tensor, float32 (B, L, d) or (L, d)
            Sequences (a 2-D input is one sequence).
        is_causal : bool, default True
            Causal attention mask.
        labels : Tensor, integer, shape ``x.shape[:-1]``, optional
            Passed to the FFN for claim tracking.

        Returns
        -------
        output : Tensor, same shape as ``x``
        routing_info, aux_losses : dict of str to Tensor
            From the FFN (routing entries have shape ``x.shape[:-1]``).
        """
        d = self.d_model
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise TileError(
                "x must have shape (B, L, d_model) or (L, d_model)",
                shape=tuple(x.shape),
                d_model=d,
            )
        x3 = x if x.dim() == 3 else x.unsqueeze(0)
        B, L, _ = x3.shape
        hd = d // self.n_heads
        p = self.ffn.dropout if self.training else 0.0
        hn = F.layer_norm(x3, (d,), self.ln1_weight, self.ln1_bias)
        qkv = F.linear(hn, self.qkv_weight, self.qkv_bias).view(B, L, 3, self.n_heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)
        att = att.transpose(1, 2).reshape(B, L, d)
        proj = F.linear(att, self.out_weight, self.out_bias)
        if p > 0.0:
            proj = F.dropout(proj, p, True)
        h = (x3 + proj).view(x.shape)
        return self.ffn.forward(h, labels)

    _ATTN_PARAMS = ("ln1_weight", "ln1_bias", "qkv_weight", "qkv_bias", "out_weight", "out_bias")

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Complete state as plain numpy arrays: the attention parameters
        (float32, under their own names) and the FFN's
        :meth:`SparseLookupFFNv2.get_state` entries prefixed with ``"ffn."``."""
        state: dict[str, npt.NDArray[Any]] = {
            name: getattr(self, name).detach().cpu().numpy().copy() for name in self._ATTN_PARAMS
        }
        for key, value in self.ffn.get_state().items():
            state["ffn." + key] = value
        return state

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore a state produced by :meth:`get_state`, exactly.

        Raises
        ------
        StateError
            Missing keys, wrong shapes, non-finite values, or an FFN state
            that does not fit (see :meth:`SparseLookupFFNv2.set_state`). The
            block is left unchanged.
        """
        arrays: dict[str, Tensor] = {}
        for name in self._ATTN_PARAMS:
            if name not in state:
                raise StateError("block state is missing keys", missing=[name])
            ref: Tensor = getattr(self, name)
            arr = np.asarray(state[name])
            if tuple(arr.shape) != tuple(ref.shape) or arr.dtype.kind != "f":
                raise StateError(
                    "block state array has wrong shape or dtype",
                    array=name,
                    shape=arr.shape,
                    expected=tuple(ref.shape),
                )
            if not np.all(np.isfinite(arr)):
                raise StateError("block state array has non-finite values", array=name)
            arrays[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).copy())
        self.ffn.set_state({k[4:]: v for k, v in state.items() if k.startswith("ffn.")})
        with torch.no_grad():
            for name, value in arrays.items():
                getattr(self, name).copy_(value)
