"""``lillith inspect STATE``: snapshots, their integrity, and the newest agent's statistics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lillith.agents.agent import Agent
from lillith.errors import StateError
from lillith.runtime.inspect_lineage import lineage_report, specialization_report
from lillith.state.snapshot import Arrays, SnapshotStore


def _trend(losses: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Mean loss of the older and newer half of the recent window, and the slope
    of a least-squares line through it (per step)."""
    n = int(losses.size)
    if n < 4:
        return {"n": n, "older_mean": None, "newer_mean": None, "slope_per_step": None}
    half = n // 2
    slope = float(np.polyfit(np.arange(n, dtype=np.float64), losses, 1)[0])
    return {"n": n, "older_mean": float(losses[:half].mean()),
            "newer_mean": float(losses[half:].mean()), "slope_per_step": slope}


def agent_statistics(state: Arrays) -> dict[str, Any]:
    """Statistics of an agent from its state dict (no agent is built)."""
    meta = Agent.meta_of(state)
    counters = np.asarray(state["agent/counters"], dtype=np.int64)
    out: dict[str, Any] = {
        "name": meta.get("name"),
        "n_channels": meta.get("n_channels"),
        "fabric_shape": meta["config"]["fabric"]["shape"],
        "steps": int(counters[0]),
        "total_updates": int(counters[1]),
        "skipped_steps": int(counters[2]),
        "learning_enabled": bool(counters[3]),
        "loss_trend": _trend(np.asarray(state["agent/recent_losses"], dtype=np.float64)),
        "energy": float(np.asarray(state["bio/scalars"])[0]),
    }
    if "som/hits" in state:
        hits = np.asarray(state["som/hits"])
        qe = np.asarray(state["som/ring_qe"], dtype=np.float64)
        n_qe = int(min(int(np.asarray(state["som/ring_len"]).reshape(-1)[0]), qe.size))
        recent = np.asarray(state["som/ring_bmu"])[:n_qe]
        out["som"] = {
            "units": int(hits.size),
            "utilization": float(np.mean(hits > 0)),
            "recent_utilization": (float(np.unique(recent).size / hits.size) if n_qe else 0.0),
            "quantization_error": float(qe[:n_qe].mean()) if n_qe else math.nan,
        }
    if "tiles/frozen_mask" in state:
        frozen = np.asarray(state["tiles/frozen_mask"], dtype=bool)
        usage = np.asarray(state["tiles/usage_ema"], dtype=np.float64)
        out["tiles"] = {"total": int(frozen.size), "frozen": int(frozen.sum()),
                        "active": int(np.sum(usage >= 0.1 / max(usage.size, 1)))}
    if "fabric/generation" in state:
        gen = np.asarray(state["fabric/generation"])
        ids = np.asarray(state["fabric/neuron_id"])
        out["neurons"] = {"total": int(ids.size), "born": int(np.sum(gen > 0)),
                          "died": int(np.sum(gen > 0)),
                          "lineage_depth": int(gen.max()) if gen.size else 0}
        if "fabric/next_id" in state:
            # every regrowth replaces a dead neuron: ids issued beyond the first n
            issued = int(np.asarray(state["fabric/next_id"]).reshape(-1)[0]) - int(ids.size)
            out["neurons"]["born"] = out["neurons"]["died"] = max(issued, 0)
    return out


def inspect_store(store: SnapshotStore, *, stats: bool = True, lineage: bool = False,
                  per_neuron: bool = False) -> dict[str, Any]:
    """Every snapshot with its integrity, and statistics of the newest intact one.

    Parameters
    ----------
    store : SnapshotStore
    stats : bool
        Add the newest intact snapshot's agent statistics.
    lineage : bool
        Add its :func:`lineage_report` and :func:`specialization_report`.
    per_neuron : bool
        With ``lineage``: the specialization report lists every neuron.

    Returns
    -------
    dict
        ``snapshots``: list of ``{name, step, utc, bytes, ok, problems, ...}``,
        oldest first; ``latest``: the name ``LATEST`` gives (or None);
        ``latest_problem``: what is wrong with ``LATEST`` (empty, naming a
        snapshot that is not there), or None;
        ``newest_ok``: the newest intact snapshot; ``agent``: its statistics;
        with ``lineage``, also ``lineage`` and ``specialization`` (None
        without an intact snapshot).
    """
    infos = store.snapshots(verify=True)
    report: dict[str, Any] = {"root": store.root,
                              "snapshots": [i.as_dict() for i in infos],
                              "latest": store.latest_name(),
                              "latest_problem": store.latest_problem(),
                              "newest_ok": None, "agent": None}
    good = [i for i in infos if i.ok]
    if lineage:
        report["lineage"] = report["specialization"] = None
    if good:
        report["newest_ok"] = good[-1].name
        if stats or lineage:
            try:
                state = store.load(good[-1].name, fallback=False).state
                if stats:
                    report["agent"] = agent_statistics(state)
                if lineage:
                    report["lineage"] = lineage_report(state)
                    report["specialization"] = specialization_report(
                        state, per_neuron=per_neuron)
            except StateError as e:
                report["agent_error"] = str(e)
    return report


def render(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`inspect_store`'s report."""
    lines = [f"state: {report['root']}", f"LATEST: {report['latest']}"]
    if report.get("latest_problem"):
        lines.append(f"BAD: {report['latest_problem']}")
    lines.append(f"{'snapshot':40} {'step':>10} {'MiB':>8}  integrity")
    for s in report["snapshots"]:
        status = "ok" if s["ok"] else "BAD: " + "; ".join(s["problems"])
        lines.append(f"{s['name']:40} {s['step']:>10} {s['bytes'] / 2**20:>8.2f}  {status}")
    a = report.get("agent")
    if a:
        t = a["loss_trend"]
        lines.append(f"agent {a['name']!r}: {a['steps']} steps, {a['total_updates']} updates, "
                     f"energy {a['energy']:.3f}, fabric {a['fabric_shape']}")
        if t["n"] >= 4:
            lines.append(f"  loss (last {t['n']}): {t['older_mean']:.4g} -> {t['newer_mean']:.4g}"
                         f" (slope {t['slope_per_step']:+.2e}/step)")
        if "som" in a:
            s = a["som"]
            lines.append(f"  SOM: {s['units']} units, utilization {s['utilization']:.2f} "
                         f"(recent {s['recent_utilization']:.2f}), "
                         f"quantization error {s['quantization_error']:.4g}")
        if "tiles" in a:
            ti = a["tiles"]
            lines.append(f"  tiles: {ti['total']} total, {ti['active']} active, "
                         f"{ti['frozen']} frozen")
        if "neurons" in a:
            n = a["neurons"]
            lines.append(f"  neurons: {n['total']}, born {n['born']}, died {n['died']}, "
                         f"lineage depth {n['lineage_depth']}")
    return "\n".join(lines)
