"""Diagnostic: how much does the fabric's state say about its recent input?

Drives a fabric with i.i.d. uniform input and fits a ridge readout from the
state at step t to the input at step t - d (train on one stretch, R² on a
later one). A reservoir useful to the predictor has R² well above 0 at small
delays, decaying with d (fading memory); an autonomous, self-sustained regime
has R² ≈ 0 everywhere. Also reports whether activity survives when the input
stops. Run: ``python -m lillith.bench.fabric_memory`` compares a uniform ``Local3D``
fabric (every membrane time constant 20 ms) with the agent's default wiring
(``AgentConfig().fabric.wiring``); ``python -m lillith.bench.fabric_memory
'{"r_syn": 100}' '{"type": "MultiScale", "taus": [1, 5, 50]}'`` profiles one
fabric (FabricParams overrides, then a wiring config, both JSON).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from lillith.agents.config import AgentConfig
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.params import FabricParams
from lillith.fabric.wiring import Wiring


def _ridge_r2(F: np.ndarray, y: np.ndarray, split: int, lam: float = 1e-2) -> float:
    Fa = np.hstack([F, np.ones((F.shape[0], 1))])
    A, b = Fa[:split], y[:split]
    w = np.linalg.solve(A.T @ A + lam * len(b) * np.eye(A.shape[1]), A.T @ b)
    pred = Fa[split:] @ w
    c = np.corrcoef(pred, y[split:])[0, 1]
    return float(c * c) if np.isfinite(c) else 0.0


def memory_profile(params: dict[str, float], *, wiring: dict[str, Any] | None = None,
                   shape: tuple[int, int, int] = (5, 5, 16), n: int = 4000,
                   delays: tuple[int, ...] = (0, 1, 2, 4, 8, 16)) -> dict[str, Any]:
    """R² of the input d steps back, from all activations and from pooled features
    (``wiring``: a wiring config as in ``agent.fabric.wiring``; default Local3D)."""
    w = None
    if wiring is not None:
        cfg = {"shape": list(shape), "seed": 0, **wiring}  # (as the agent builds it)
        w = Wiring.from_config(cfg)
    f = NeuralFabric3D(shape, n_inputs=1, params=FabricParams(**params), seed=0, wiring=w)
    u = np.random.default_rng(0).uniform(-2.0, 2.0, n)
    act = np.empty((n, f.n))
    pooled = np.empty((n, f.n_features))
    for t in range(n):
        f.step([u[t]])
        act[t] = f.act
        pooled[t] = f.pooled()
    warm, split = 500, 3000 - 500
    out: dict[str, Any] = {"mean_activation": round(float(act[warm:].mean()), 4)}
    for name, F in (("all", act[warm:]), ("pooled", pooled[warm:])):
        out[f"r2_{name}"] = {d: round(_ridge_r2(F, np.roll(u, d)[warm:], split), 3)
                             for d in delays}
    for _ in range(300):
        f.step([0.0])
    out["activation_after_input_off"] = round(float(f.act.mean()), 4)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        wiring = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
        print(json.dumps(memory_profile(json.loads(sys.argv[1]), wiring=wiring), indent=1))
    else:
        agent_wiring = AgentConfig().fabric.wiring
        print(json.dumps({"Local3D": memory_profile({}),
                          json.dumps(agent_wiring): memory_profile({}, wiring=agent_wiring)},
                         indent=1))
