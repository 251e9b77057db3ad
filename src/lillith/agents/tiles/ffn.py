"""The tile FFN as a whole: :class:`SparseLookupFFNv2`.

It is built up in layers, one module each, every class adding to the one
below: :mod:`.base` (parameters, buffers, configuration), :mod:`.fitness`
(hidden-unit fitness and lineage), :mod:`.stats` (usage, claims, analysis),
:mod:`.model` (forward, inference, routing), :mod:`.surgery_ops` (insert,
freeze, reseed), :mod:`.apoptosis` (hidden-unit death and regrowth) and
:mod:`.state` (the state round-trip). The modules are not thread-safe: one
owner (the agent's worker) mutates them.
"""

from __future__ import annotations

from lillith.agents.tiles.state import TileState


class SparseLookupFFNv2(TileState):
    """Hierarchically routed top-1 tile FFN with signature surgery and regularisers.

    See :mod:`lillith.agents.tiles.model` for the equations. Call it as
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

