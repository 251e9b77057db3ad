"""Evolution rounds and tile surgery as the runtime runs them: logs and commands."""

from __future__ import annotations

from typing import Any

import structlog

from lillith.agents.agent import Agent

log = structlog.get_logger(component="evolution")


def log_evolution(agent: str, report: dict[str, Any], reason: str) -> None:
    """Log an evolution round: a summary event, one event per surgery operation;
    a round that failed (its report has ``error``) as ``evolution_failed``."""
    if "error" in report:
        log.error("evolution_failed", agent=agent, reason=reason, **report)
        return
    fab = report.get("fabric") or {}
    tiles = report.get("tiles") or {}
    log.info("evolution_round", agent=agent, reason=reason, step=report["step"],
             round=report["round"], neurons_died=fab.get("died", 0),
             neurons_born=fab.get("born", 0), synapses=fab.get("nnz_after"),
             layers=fab.get("layers", []), tile_units_died=tiles.get("died", 0),
             tile_units_born=tiles.get("born", 0), tile_strategy=tiles.get("strategy"))
    for op in report.get("surgery", []):
        log.info("tile_surgery", agent=agent, **op)


def surgery_command(ag: Agent | None, cmd: dict[str, Any]) -> dict[str, Any]:
    """Run a ``surgery`` command on the worker: ``{"cmd": "surgery", "op": "insert" |
    "freeze" | "unfreeze", "tile": int, "signature": [d_model floats] (insert),
    "freeze": bool (insert, default true), "tag": str}``."""
    if ag is None:
        raise ValueError("the agent has seen no frame yet")
    op, tile = cmd.get("op"), cmd.get("tile")
    if not isinstance(tile, int) or isinstance(tile, bool):
        raise ValueError("surgery needs an integer 'tile'")
    ffn = ag.predictor.ffn
    if op == "insert":
        sig = cmd.get("signature")
        if not isinstance(sig, list):
            raise ValueError("insert needs a 'signature' list")
        return ag.surgery.insert(ffn, tile, sig, freeze=bool(cmd.get("freeze", True)),
                                 tag=str(cmd.get("tag", "")), step=ag.step)
    if op in ("freeze", "unfreeze"):
        if op == "freeze":
            ffn.freeze_signature(tile)
        else:
            ffn.unfreeze_signature(tile)
        return {"op": op, "tile": tile, "step": ag.step, "reason": "command"}
    raise ValueError("surgery 'op' must be insert, freeze or unfreeze")
