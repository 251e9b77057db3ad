"""A river anomaly detector backed by a lillith agent (``pip install 'lillith[river]'``).

:class:`Detector` implements river's ``base.AnomalyDetector``:
``learn_one(x)`` learns one dict of features, ``score_one(x)`` returns the
anomaly score the dict would get (high is anomalous) without learning it: the
agent's raw score by default (it ranks frames, as river's evaluation wants),
or its reported likelihood in [0, 1] (``score="likelihood"``: what the agent
alarms on, shaped by its alarm budget and rest periods). It passes the checks
of river's ``checks.check_estimator`` (tests/test_river.py), so it drops into
river's pipelines and evaluation::

    from river import datasets
    from lillith.river import Detector

    detector = Detector()
    for x, _ in datasets.CreditCard().take(2000):
        score = detector.score_one(x)
        detector.learn_one(x)

Features: the agent's channels are the feature names of the first dict
learnt, sorted (so the order of a dict's keys does not matter). Later a
missing feature holds its last value (0.0 before it had one), and a feature
that was not in the first dict is ignored (a dict without any feature before
the first one with some is ignored). Values must be finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from river import base

from lillith.agents.config import AgentConfig
from lillith.errors import LillithError

_SMALL = {"fabric": {"shape": [3, 3, 4], "n_features": 8}, "som": {"map_shape": [4, 4]},
          "predictor": {"d_model": 8, "num_tiles": 4, "tiles_per_cluster": 2}}
"""A small agent for river's checks (the default agent is sized for a sensor stream)."""


class Detector(base.AnomalyDetector):  # type: ignore[misc,unused-ignore]
    """An online anomaly detector: a lillith agent behind river's interface.

    Parameters
    ----------
    config : AgentConfig, optional
        The agent's configuration (default: ``AgentConfig()``).
    seed : int, optional
        Overrides ``config.seed`` (the agent is reproducible given the seed).
    score : {"raw", "likelihood"}
        What ``score_one`` returns: the raw anomaly score (>= 0, unbounded)
        or the anomaly likelihood (in [0, 1]).

    Notes
    -----
    ``score_one`` then ``learn_one`` of the same dict processes the frame
    once: scoring keeps a copy of the state and the processed agent; the
    ``learn_one`` that follows commits it, anything else restores the copy
    first. Scoring alone therefore never changes what the detector learns.
    """

    def __init__(self, config: AgentConfig | None = None, seed: int | None = None,
                 score: str = "raw") -> None:
        if score not in ("raw", "likelihood"):
            raise LillithError("score must be 'raw' or 'likelihood'", score=score)
        self.config = config
        self.seed = seed
        self.score = score
        self._names: tuple[str, ...] | None = None
        self._last: dict[str, float] = {}
        self._agent: Any = None
        # (frame, state before it) of the last score_one, while its effect is kept
        self._pending: tuple[npt.NDArray[np.float64], dict[str, Any]] | None = None

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"config": AgentConfig.model_validate(_SMALL), "seed": 1}

    def _frame(self, x: Mapping[Any, Any], *, learn: bool) -> npt.NDArray[np.float64]:
        if self._names is None:
            names = tuple(sorted(str(k) for k in x))
            if learn and names:
                self._names = names
        else:
            names = self._names
        keyed = {str(k): v for k, v in x.items()}
        values = []
        for k in names:
            v = keyed.get(k)
            if v is None:
                values.append(self._last.get(k, 0.0))
                continue
            f = float(v)
            if not math.isfinite(f):
                raise LillithError("a feature is not a finite number", feature=k, value=str(v))
            values.append(f)
        frame = np.array(values, dtype=np.float64)
        if learn:
            self._last = dict(zip(names, (float(v) for v in frame), strict=True))
        return frame

    def _build(self, width: int) -> Any:
        from lillith.agents.agent import Agent

        cfg = self.config or AgentConfig()
        if self.seed is not None:
            cfg = cfg.model_copy(update={"seed": self.seed})
        return Agent(width, cfg)

    def _settle(self) -> None:
        """Undo a score that no learn_one followed."""
        if self._pending is not None:
            self._agent.set_state(self._pending[1])
            self._pending = None

    def learn_one(self, x: dict[Any, Any]) -> None:
        """Learn one dict of features (see the module's notes on features)."""
        frame = self._frame(x, learn=True)
        if frame.size == 0:  # no feature known yet: nothing to learn
            return
        if self._agent is None:
            self._agent = self._build(frame.size)
        if self._pending is not None and np.array_equal(self._pending[0], frame):
            self._pending = None  # scored just before: already processed
            return
        self._settle()
        self._agent.process(frame)

    def score_one(self, x: dict[Any, Any]) -> float:
        """The anomaly score of one dict of features (``score``); learns nothing.

        Before the first ``learn_one``: 0.0 (raw), 0.5 (likelihood: no
        evidence either way).
        """
        if self._agent is None:
            return 0.0 if self.score == "raw" else 0.5
        frame = self._frame(x, learn=False)
        self._settle()
        saved = self._agent.get_state()
        m = self._agent.process(frame)
        self._pending = (frame, saved)
        return float(m.anomaly_score if self.score == "raw" else m.anomaly_likelihood)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as the agent's state arrays (no torch objects), pending score undone."""
        self._settle()
        d = {k: v for k, v in self.__dict__.items() if k != "_agent"}
        d["_agent_state"] = None if self._agent is None else self._agent.get_state()
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        """Rebuild the agent from its pickled state arrays."""
        state = d.pop("_agent_state")
        self.__dict__.update(d)
        self._agent = None
        if state is not None:
            from lillith.agents.agent import Agent

            self._agent = Agent.from_state(state)
