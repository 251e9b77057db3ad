"""Behaviour check: hashes of what the agent outputs and stores, to compare across a refactor.

Prints one JSON object:

* ``nab/full/<category>/<name>.csv``, ``nab/ablated/...``: the SHA-256 of every
  output CSV of ``lillith replay`` over a NAB tree (a fresh agent per stream,
  the default configuration, and the same with the fabric ablated);
* ``evolution/csv``: the output CSV of a fixed synthetic stream replayed
  through a small agent with evolution on (fabric apoptosis, tile apoptosis,
  the surgery policy and lineage all run), snapshotted at the end with
  :class:`lillith.state.snapshot.SnapshotStore`;
* ``evolution/snapshot``: the SHA-256 of that snapshot's arrays as they load
  back (every key in order: its name, dtype, shape and bytes; no file times);
* ``evolution/keys``: how many arrays the snapshot holds;
* ``config``: the SHA-256 of the default agent configuration's JSON (a change
  of a default changes the outputs; ``--config`` pins one).

Two runs of the same code on the same CPU print the same object; the
numbers depend on the CPU (numba's fastmath), so they are compared between
two runs on one machine, never stored.

Run: ``python -m lillith.bench.behaviour_hash --data DIR`` (DIR: a NAB tree, or
``$LILLITH_DATA/nab``) ``[--config agent.json] [--out FILE]``; a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lillith.agents.config import AgentConfig
from lillith.runtime.replay import ReplayState, replay_paths
from lillith.state.snapshot import SnapshotStore

EVOLUTION = {"every": 50, "warmup": 200, "fabric": {"prune_rate": 0.1},
             "tiles": {"prune_rate": 0.25}, "tile_min_observations": 1, "recent": 64}
"""Evolution of the synthetic run: a round every 50 frames from frame 200."""
SMALL: dict[str, dict[str, Any]] = {
    "fabric": {"shape": [4, 4, 8], "n_features": 16}, "som": {"map_shape": [6, 6]},
    "predictor": {"d_model": 16, "num_tiles": 8, "tiles_per_cluster": 4}}
"""The synthetic run's agent: small, so the run takes seconds."""
FRAMES = 1500


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_hash(state: dict[str, Any]) -> str:
    """SHA-256 over every array of ``state`` in key order: name, dtype, shape, bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        a = np.ascontiguousarray(state[k])
        h.update(k.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def synthetic_csv(path: Path) -> None:
    """A fixed three-channel stream with hourly timestamps, a level shift and a spike."""
    rng = np.random.default_rng(20)
    t = np.arange(FRAMES)
    x = np.stack([np.sin(2 * np.pi * t / 24.0), np.cos(2 * np.pi * t / 168.0),
                  np.sin(2 * np.pi * t / 60.0) ** 2], axis=1)
    x += 0.1 * rng.standard_normal(x.shape)
    x[900:, 1] += 2.0
    x[1200, 0] += 8.0
    start = np.datetime64("2024-01-01T00:00:00")
    with path.open("w") as fh:
        fh.write("timestamp,a,b,c\n")
        for i in range(FRAMES):
            stamp = str(start + np.timedelta64(int(i), "h"))
            fh.write(",".join([stamp, *(repr(float(v)) for v in x[i])]) + "\n")


def nab_hashes(data: Path, config: AgentConfig, work: Path) -> dict[str, str]:
    """Replay ``data/data`` (a NAB tree) with the full and the ablated agent."""
    out: dict[str, str] = {}
    variants = {"full": config, "ablated": config.model_copy(update={"ablate_fabric": True})}
    for variant, cfg in variants.items():
        dest = work / variant
        replay_paths([data / "data"], dest, cfg, show_progress=False)
        for f in sorted(dest.rglob("*.csv")):
            out[f"nab/{variant}/{f.relative_to(dest).as_posix()}"] = _sha(f)
    return out


def evolution_hashes(config: AgentConfig, work: Path) -> dict[str, Any]:
    """The synthetic stream through a small evolving agent; its CSV and snapshot."""
    src = work / "synthetic" / "stream.csv"
    src.parent.mkdir(parents=True)
    synthetic_csv(src)
    raw = config.model_dump(mode="json")
    for k, v in SMALL.items():
        raw[k] = {**raw[k], **v}
    raw["evolution"] = {**raw["evolution"], **EVOLUTION}
    cfg = AgentConfig.model_validate(raw)
    out_csv = work / "synthetic" / "out.csv"
    state_dir = work / "synthetic" / "state"
    res = replay_paths([src], out_csv, cfg, show_progress=False,
                       state=ReplayState(str(state_dir), every=700))
    loaded = SnapshotStore(str(state_dir)).load()
    assert res[0].evolution_rounds > 0 or "evo/counters" in loaded.state
    rounds = int(np.asarray(loaded.state["evo/counters"])[1])
    return {"evolution/csv": _sha(out_csv), "evolution/snapshot": state_hash(loaded.state),
            "evolution/keys": len(loaded.state), "evolution/rounds": rounds,
            "evolution/births": int(np.asarray(loaded.state["evo/births"]).shape[0])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="a NAB tree (default: $LILLITH_DATA/nab)")
    p.add_argument("--config", type=Path, default=None,
                   help="agent configuration as JSON (default: the defaults)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args()
    data = a.data
    if data is None and os.environ.get("LILLITH_DATA"):
        data = Path(os.environ["LILLITH_DATA"]) / "nab"
    if data is None or not (data / "data").is_dir():
        print("no NAB tree: pass --data DIR or set LILLITH_DATA", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    config = (AgentConfig.model_validate_json(a.config.read_text()) if a.config
              else AgentConfig())
    result: dict[str, Any] = {"config": hashlib.sha256(
        config.model_dump_json().encode()).hexdigest()}
    with tempfile.TemporaryDirectory(prefix="lillith-hash-") as tmp:
        work = Path(tmp)
        result.update(evolution_hashes(config, work))
        result.update(nab_hashes(data, config, work / "nab"))
    text = json.dumps(result, indent=1, sort_keys=True)
    if a.out is not None:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
