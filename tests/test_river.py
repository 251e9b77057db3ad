"""lillith.river.Detector against river's own estimator checks (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

river = pytest.importorskip("river")
pytest.importorskip("sklearn")  # river's ROC AUC check uses it

from river.checks import yield_checks  # noqa: E402

from lillith.river import Detector  # noqa: E402


def _stream(n: int = 240) -> list[tuple[dict[str, float], bool]]:
    """Six features, two of them periodic, with a few spikes (the anomalies)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        base = 10 + 2 * np.sin(2 * np.pi * i / 40)
        spike = i > 60 and i % 37 == 0
        a = base + 0.2 * rng.standard_normal() + (15.0 if spike else 0.0)
        rows.append(({"pressure": float(a), "temp": float(base / 2 + 0.1 * rng.standard_normal()),
                      "flow": float(3 + 0.1 * rng.standard_normal()),
                      "level": float(base + 0.3 * rng.standard_normal()),
                      "speed": float(50 + rng.standard_normal()),
                      "vibration": float(0.1 * rng.standard_normal())}, bool(spike)))
    return rows


def test_river_estimator_checks() -> None:
    """Every check river's ``check_estimator`` runs for an anomaly detector, the
    ones on data fed this stream instead of river's CreditCard download."""
    model = Detector(**next(Detector._unit_test_params()))
    data = _stream()
    ran = []
    for check in yield_checks(model):
        if "dataset" in getattr(check, "keywords", {}):
            check.func(model.clone(), dataset=iter(data))
        else:
            check(model.clone())
        ran.append(check.__name__)
    assert {"check_roc_auc", "check_predict_one_pure", "check_pickling",
            "check_shuffle_features_no_impact", "check_emerging_features",
            "check_bounded_memory_growth", "check_clone_is_independent"} <= set(ran)


def test_score_one_learns_nothing_and_learn_one_after_it_is_one_step() -> None:
    kw = next(Detector._unit_test_params())
    scored, plain = Detector(**kw), Detector(**kw)
    data = _stream(80)
    for x, _ in data:
        s = scored.score_one(x)
        assert scored.score_one(x) == s
        scored.score_one({"pressure": 99.0})  # scored, never learnt
        scored.learn_one(x)
        plain.learn_one(x)
    assert scored._agent.step == plain._agent.step == len(data)
    x = data[-1][0]
    assert scored.score_one(x) == plain.score_one(x)
