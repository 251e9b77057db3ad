"""lillith: an event-driven, continuous-learning anomaly-detection runtime.

The public API is what :data:`__all__` names (docs/api.md): the agent and its
configuration, the fabric's building blocks (the seed classes), the tile
FFN, snapshots and the runtime's entry points. ``from lillith import Agent``
works; the names are imported on first use, so importing :mod:`lillith` (or
any of its light modules, the sensors or the errors) does not load torch or
compile numba kernels. Everything else is internal and may change.

Layers, dependencies pointing inward (docs/architecture.md): ``runtime`` ->
``eval`` -> ``agents`` -> ``fabric`` / ``sensors`` / ``state`` -> ``records``
-> ``errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lillith.errors import (
    AgentError,
    ConfigError,
    FabricError,
    LillithError,
    StateError,
    WiringError,
)
from lillith.version import __version__

if TYPE_CHECKING:
    from lillith.agents.agent import Agent
    from lillith.agents.config import AgentConfig
    from lillith.agents.metrics import Metrics
    from lillith.agents.tiles import SparseLookupBlockV2, SparseLookupFFNv2, TileSurgeryPolicy
    from lillith.fabric.conv4d import Conv4D
    from lillith.fabric.neural_fabric import NeuralFabric3D
    from lillith.fabric.som import SelfOrganizingMap
    from lillith.fabric.wiring import NCP, Hierarchical, Local3D, MultiScale, Random, Wiring
    from lillith.runtime.config import Settings, load_settings
    from lillith.runtime.replay import replay_paths
    from lillith.state.snapshot import SnapshotStore


_LAZY = {
    "Agent": "lillith.agents.agent",
    "AgentConfig": "lillith.agents.config",
    "Metrics": "lillith.agents.metrics",
    "SparseLookupFFNv2": "lillith.agents.tiles",
    "SparseLookupBlockV2": "lillith.agents.tiles",
    "TileSurgeryPolicy": "lillith.agents.tiles",
    "NeuralFabric3D": "lillith.fabric.neural_fabric",
    "SelfOrganizingMap": "lillith.fabric.som",
    "Conv4D": "lillith.fabric.conv4d",
    "Wiring": "lillith.fabric.wiring",
    "Local3D": "lillith.fabric.wiring",
    "MultiScale": "lillith.fabric.wiring",
    "Hierarchical": "lillith.fabric.wiring",
    "Random": "lillith.fabric.wiring",
    "NCP": "lillith.fabric.wiring",
    "SnapshotStore": "lillith.state.snapshot",
    "Settings": "lillith.runtime.config",
    "load_settings": "lillith.runtime.config",
    "replay_paths": "lillith.runtime.replay",
}

__all__ = ["NCP", "Agent", "AgentConfig", "AgentError", "ConfigError", "Conv4D",
           "FabricError", "Hierarchical", "LillithError", "Local3D", "Metrics", "MultiScale",
           "NeuralFabric3D", "Random", "SelfOrganizingMap", "Settings", "SnapshotStore",
           "SparseLookupBlockV2", "SparseLookupFFNv2", "StateError", "TileSurgeryPolicy",
           "Wiring", "WiringError", "__version__", "load_settings", "replay_paths"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lillith' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
