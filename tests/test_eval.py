"""The cross-validated protocol (lillith.eval): SKAB scoring, leave-one-group-out, the benches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.eval import cv, nab, skab
from lillith.eval.protocol import run_nab, run_skab
from lillith.eval.record import Decisions

TINY = AgentConfig(fabric={"shape": (3, 3, 4)}, som={"map_shape": (5, 5)})


def _decisions(lik: dict[str, np.ndarray]) -> dict[str, Decisions]:
    return {k: Decisions(v, v >= 0.9, np.zeros(v.size, dtype=np.int64)) for k, v in lik.items()}


def _nab_streams() -> list[nab.NabStream]:
    t = np.arange("2020-01-01", "2020-01-05", dtype="datetime64[h]").astype("datetime64[ns]")
    out = []
    for cat in ("a", "b", "c"):
        for j in range(2):
            out.append(nab.NabStream(f"{cat}/s{j}.csv", t, np.zeros(t.size),
                                     [(40 + 10 * j, 60 + 10 * j)]))
    return out


def test_logo_nab_picks_on_the_other_groups_only() -> None:
    """Config 0 finds the windows of groups a and b, config 1 those of c: the
    held-out group c gets config 0 (best on a, b), so its windows are missed."""
    streams = _nab_streams()
    dec = []
    for good in ({"a", "b"}, {"c"}):
        lik = {}
        for s in streams:
            v = np.zeros(s.n)
            if s.category in good:
                v[s.windows[0][0] + 1] = 1.0
            lik[s.path] = v
        dec.append(_decisions(lik))
    points = [{"alarm": 0.9999}, {"alarm": 0.99995}]
    r = cv.logo_nab(streams, dec, points)
    picks = {f["group"]: f["pick"] for f in r["folds"]}
    assert picks == {"a": points[0], "b": points[0], "c": points[0]}
    # pooled: a and b detected (config 0 on them), c missed
    pooled = {s.path: dec[0][s.path].likelihood for s in streams}
    assert r["score"] == pytest.approx(nab.score_corpus(streams, pooled)["score"])
    assert r["score"] < 100.0 and r["strict"] == pytest.approx(r["score"])
    # in sample, config 0 scores exactly the pooled figure: it is everyone's pick
    assert nab.score_corpus(streams, pooled)["tp"] == 4


def test_score_at_agrees_with_the_threshold_search() -> None:
    streams = _nab_streams()
    rng = np.random.default_rng(0)
    scores = {s.path: rng.random(s.n) for s in streams}
    best = nab.score_corpus(streams, scores)
    at = nab.score_at(streams, scores, best["threshold"])
    assert at["raw"] == pytest.approx(best["raw"]) and at["tp"] == best["tp"]
    assert 100 * (at["raw"] - at["null"]) / (at["perfect"] - at["null"]) == pytest.approx(
        best["score"])


def test_skab_score_pools_after_the_training_rows() -> None:
    n = 500
    lab = np.zeros(n, dtype=bool)
    lab[450:] = True
    f = skab.SkabFile("x/0.csv", np.arange(n, dtype=float), np.zeros((n, 1)), ["v"], lab)
    pred = np.zeros(n, dtype=bool)
    pred[:400] = True  # training rows: never counted
    pred[460:] = True
    pred[420:430] = True
    s = skab.score([f], {f.path: pred})
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (40, 10, 10, 40)
    assert s["f1"] == pytest.approx(40 / (40 + 10)) and s["far"] == pytest.approx(20.0)
    assert s["mar"] == pytest.approx(20.0)
    with pytest.raises(skab.SkabError):
        skab.score([f], {f.path: pred[:10]})


def test_logo_skab_keeps_the_false_alarm_rate_first() -> None:
    n = 500
    files = []
    for i in range(3):
        lab = np.zeros(n, dtype=bool)
        lab[450:] = True
        files.append(skab.SkabFile(f"v/{i}.csv", np.arange(n, dtype=float), np.zeros((n, 1)),
                                   ["v"], lab))
    always = {f.path: Decisions(np.zeros(n), np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64))
              for f in files}
    exact = {f.path: Decisions(np.zeros(n), f.anomaly.copy(), np.zeros(n, dtype=np.int64))
             for f in files}
    r = cv.logo_skab(files, [always, exact], [{"hold": 0.1}, {"hold": 0.9}], far_max=13.55)
    assert [f["pick"] for f in r["folds"]] == [{"hold": 0.9}] * 3
    assert r["f1"] == 1.0 and r["far"] == 0.0
    hi_far = skab.SkabScore(f1=0.9, far=20.0, mar=0, tp=0, fp=0, fn=0, tn=0)
    lo_far = skab.SkabScore(f1=0.1, far=5.0, mar=0, tp=0, fp=0, fn=0, tn=0)
    assert cv.skab_objective(hi_far, 13.55) < cv.skab_objective(lo_far, 13.55)
    assert cv.skab_objective(hi_far) > cv.skab_objective(lo_far)  # F1 alone


def _write_skab(root: Path, files: int, n: int = 900) -> None:
    (root / "valve").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k in range(files):
        lines = ["datetime;a;b;flow;anomaly;changepoint"]
        for i in range(n):
            on = 500 <= i < 620
            flow = 32.0 - (4.0 if on else 0.0) + 0.3 * rng.standard_normal()
            ts = datetime.fromtimestamp(1.58e9 + i, UTC).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"{ts};{rng.standard_normal():.4f};{5 + rng.standard_normal():.4f};"
                         f"{flow:.4f};{float(on)};{float(i in (500, 619))}")
        (root / "valve" / f"{k}.csv").write_text("\n".join(lines) + "\n")


def test_the_skab_protocol_runs_end_to_end(tmp_path: Path) -> None:
    _write_skab(tmp_path, 3)
    r = run_skab(tmp_path, config=TINY, points=cv.grid({"hold": [0.5, 0.7],
                                                        "shift_level": [0.999]}))
    for key in ("f1", "far", "mar"):
        assert key in r and key in r["cv"] and key in r["ablated"]["cv"]
    assert r["files"] == 3 and r["grid_points"] == 2
    # a flow drop of 13 of its deviations for 120 rows is found at once and held; the
    # alarm goes off some time after it ends (the shift's average forgets it)
    assert r["f1"] > 0.6 and r["mar"] < 5.0 and r["far"] < 50.0, r
    f = skab.load_corpus(tmp_path)[0]
    ms = Agent(3, TINY).process_many(f.values, list(f.t))
    alarm = np.array([m.alarm for m in ms])
    assert alarm[500] and alarm[501:620].all() and not alarm[-100:].any()


def _write_nab(root: Path) -> None:
    rng = np.random.default_rng(5)
    labels: dict[str, list[list[str]]] = {}
    for cat in ("c1", "c2"):
        (root / "data" / cat).mkdir(parents=True)
        for j in range(2):
            n = 1500
            t = 1.6e9 + 300.0 * np.arange(n)
            x = 10 + rng.standard_normal(n)
            at = 1000 + 100 * j
            x[at] += 25.0
            stamps = [datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%S") for v in t]
            lines = ["timestamp,value"] + [f"{s},{v:.4f}" for s, v in zip(stamps, x,
                                                                           strict=True)]
            (root / "data" / cat / f"s{j}.csv").write_text("\n".join(lines) + "\n")
            labels[f"{cat}/s{j}.csv"] = [[stamps[at - 40] + ".000000",
                                          stamps[at + 40] + ".000000"]]
    (root / "labels_windows.json").write_text(json.dumps(labels))


def test_the_nab_protocol_runs_end_to_end(tmp_path: Path) -> None:
    _write_nab(tmp_path)
    r = run_nab(tmp_path, config=TINY, points=cv.grid({"suppress": [100, 200]},
                                                      [{}, {"range_alarm": False}]))
    assert r["streams"] == 4 and r["grid_points"] == 4 and r["groups"] == ["c1", "c2"]
    for v in ("full", "ablated"):
        assert set(r[v]["cv"]) >= {"standard", "standard_strict", "reward_low_FP_rate"}
        assert [f["group"] for f in r[v]["cv_folds"]] == ["c1", "c2"]
    assert r["in_sample_standard"] == r["full"]["in_sample"]["standard"]
    assert r["full"]["in_sample"]["standard"] > 50.0  # the spikes are found


def test_benches_without_data_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LILLITH_DATA"}
    for name in ("nab", "skab"):
        p = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "bench", name,
                            "--json", "--data", str(tmp_path / "missing")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2 and "data not found at" in p.stderr and "--data" in p.stderr


@pytest.mark.skipif(not os.environ.get("LILLITH_DATA"), reason="set LILLITH_DATA")
def test_bench_skab_quick_on_the_development_data() -> None:
    p = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "bench", "skab",
                        "--json", "--quick"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    r: dict[str, Any] = json.loads(p.stdout)
    assert 0.0 <= r["f1"] <= 1.0 and set(r["cv"]) == {"f1", "far", "mar"}
