"""lillith.agents.tiles: the sparse-lookup tile FFN with signature surgery.

- :class:`SparseLookupFFNv2` (:mod:`.ffn`) hierarchically routed top-1 tile FFN
- :class:`SparseLookupBlockV2` (:mod:`.block`) a transformer block around it
- :class:`ScoreCalibrationSpline` (:mod:`.spline`) the learnable gate
- :class:`TileSurgeryPolicy` (:mod:`.policy`) reseed, freeze and unfreeze by policy
"""

from lillith.agents.tiles.block import SparseLookupBlockV2
from lillith.agents.tiles.common import (
    ANALYSIS_THRESHOLD,
    REGROWTH_STRATEGIES,
    TERNARY_TOLERANCE,
    TileError,
    reset_optimizer_moments,
)
from lillith.agents.tiles.ffn import SparseLookupFFNv2
from lillith.agents.tiles.policy import TileSurgeryPolicy
from lillith.agents.tiles.spline import ScoreCalibrationSpline

__all__ = [
    "ANALYSIS_THRESHOLD",
    "REGROWTH_STRATEGIES",
    "TERNARY_TOLERANCE",
    "ScoreCalibrationSpline",
    "SparseLookupBlockV2",
    "SparseLookupFFNv2",
    "TileError",
    "TileSurgeryPolicy",
    "reset_optimizer_moments",
]
