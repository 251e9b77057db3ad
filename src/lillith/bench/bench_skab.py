"""Benchmark: SKAB binary scores of the agent's alarm, cross-validated, with and without the fabric.

SKAB's protocol (``lillith.eval.skab``): a fresh agent per experiment file,
learning online from row 0; the first 400 rows of each file are not scored;
the ``alarm`` column is scored point by point, pooled over every file: F1,
FAR and MAR (%). ``f1``/``far``/``mar``: the full agent with the shipped
defaults; ``cv``: leave-one-file-out cross-validation of the alarm state's
constants (``lillith.eval.cv.SKAB_GRID``, each fold's pick by F1, SKAB's
ranking; ``cv_far_bounded``: by F1 within FAR <= 13.55 % first). The
fabric-ablated agent under ``ablated`` (``lillith.eval.protocol.run_skab``).
Run: ``lillith bench skab --data DIR [--quick] --json`` (DIR: SKAB's ``data``
folder, or ``$LILLITH_DATA/skab``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lillith.eval.protocol import data_dir, run_skab

PUBLISHED = {"Conv-AE": {"f1": 0.78, "far": 13.55, "mar": 28.02},
             "MSET": {"f1": 0.78, "far": 39.73, "mar": 14.13},
             "T-squared + Q (PCA)": {"f1": 0.76, "far": 26.62, "mar": 24.92},
             "LSTM-AE": {"f1": 0.74, "far": 29.96, "mar": 25.92},
             "T-squared": {"f1": 0.66, "far": 19.21, "mar": 42.60},
             "Isolation forest": {"f1": 0.29, "far": 2.56, "mar": 82.89}}
"""SKAB's published leaderboard (all 34 files; offline, trained on each file's first 400 rows)."""


def run(*, quick: bool = False, data: Path | None = None) -> dict[str, Any]:
    """Full and fabric-ablated agents on SKAB: in-sample and cross-validated."""
    root = data_dir(data, "skab")
    if (root / "data").is_dir():  # (the corpus root rather than its data folder)
        root = root / "data"
    out = run_skab(root, quick=quick, progress=lambda m: print(m, file=sys.stderr, flush=True))
    out["published"] = PUBLISHED
    out["quick_subset"] = quick
    return out


if __name__ == "__main__":
    d = next((Path(a) for a in sys.argv[1:] if not a.startswith("--")), None)
    print(json.dumps(run(quick="--quick" in sys.argv, data=d), indent=2))
