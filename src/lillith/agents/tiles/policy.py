"""Tile surgery policy: reseed dead tiles, freeze stable pure ones, unfreeze failing ones.

:class:`~lillith.agents.tiles.SparseLookupFFNv2` has a surgery API (insert,
freeze, unfreeze, reseed) and claim tracking, but leaves *when* to operate to
its user. :class:`TileSurgeryPolicy` decides, from what the agent
saw recently, and performs the operations through that API, so every one of
them lands in the FFN's surgery history; :meth:`TileSurgeryPolicy.run` also
returns them for the caller's log.

One run, in this order:

1. **Unfreeze.** A frozen tile whose recent tokens have a mean error more than
   ``unfreeze_error_ratio`` times the overall mean error (with at least
   ``unfreeze_min_tokens`` tokens routed to it) is unfrozen: its fixed
   address now attracts inputs it serves badly, so routing may move it.
2. **Freeze.** A tile is *pure* in a run when at least ``freeze_min_claims``
   recent tokens reached it and at least ``freeze_purity`` of them belong to
   its own group; it is *stable* after ``stable_rounds`` consecutive pure
   runs whose groups overlap; then it is frozen (unless its error ratio
   would unfreeze it at once, or it was unfrozen in this run). With labels
   (the FFN tracks claims, ``forward(x, labels=...)``) a tile's group is its
   dominant class among the claims added since the previous run (the purity
   of :meth:`~lillith.agents.tiles.SparseLookupFFNv2.get_tile_purity`).
   Without labels the groups come from clusters ("cells") of the recent
   inputs: k-means centroids kept by the policy and refined by a few Lloyd
   iterations each run, warm-started from the previous run's, so cell
   ``j`` stays the same region of input space from run to run
   (re-clustering from scratch would renumber the cells and no assignment
   could ever look stable). A cell belongs to the tile that receives most of
   its tokens, and a tile's group is the set of cells it owns: its purity is
   the share of its tokens from cells it owns. A tile claiming whole regions
   of input space is pure however many cells the k-means cut its region
   into (the number of cells cannot match the unknown number of natural
   clusters); a tile living on scraps of regions other tiles dominate is not.
3. **Reseed.** An unfrozen tile whose usage EMA is below ``dead_usage`` times
   the uniform share ``1 / num_tiles`` is dead. It is reseeded
   (:meth:`~lillith.agents.tiles.SparseLookupFFNv2.reseed_tile`: new expert,
   fresh lineage) with a signature aimed at the inputs the live tiles serve
   worst. Routing matches signatures against the routing *codes* of the
   inputs, and the chosen tile's output is gated by a spline of that cosine,
   so an input whose best cosine to any live signature is low is one the
   network serves badly. The ``underserved_fraction`` of recent inputs with
   the lowest best cosine (at least one per dead tile) are grouped by a
   spherical k-means on their codes (k = number of dead tiles, k-means++
   start, ``kmeans_iters`` iterations, each input weighted by its error so
   the badly predicted part of the under-served set pulls the centroids).
   That costs ``O(N d k)`` per iteration on a few hundred inputs, nothing
   next to a training step. Each centroid direction, scaled to the median
   norm of the live signatures (routing logits are dot products, so the
   norm matters), goes to the dead tile that would capture most of the
   centroid's inputs under the FFN's hierarchical routing (greedy over
   tile/centroid pairs, simulated exactly with the new signature in place).
   Dead tiles beyond the number of under-served inputs get random
   signatures, as do all dead tiles when no recent inputs are given.

Frozen tiles are never reseeded: a frozen signature is a decision (the
policy's or the user's through :meth:`TileSurgeryPolicy.insert`) that only
the error test undoes.

Randomness comes only from the policy's own generator (``seed``); the policy
state (stability counters, input-cluster centroids, the claim counts seen at
the previous run, the generator) round-trips through
:meth:`TileSurgeryPolicy.get_state` / :meth:`TileSurgeryPolicy.set_state`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.tiles.common import TileError, reset_optimizer_moments
from lillith.agents.tiles.ffn import SparseLookupFFNv2
from lillith.errors import StateError

__all__ = ["SurgeryError", "TileSurgeryPolicy"]

_STATE_VERSION = 1
_STATE_KEYS = ("counters", "stable", "groups", "centroids", "last_claims", "rng_state")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class SurgeryError(TileError):
    """Invalid surgery-policy configuration or input."""


def _fraction(name: str, value: float, *, closed_low: bool = True) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v >= 0.0 if closed_low else v > 0.0) and v <= 1.0
    if not ok:
        raise SurgeryError(f"{name} must be in {'[' if closed_low else '('}0, 1]", **{name: value})
    return v


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool):
        raise SurgeryError(f"{name} must be an integer", **{name: value})
    try:
        v = operator.index(value)
    except TypeError as e:
        raise SurgeryError(f"{name} must be an integer", **{name: value}) from e
    if v < minimum:
        raise SurgeryError(f"{name} must be >= {minimum}", **{name: v})
    return v


def _hierarchical_route(codes: F64, sigs: F64, tiles_per_cluster: int) -> I64:
    """Top-1 tile of each code under the FFN's hierarchical routing, int64 (n,).

    Same rule as :meth:`SparseLookupFFNv2.forward` (cluster by the mean logit
    of its tiles, then the best tile inside it); the positive logit scale
    does not change an argmax, so it is left out.
    """
    n = codes.shape[0]
    K = tiles_per_cluster
    z = (codes @ sigs.T).reshape(n, -1, K)
    cl = z.mean(-1).argmax(-1)
    inner = z[np.arange(n), cl].argmax(-1)
    out: I64 = (cl * K + inner).astype(np.int64)
    return out


def _unit_rows(a: F64) -> F64:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    out: F64 = a / np.maximum(norms, 1e-12)
    return out


class TileSurgeryPolicy:
    """Decide and perform tile surgery on a :class:`SparseLookupFFNv2`.

    See the module docstring for the rules. All parameters are keyword-only.

    Parameters
    ----------
    dead_usage : float, default 0.05
        A tile is dead when its usage EMA is below ``dead_usage / num_tiles``
        (a fraction of the uniform share), in [0, 1].
    freeze_purity : float, default 0.9
        Minimum share of a tile's recent tokens from its own group, in (0, 1].
    freeze_min_claims : int, default 32
        Minimum recent tokens (labelled tokens with labels) of a tile for a
        pure run, >= 1.
    stable_rounds : int, default 3
        Consecutive pure runs with overlapping groups before freezing, >= 1.
    unfreeze_error_ratio : float, default 2.0
        A frozen tile is unfrozen when the mean error of its recent tokens
        over the overall mean error exceeds this (> 0).
    unfreeze_min_tokens : int, default 8
        Recent tokens a tile needs before its error ratio is trusted, >= 1.
    underserved_fraction : float, default 0.25
        Share of the recent inputs (lowest best cosine) that a reseed aims at, in (0, 1].
    n_input_clusters : int, optional
        Input clusters for label-free stability; default ``num_tiles`` (at
        most the number of inputs of the first run). Fixed at the first run.
    kmeans_iters : int, default 5
        Lloyd iterations per k-means (>= 1).
    seed : int, default 0
        Seed of the policy's generator (k-means starts).

    Raises
    ------
    SurgeryError
        Invalid parameter.
    """

    def __init__(
        self,
        *,
        dead_usage: float = 0.05,
        freeze_purity: float = 0.9,
        freeze_min_claims: int = 32,
        stable_rounds: int = 3,
        unfreeze_error_ratio: float = 2.0,
        unfreeze_min_tokens: int = 8,
        underserved_fraction: float = 0.25,
        n_input_clusters: int | None = None,
        kmeans_iters: int = 5,
        seed: int = 0,
    ) -> None:
        self.dead_usage = _fraction("dead_usage", dead_usage)
        self.freeze_purity = _fraction("freeze_purity", freeze_purity, closed_low=False)
        self.freeze_min_claims = _count("freeze_min_claims", freeze_min_claims, 1)
        self.stable_rounds = _count("stable_rounds", stable_rounds, 1)
        ratio = float(unfreeze_error_ratio)
        if not (math.isfinite(ratio) and ratio > 0.0):
            raise SurgeryError(
                "unfreeze_error_ratio must be finite and > 0",
                unfreeze_error_ratio=unfreeze_error_ratio,
            )
        self.unfreeze_error_ratio = ratio
        self.unfreeze_min_tokens = _count("unfreeze_min_tokens", unfreeze_min_tokens, 1)
        self.underserved_fraction = _fraction(
            "underserved_fraction", underserved_fraction, closed_low=False
        )
        self.n_input_clusters = (
            None if n_input_clusters is None else _count("n_input_clusters", n_input_clusters, 1)
        )
        self.kmeans_iters = _count("kmeans_iters", kmeans_iters, 1)
        self.seed = _count("seed", seed, 0)
        self._gen = torch.Generator().manual_seed(self.seed % (2**63))
        self._runs = 0
        self._stable: I64 = np.zeros(0, dtype=np.int64)
        self._group_sets: npt.NDArray[np.bool_] = np.zeros((0, 0), dtype=np.bool_)
        self._centroids: F32 = np.zeros((0, 0), dtype=np.float32)
        self._last_claims: I64 = np.zeros((0, 0), dtype=np.int64)

    # ------------------------------------------------------------------ helpers

    def _bind(self, ffn: SparseLookupFFNv2) -> None:
        """Size the per-tile counters for ``ffn`` (first run or another tile count)."""
        T = ffn.num_tiles
        if self._stable.shape != (T,):
            self._stable = np.zeros(T, dtype=np.int64)
            self._group_sets = np.zeros((0, 0), dtype=np.bool_)
            self._last_claims = np.zeros((0, 0), dtype=np.int64)
        if self._centroids.size and self._centroids.shape[1] != ffn.d_model:
            self._centroids = np.zeros((0, 0), dtype=np.float32)

    def _forget(self, t: int) -> None:
        self._stable[t] = 0
        if self._group_sets.shape[0] > t:
            self._group_sets[t] = False

    def _rand_index(self, probs: F64) -> int:
        p = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float64))
        return int(torch.multinomial(p, 1, generator=self._gen))

    def _kmeans_pp(self, X: F64, k: int, weights: F64) -> F64:
        """k-means++ start: ``k`` rows of ``X`` (weighted D^2 sampling from the generator)."""
        n = X.shape[0]
        first = self._rand_index(weights / weights.sum() if weights.sum() > 0 else np.ones(n))
        centres = [X[first]]
        d2 = np.square(X - X[first]).sum(1)
        for _ in range(1, k):
            p = d2 * weights
            if not p.sum() > 0.0:
                p = np.ones(n)
            j = self._rand_index(p / p.sum())
            centres.append(X[j])
            d2 = np.minimum(d2, np.square(X - X[j]).sum(1))
        return np.stack(centres)

    @staticmethod
    def _nearest(X: F64, C: F64) -> I64:
        d2 = np.square(X).sum(1)[:, None] - 2.0 * X @ C.T + np.square(C).sum(1)[None, :]
        out: I64 = d2.argmin(1).astype(np.int64)
        return out

    def _lloyd(self, X: F64, C: F64, weights: F64, *, spherical: bool) -> tuple[F64, I64]:
        """``kmeans_iters`` weighted Lloyd iterations; empty clusters stay put."""
        C = C.copy()
        for _ in range(self.kmeans_iters):
            lab = self._nearest(X, C) if not spherical else (X @ C.T).argmax(1).astype(np.int64)
            k = C.shape[0]
            wsum = np.bincount(lab, weights=weights, minlength=k)
            sums = np.zeros_like(C)
            np.add.at(sums, lab, X * weights[:, None])
            filled = wsum > 0
            C[filled] = sums[filled] / wsum[filled, None]
            if spherical:
                C = _unit_rows(C)
        lab = self._nearest(X, C) if not spherical else (X @ C.T).argmax(1).astype(np.int64)
        return C, lab

    def _input_clusters(self, X: F64) -> I64:
        """Refine the persistent input-cluster centroids on ``X``; cluster of each row."""
        if self._centroids.shape[0] == 0:
            k = min(self.n_input_clusters or len(self._stable), X.shape[0])
            start = self._kmeans_pp(X, max(k, 1), np.ones(X.shape[0]))
        else:
            start = self._centroids.astype(np.float64)
        C, lab = self._lloyd(X, start, np.ones(X.shape[0]), spherical=False)
        self._centroids = C.astype(np.float32)
        return lab

    def _groups(
        self, ffn: SparseLookupFFNv2, X: F64, tiles: I64
    ) -> tuple[str, npt.NDArray[np.bool_], F64, I64] | None:
        """Per tile: (kind, group set (T, G), purity, recent count), or None without evidence."""
        T = ffn.num_tiles
        claims = ffn.claim_counts()
        if claims.shape[1] > 0 and int(claims.sum()) > 0:
            last = self._last_claims
            table = claims
            if last.shape[0] == T and last.shape[1] <= claims.shape[1]:
                prev = np.zeros_like(claims)
                prev[:, : last.shape[1]] = last
                if np.all(claims >= prev):
                    table = claims - prev
            self._last_claims = claims.copy()
            totals = table.sum(1)
            dom = table.argmax(1)
            sets = np.zeros(table.shape, dtype=np.bool_)
            sets[np.arange(T), dom] = True
            kept = table[np.arange(T), dom]
            kind = "labels"
        elif X.shape[0] > 0:
            lab = self._input_clusters(X)
            table = np.zeros((T, self._centroids.shape[0]), dtype=np.int64)
            np.add.at(table, (tiles, lab), 1)
            totals = table.sum(1)
            owner = table.argmax(0)  # the tile that receives most of each cell
            sets = (np.arange(T)[:, None] == owner[None, :]) & (table > 0)
            kept = (table * sets).sum(1)
            kind = "input_clusters"
        else:
            return None
        purity = np.where(totals > 0, kept / np.maximum(totals, 1), 0.0)
        return kind, sets, purity.astype(np.float64), totals.astype(np.int64)

    def _reseed_signatures(
        self,
        ffn: SparseLookupFFNv2,
        dead: list[int],
        codes: F64,
        errors: F64,
    ) -> list[tuple[int, F32 | None, dict[str, Any]]]:
        """Signature (or None: random) and facts for each dead tile."""
        T = ffn.num_tiles
        N = codes.shape[0]
        if N == 0:
            return [(t, None, {"reason": "dead; no recent inputs: random signature"}) for t in dead]
        sigs = ffn.signatures.cpu().numpy().astype(np.float64)
        dead_set = set(dead)
        live = [t for t in range(T) if t not in dead_set]
        cn = _unit_rows(codes)
        ref = sigs[live] if live else sigs
        best = (cn @ _unit_rows(ref).T).max(1)  # (N,) best cosine to a live signature
        m = len(dead)
        n_u = min(N, max(m, math.ceil(self.underserved_fraction * N)))
        under = np.argsort(best, kind="stable")[:n_u]
        k = min(m, n_u)
        Xu = cn[under]
        w = errors[under]
        w = w + 1e-12 if w.sum() > 0 else np.ones(n_u)
        start = _unit_rows(self._kmeans_pp(Xu, k, w))
        cent, lab = self._lloyd(Xu, start, w, spherical=True)
        norm = float(np.median(np.linalg.norm(ref, axis=1)))
        if not (math.isfinite(norm) and norm > 0.0):
            norm = 0.5 * math.sqrt(ffn.d_model)
        members = [codes[under[lab == j]] for j in range(k)]
        out: list[tuple[int, F32 | None, dict[str, Any]]] = []
        todo_t, todo_c = list(dead), [j for j in range(k) if members[j].shape[0] > 0]
        cur = sigs.copy()
        while todo_t and todo_c:
            best_pair = (-1.0, todo_t[0], todo_c[0])
            for t in todo_t:
                for j in todo_c:
                    trial = cur.copy()
                    trial[t] = cent[j] * norm
                    got = _hierarchical_route(members[j], trial, ffn.tiles_per_cluster)
                    capture = float(np.mean(got == t))
                    if capture > best_pair[0]:
                        best_pair = (capture, t, j)
            capture, t, j = best_pair
            cur[t] = cent[j] * norm
            todo_t.remove(t)
            todo_c.remove(j)
            out.append(
                (
                    t,
                    (cent[j] * norm).astype(np.float32),
                    {
                        "reason": "dead; signature from under-served inputs",
                        "cluster_size": int(members[j].shape[0]),
                        "capture": capture,
                        "best_cosine_before": float(best[under[lab == j]].mean()),
                    },
                )
            )
        out.extend((t, None, {"reason": "dead; random signature"}) for t in todo_t)
        return out

    # ------------------------------------------------------------------ API

    def run(
        self,
        ffn: SparseLookupFFNv2,
        *,
        recent_inputs: npt.ArrayLike,
        recent_errors: npt.ArrayLike,
        step: int,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> list[dict[str, Any]]:
        """Inspect ``ffn`` and the recent traffic; unfreeze, freeze, reseed.

        Parameters
        ----------
        ffn : SparseLookupFFNv2
            Operated on in place, through its surgery API (each operation is
            in its surgery history, tagged ``"policy: ..."``).
        recent_inputs : array-like, float32 (N, d_model)
            Recent inputs of the FFN (what its ``forward`` received), N >= 0.
        recent_errors : array-like, float (N,)
            Per-token loss of those inputs (finite, >= 0).
        step : int
            The caller's step (in the returned operations and, for
            reseeds, the birth step of the new units).
        optimizer : torch.optim.Optimizer, optional
            When given, the per-element state of a reseeded tile's
            parameters (its signature and expert) is zeroed
            (:func:`~lillith.agents.tiles.reset_optimizer_moments`).

        Returns
        -------
        list of dict
            The operations performed, in order. Each has ``op``
            ("unfreeze", "freeze", "reseed"), ``tile``, ``step``, ``reason``
            and the numbers behind the decision (``error_ratio``,
            ``tokens``, ``purity``, ``group``, ``grouping``, ``usage``,
            ``capture`` ...), all JSON-serialisable.

        Raises
        ------
        SurgeryError
            Inputs of the wrong shape, non-finite or negative errors. Nothing
            is changed.
        """
        d, T = ffn.d_model, ffn.num_tiles
        X = np.asarray(recent_inputs, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != d:
            raise SurgeryError(
                "recent_inputs must have shape (N, d_model)", shape=X.shape, d_model=d
            )
        E = np.asarray(recent_errors, dtype=np.float64)
        if E.shape != (X.shape[0],):
            raise SurgeryError(
                "recent_errors must have shape (N,)", shape=E.shape, expected=(X.shape[0],)
            )
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(E)) and np.all(E >= 0.0)):
            raise SurgeryError("recent inputs must be finite and errors finite and >= 0")
        step_i = _count("step", step, -(2**62))
        self._bind(ffn)
        self._runs += 1
        N = X.shape[0]
        ops: list[dict[str, Any]] = []
        X64 = X.astype(np.float64)
        if N > 0:
            r = ffn.route(torch.from_numpy(X))
            tiles = r["tile_idx"].cpu().numpy().astype(np.int64)
            codes = r["code"].cpu().numpy().astype(np.float64)
        else:
            tiles = np.zeros(0, dtype=np.int64)
            codes = np.zeros((0, d), dtype=np.float64)
        n_tok = np.bincount(tiles, minlength=T)
        err_sum = np.bincount(tiles, weights=E, minlength=T)
        overall = float(E.mean()) if N > 0 else 0.0
        ratio = np.where(
            (n_tok >= self.unfreeze_min_tokens) & (overall > 0.0),
            err_sum / np.maximum(n_tok, 1) / (overall if overall > 0.0 else 1.0),
            np.nan,
        )

        # 1. unfreeze failing frozen tiles
        frozen = ffn.frozen_mask.cpu().numpy().copy()
        unfrozen_now: set[int] = set()
        for t in np.flatnonzero(frozen).tolist():
            if np.isfinite(ratio[t]) and ratio[t] > self.unfreeze_error_ratio:
                ffn.unfreeze_signature(t, tag=f"policy: error ratio {ratio[t]:.3g}")
                frozen[t] = False
                unfrozen_now.add(t)
                self._forget(t)
                ops.append(
                    {
                        "op": "unfreeze",
                        "tile": t,
                        "step": step_i,
                        "reason": "error ratio above threshold",
                        "error_ratio": float(ratio[t]),
                        "tokens": int(n_tok[t]),
                    }
                )

        # 2. freeze stable pure tiles
        groups = self._groups(ffn, X64, tiles)
        if groups is not None:
            kind, sets, purity, totals = groups
            pure = (totals >= self.freeze_min_claims) & (purity >= self.freeze_purity)
            prev = self._group_sets
            if prev.shape[0] == T and prev.shape[1] < sets.shape[1]:  # new classes seen
                prev = np.pad(prev, ((0, 0), (0, sets.shape[1] - prev.shape[1])))
            comparable = prev.shape == sets.shape
            if not comparable:
                self._group_sets = np.zeros(sets.shape, dtype=np.bool_)
            for t in range(T):
                if t in unfrozen_now or not pure[t]:
                    self._forget(t)
                    continue
                if comparable and self._stable[t] > 0 and bool((prev[t] & sets[t]).any()):
                    self._stable[t] += 1
                else:
                    self._stable[t] = 1
                self._group_sets[t] = sets[t]
                if (
                    not frozen[t]
                    and self._stable[t] >= self.stable_rounds
                    and not (np.isfinite(ratio[t]) and ratio[t] > self.unfreeze_error_ratio)
                ):
                    group = np.flatnonzero(sets[t]).tolist()
                    ffn.freeze_signature(
                        t, tag=f"policy: stable {kind} {group}, purity {purity[t]:.3g}"
                    )
                    frozen[t] = True
                    ops.append(
                        {
                            "op": "freeze",
                            "tile": t,
                            "step": step_i,
                            "reason": "stable and pure",
                            "grouping": kind,
                            "group": group,
                            "purity": float(purity[t]),
                            "claims": int(totals[t]),
                            "stable_rounds": int(self._stable[t]),
                        }
                    )

        # 3. reseed dead tiles
        usage = ffn.tile_usage()
        threshold = self.dead_usage / T
        dead = [t for t in range(T) if not frozen[t] and usage[t] < threshold]
        if dead:
            for t, sig, facts in self._reseed_signatures(ffn, dead, codes, E):
                ffn.reseed_tile(t, sig, step=step_i, tag="policy: dead")
                self._forget(t)
                reset = 0
                if optimizer is not None:
                    for p in (ffn.signatures_raw, ffn.w1, ffn.b1, ffn.w2, ffn.b2):
                        reset += reset_optimizer_moments(optimizer, p, t)
                ops.append(
                    {
                        "op": "reseed",
                        "tile": t,
                        "step": step_i,
                        "usage": float(usage[t]),
                        "moments_reset": reset,
                        **facts,
                    }
                )
        return ops

    def insert(
        self,
        ffn: SparseLookupFFNv2,
        tile: int,
        signature: npt.ArrayLike | torch.Tensor,
        freeze: bool = True,
        tag: str = "",
        *,
        step: int | None = None,
    ) -> dict[str, Any]:
        """Insert a signature on command (``ffn.insert_signature``) and return the operation.

        The tile's stability counter restarts. Raises
        :class:`~lillith.agents.tiles.TileError` for a bad tile or signature.
        """
        ffn.insert_signature(tile, signature, freeze=freeze, tag=tag)
        self._bind(ffn)
        self._forget(int(tile))
        return {
            "op": "insert",
            "tile": int(tile),
            "step": step,
            "reason": "command",
            "freeze": bool(freeze),
            "tag": str(tag),
        }

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Policy state as plain numpy arrays (copies).

        Returns
        -------
        dict of str to numpy.ndarray
            ``counters`` int64 (2,) (state version, runs); ``stable`` int64
            (T,) consecutive pure runs per tile; ``groups`` uint8 (T, G) the
            group set of each tile at the previous run (1: member);
            ``centroids`` float32 (k, d) input-cluster
            centroids ((0, 0) before the first label-free run);
            ``last_claims`` int64 (T, C) claim counts at the previous run;
            ``rng_state`` uint8, the generator's state. ``T = 0`` before the
            first run.
        """
        return {
            "counters": np.array([_STATE_VERSION, self._runs], dtype=np.int64),
            "stable": self._stable.copy(),
            "groups": self._group_sets.astype(np.uint8),
            "centroids": self._centroids.copy(),
            "last_claims": self._last_claims.copy(),
            "rng_state": self._gen.get_state().numpy().copy(),
        }

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore :meth:`get_state` exactly.

        Raises
        ------
        StateError
            Missing keys, wrong shapes or dtypes, inconsistent values; the
            policy is left unchanged.
        """
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise StateError("surgery policy state is missing keys", missing=missing)
        arrs = {k: np.asarray(state[k]) for k in _STATE_KEYS}
        c = arrs["counters"]
        if c.shape != (2,) or c.dtype.kind not in "iu" or int(c[0]) != _STATE_VERSION:
            raise StateError("surgery policy 'counters' is invalid", counters=c.tolist())
        stable, groups = arrs["stable"], arrs["groups"]
        cent, last = arrs["centroids"], arrs["last_claims"]
        ok = (
            stable.ndim == 1
            and groups.ndim == 2
            and (groups.size == 0 or groups.shape[0] == stable.shape[0])
            and stable.dtype.kind in "iu"
            and groups.dtype.kind in "iub"
            and (stable.size == 0 or int(stable.min()) >= 0)
            and (groups.size == 0 or (int(groups.min()) >= 0 and int(groups.max()) <= 1))
            and cent.ndim == 2
            and cent.dtype.kind == "f"
            and bool(np.all(np.isfinite(cent)))
            and last.ndim == 2
            and last.dtype.kind in "iu"
            and (last.size == 0 or (last.shape[0] == stable.shape[0] and int(last.min()) >= 0))
            and int(c[1]) >= 0
        )
        if not ok:
            raise StateError("surgery policy state arrays are inconsistent")
        gen = torch.Generator()
        try:
            rng = np.ascontiguousarray(arrs["rng_state"], dtype=np.uint8)
            gen.set_state(torch.from_numpy(rng.copy()))
        except (RuntimeError, ValueError, TypeError) as e:
            raise StateError("surgery policy 'rng_state' is invalid") from e
        self._runs = int(c[1])
        self._stable = stable.astype(np.int64).copy()
        self._group_sets = groups.astype(np.bool_)
        self._centroids = cent.astype(np.float32).copy()
        self._last_claims = last.astype(np.int64).copy()
        self._gen = gen
