"""``lillith report`` on a small replay: the page and its figures (issue 21)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lillith.agents.config import AgentConfig
from lillith.runtime.cli import main
from lillith.runtime.replay import ReplayState, replay_paths

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = {"fabric": {"shape": [3, 3, 4], "n_features": 8}, "som": {"map_shape": [5, 5]},
         "predictor": {"d_model": 8, "num_tiles": 4, "tiles_per_cluster": 2},
         "evolution": {"every": 100, "warmup": 200, "fabric": {"prune_rate": 0.2},
                       "tiles": {"prune_rate": 0.25}, "tile_min_observations": 1}}


def _replay(tmp: Path) -> tuple[Path, Path, Path]:
    """A two-channel stream with a level shift (SKAB-like labels beside it),
    replayed by a small evolving agent; returns (scores, labels, state)."""
    n = 700
    rng = np.random.default_rng(0)
    i = np.arange(n)
    a = 10 + np.sin(2 * np.pi * i / 40) + 0.1 * rng.standard_normal(n)
    b = 5 + 0.1 * rng.standard_normal(n)
    a[500:540] += 6.0
    label = ((i >= 500) & (i < 540)).astype(int)
    ts = 1_700_000_000 + 60 * i
    src = tmp / "stream.csv"
    rows = zip(ts, a, b, strict=True)
    src.write_text("ts,a,b\n" + "".join(f"{t},{float(x)!r},{float(y)!r}\n" for t, x, y in rows))
    labels = tmp / "labels.csv"
    labels.write_text("ts;anomaly\n" + "".join(f"{t};{v}\n" for t, v in zip(ts, label,
                                                                            strict=True)))
    out = tmp / "scores.csv"
    state = tmp / "state"
    replay_paths([src], out, AgentConfig.model_validate(SMALL), timestamp_column="auto",
                 show_progress=False, state=ReplayState(str(state)))
    return out, labels, state


def test_report_renders_every_panel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image as mpimg

    scores, labels, state = _replay(tmp_path)
    assert scores.read_text().splitlines()[0].startswith("timestamp,a,b,anomaly_score")
    out = tmp_path / "report"
    assert main(["report", str(scores), "--out", str(out), "--labels", str(labels),
                 "--state", str(state)]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["figures"] == {
        "channels.png": ["a: value and forecast", "b: value and forecast"],
        "scores.png": ["anomaly score (raw)", "anomaly likelihood"],
        "som.png": ["SOM U-matrix", "SOM hit map"],
        "lineage.png": ["lineage: cumulative births and deaths",
                        "lineage: generation of each birth"]}
    assert done["rows"] == 700 and done["labelled_windows"] == 1
    for name in done["figures"]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG)
        img = mpimg.imread(out / name)  # decodes
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
        assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    page = (out / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 4 and all(base64.b64decode(e).startswith(PNG) for e in embedded)
    assert "src=\"http" not in page and "<script" not in page  # self-contained
    assert "labelled windows</th><td>1<" in page


def test_report_refuses_what_is_not_a_replay_output(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "raw.csv"
    f.write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    assert main(["report", str(f), "--out", str(tmp_path / "r")]) == 2
    assert "not a replay output" in capsys.readouterr().err
