"""An agent's whole state as a flat dict of arrays, and its exact restore.

Keys are prefixed by part (``fabric/``, ``som/``, ``predictor/``,
``tiles/``, ``optim/``, ``bio/``, ``norm/``, the detector's sections,
``agent/``, ``evo/``, ``surgery/``; docs/snapshots.md). A restore into a
configuration that differs in anything but the scoring settings is refused
(:func:`config_differences`).
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.config import AgentConfig
from lillith.agents.metrics import FrameLog
from lillith.agents.parts import AgentParts, _Pending
from lillith.agents.scores.detector import SECTIONS
from lillith.errors import StateError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
STATE_VERSION = 1


class AgentState(AgentParts):
    """:meth:`get_state`, :meth:`set_state` and :meth:`from_state` of an agent."""

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Whole agent as a flat dict of numpy arrays (no pickle anywhere).

        Keys are prefixed by component (``fabric/``, ``som/``, ``predictor/``,
        ``optim/``, ``bio/``, ``norm/``, ``lik/``, ``agent/``). The agent's
        configuration is stored as UTF-8 JSON bytes under ``agent/config``.
        """
        d: dict[str, npt.NDArray[Any]] = {}

        def put(prefix: str, sub: dict[str, npt.NDArray[Any]]) -> None:
            for k, v in sub.items():
                d[f"{prefix}/{k}"] = np.asarray(v)

        if self.fabric is not None and self.som is not None:
            put("fabric", self.fabric.get_state())
            put("som", dict(self.som.get_state()))
            d["agent/goal"] = self._goal.copy()
            d["agent/batch_goal"] = self._batch_goal.copy()
            d["agent/som_in"] = self._som_in.copy()
        for k, v in self.predictor.state_dict().items():
            d[f"predictor/{k}"] = v.detach().cpu().numpy().copy()
        # the tile FFN's own state adds claims, surgery history and counters
        put("tiles", self.predictor.ffn.get_state())
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for k, v in st.items():
                d[f"optim/{idx}/{k}"] = (v.detach().cpu().numpy().copy()
                                         if isinstance(v, torch.Tensor) else np.asarray(v))
        put("bio", self.bio.get_state())
        put("norm", self.normalizer.get_state())
        for section, sub in self.detector.get_state().items():
            put(section, sub)
        d["agent/counters"] = np.array([self.step, self.total_updates, self.skipped_steps,
                                        int(self.learning_enabled), self._n_qe,
                                        STATE_VERSION], dtype=np.int64)
        # (the running means of the raw score's terms: the SOM error's is a forecast feature)
        means = self.detector.means
        d["agent/scores"] = np.array([means[0], self._qe_avg, means[2]], dtype=np.float64)
        d["agent/frames"] = self._frames.as_array()
        d["agent/hist"] = self._hist.copy()
        has_prev = self._prev_pred is not None
        d["agent/has_prev"] = np.array(int(has_prev), dtype=np.int64)
        if has_prev:
            assert self._prev_pred is not None and self._prev_feat is not None
            assert self._prev_last is not None
            d["agent/prev_pred"] = self._prev_pred.copy()
            d["agent/prev_feat"] = self._prev_feat.copy()
            d["agent/prev_last"] = self._prev_last.copy()
        d["agent/recent_losses"] = np.array(self.recent_losses, dtype=np.float64)
        # the part-filled micro-batch, so a snapshot can be taken after any frame
        p = self._pending
        d["agent/pending_feats"] = (np.stack(p.feats) if p.feats
                                    else np.zeros((0, self.feat_dim), dtype=np.float32))
        d["agent/pending_lasts"] = (np.stack(p.lasts) if p.lasts
                                    else np.zeros((0, self.n_channels), dtype=np.float32))
        d["agent/pending_targets"] = (np.stack(p.targets) if p.targets
                                      else np.zeros((0, self.n_channels), dtype=np.float32))
        d["agent/batch"] = np.array([self._batch_scale, float(self._batch_learns),
                                     self._batch_qe], dtype=np.float64)
        if self.evolving:
            put("evo", self.lineage.state()._asdict())
            put("surgery", self.surgery.get_state())
        meta = {"n_channels": self.n_channels, "name": self.name,
                "config": self.config.model_dump(mode="json"),
                "forced_mode": self._forced_mode}
        d["agent/meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()
        return d

    @staticmethod
    def meta_of(state: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """Decode the JSON metadata (channels, name, config) of a state dict."""
        meta: dict[str, Any] = json.loads(bytes(np.asarray(state["agent/meta"],
                                                           dtype=np.uint8)).decode())
        return meta

    @classmethod
    def from_state(cls, state: dict[str, npt.NDArray[Any]]) -> Self:
        """Build an agent from :meth:`get_state` (configuration included)."""
        meta = cls.meta_of(state)
        agent = cls(int(meta["n_channels"]), AgentConfig.model_validate(meta["config"]),
                    name=str(meta["name"]))
        agent.set_state(state)
        return agent

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`; the agent then continues bit-identically.

        The scoring settings (``score.*``: raw-score weights, likelihood
        windows and rest period) may differ from the state's: they shape what
        is reported, not what was learned, so an upgrade or a
        retuned score keeps the learned agent. The new settings apply from the
        next frame, :attr:`score_changes` lists them, and when the likelihood's
        windows no longer fit (``window`` or ``short`` changed) the likelihood
        starts over (0.5 for ``min_history`` frames). Continuation is then no
        longer bit-identical to the old settings, by design.

        Raises
        ------
        StateError
            When the state belongs to another configuration (anything but the
            scoring settings; ``score.norm_alpha`` counts as a model setting,
            since the normalised frames feed the fabric and the predictor) or
            is incomplete.
        """
        meta = self.meta_of(state)
        self._plan = None
        diffs = config_differences(state, self.config, self.n_channels)
        score_changes = [d for d in diffs if _resume_safe(d)]
        if len(score_changes) < len(diffs):
            raise StateError("agent state belongs to another configuration",
                             differences=[d for d in diffs if not _resume_safe(d)])

        def sub(prefix: str) -> dict[str, npt.NDArray[Any]]:
            pre = prefix + "/"
            return {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}

        try:
            if self.fabric is not None and self.som is not None:
                self.fabric.set_state(sub("fabric"))
                self.som.set_state(sub("som"))
                self._goal = np.asarray(state["agent/goal"], dtype=np.float32).copy()
                # (older snapshots: taken at micro-batch starts, where the two agree)
                self._batch_goal = np.asarray(state.get("agent/batch_goal", self._goal),
                                              dtype=np.float32).copy()
                self._som_in = np.asarray(state["agent/som_in"], dtype=np.float32).copy()
            sd = {k: torch.from_numpy(np.array(v)) for k, v in sub("predictor").items()}
            self.predictor.load_state_dict(sd)
            self.predictor.ffn.set_state(sub("tiles"))
            opt = self.optimizer.state_dict()
            new_state: dict[int, dict[str, Any]] = {}
            for k, v in sub("optim").items():
                idx, name = k.split("/", 1)
                new_state.setdefault(int(idx), {})[name] = torch.from_numpy(np.array(v))
            opt["state"] = new_state
            self.optimizer.load_state_dict(opt)
            self.bio.set_state(sub("bio"))
            self.normalizer.set_state(sub("norm"))
            self.detector = self._make_detector()
            c = np.asarray(state["agent/counters"], dtype=np.int64)
            scores = np.asarray(state["agent/scores"], dtype=np.float64)
            sections = {name: sub(name) for name in SECTIONS}
            if "means" not in sections["lik"]:  # (older snapshots: the agent kept them)
                sections["lik"]["means"] = np.array([*scores, float(c[4])])
            self.detector.set_state(sections, tolerant=bool(score_changes))
            self.score_changes = score_changes
            self.step, self.total_updates, self.skipped_steps = int(c[0]), int(c[1]), int(c[2])
            self.learning_enabled, self._n_qe = bool(c[3]), int(c[4])
            self._qe_avg = float(scores[1])
            self._frames = FrameLog()
            if "agent/frames" in state:
                self._frames.load(state["agent/frames"])
            self._hist = np.asarray(state["agent/hist"], dtype=np.float32).copy()
            if int(state["agent/has_prev"]):
                self._prev_pred = np.asarray(state["agent/prev_pred"], dtype=np.float64).copy()
                self._prev_feat = np.asarray(state["agent/prev_feat"], dtype=np.float32).copy()
                self._prev_last = np.asarray(state["agent/prev_last"], dtype=np.float32).copy()
            else:
                self._prev_pred = self._prev_feat = self._prev_last = None
            self.recent_losses = deque((float(v) for v in state["agent/recent_losses"]),
                                       maxlen=1000)
            self._forced_mode = meta.get("forced_mode")
            pend = _Pending()
            for name, lst in (("feats", pend.feats), ("lasts", pend.lasts),
                              ("targets", pend.targets)):
                arr = np.asarray(state[f"agent/pending_{name}"], dtype=np.float32)
                lst.extend(arr[i].copy() for i in range(arr.shape[0]))
            self._pending = pend
            bs = np.asarray(state["agent/batch"], dtype=np.float64)
            self._batch_scale, self._batch_learns = float(bs[0]), bool(bs[1])
            self._batch_qe = float(bs[2]) if bs.size > 2 else self._qe_avg
            if self.evolving and "evo/counters" in state:
                self.lineage.set_state(sub("evo"))
                surgery = sub("surgery")
                if surgery:
                    self.surgery.set_state(surgery)
        except KeyError as e:
            raise StateError("agent state lacks an array", missing=str(e)) from e


# differences under this prefix (the scoring settings) do not block a restore,
# except the normaliser's rate: the normalised frames are the model's input
SCORE_PREFIX = "score."
MODEL_SCORE_KEYS = ("score.norm_alpha",)


def _resume_safe(difference: str) -> bool:
    """Whether a line of :func:`config_differences` may differ on a restore."""
    key = difference.split(":", 1)[0]
    return key.startswith(SCORE_PREFIX) and key not in MODEL_SCORE_KEYS


def config_differences(state: dict[str, npt.NDArray[Any]], config: AgentConfig,
                       n_channels: int | None, *, scoring: bool = True) -> list[str]:
    """Differences between the agent configuration stored in ``state`` and
    ``config`` (and the channel count, when given), human-readable; empty when
    they match. Settings added since the state was written take their defaults;
    a stored configuration that no longer validates is compared as stored.
    ``scoring=False`` leaves out the scoring settings (``score.*`` but
    ``score.norm_alpha``), which a restore may change (see :meth:`AgentState.set_state`)."""
    meta = AgentState.meta_of(state)
    theirs = meta["config"]
    with contextlib.suppress(ValueError):
        theirs = AgentConfig.model_validate(theirs).model_dump(mode="json")
    diffs = _config_diff(theirs, config.model_dump(mode="json"))
    if not scoring:
        diffs = [d for d in diffs if not _resume_safe(d)]
    if n_channels is not None and int(meta["n_channels"]) != n_channels:
        diffs.append(f"n_channels: {meta['n_channels']} != {n_channels}")
    return diffs


def _config_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out.extend(_config_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k))
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
