"""Benchmark: NAB v1.1 scores of the agent, cross-validated, with and without the fabric.

A fresh agent per stream, one configuration for all streams, no look-ahead;
the ``anomaly_likelihood`` column is scored with NAB v1.1 rules
(``lillith.eval.nab``). The headline (``standard``) is the full agent's
leave-one-category-out cross-validated score: every scoring constant of the
grid (``lillith.eval.cv.NAB_GRID`` x ``switches``) chosen on the other
categories only. In-sample figures (the shipped defaults on all streams)
and the fabric-ablated agent are reported beside it
(``lillith.eval.protocol.run_nab``).
Run: ``lillith bench nab --data DIR [--quick] --json`` (DIR: a NAB tree,
or ``$LILLITH_DATA/nab``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lillith.eval.protocol import data_dir, run_nab

PUBLISHED = {"ARTime": 78.15, "CAD OSE": 74.05, "Numenta HTM": 71.21, "KNN CAD": 64.40,
             "windowed Gaussian": 36.71}
"""Published standard scores on NAB's 31 development streams (their own tuning)."""


def run(*, quick: bool = False, data: Path | None = None) -> dict[str, Any]:
    """Full and fabric-ablated agents on a NAB tree: in-sample and cross-validated."""
    out = run_nab(data_dir(data, "nab"), quick=quick,
                  progress=lambda m: print(m, file=sys.stderr, flush=True))
    out["published_standard_in_sample"] = PUBLISHED
    out["quick_subset"] = quick
    return out


if __name__ == "__main__":
    d = next((Path(a) for a in sys.argv[1:] if not a.startswith("--")), None)
    print(json.dumps(run(quick="--quick" in sys.argv, data=d), indent=2))
