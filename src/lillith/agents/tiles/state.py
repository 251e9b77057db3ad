"""The tile FFN's whole state as plain numpy arrays, and its exact restore."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from lillith.agents.tiles.apoptosis import TileApoptosis
from lillith.agents.tiles.common import FITNESS_NAMES, TileError
from lillith.errors import StateError

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


class TileState(TileApoptosis):
    """The state round-trip (:meth:`get_state`, :meth:`set_state`)."""

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
            [float(self.track_fitness), self.fitness_decay, *(w[k] for k in FITNESS_NAMES)],
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

        cfg = arr("fitness_config", ((2 + len(FITNESS_NAMES),),), "f")
        weights = {k: float(v) for k, v in zip(FITNESS_NAMES, cfg[2:], strict=True)}
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
