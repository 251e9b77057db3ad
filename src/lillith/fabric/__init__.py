"""lillith.fabric: the numerical core (numba kernels; arrays in, arrays out; no I/O).

- :class:`NeuralFabric3D` the plastic 3D fabric of dendritic neurons
- wirings (:class:`Local3D`, :class:`MultiScale`, :class:`Hierarchical`,
  :class:`Random`, :class:`NCP`, base :class:`Wiring`) that emit CSR
  :class:`Connectivity`
- :class:`SelfOrganizingMap` online SOM
- :class:`Conv4D` spatio-temporal encoder
- :class:`BiologicalNonlinearity` the output nonlinearity on its own
- evolution (:mod:`lillith.fabric.evolution`): :class:`LayerStrategy` and
  :class:`FitnessWeights` for ``NeuralFabric3D.apoptosis`` /
  ``observe_importance``
"""

from lillith.fabric.conv4d import Conv4D
from lillith.fabric.evolution import FitnessWeights, LayerStrategy
from lillith.fabric.fabric_core import MODES, PRESETS
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.nonlinearity import BiologicalNonlinearity
from lillith.fabric.params import FabricParams
from lillith.fabric.som import SelfOrganizingMap
from lillith.fabric.topology import Connectivity, coords_of, index_of
from lillith.fabric.wiring import NCP, Hierarchical, Local3D, MultiScale, Random, Wiring

__all__ = [
    "MODES",
    "NCP",
    "PRESETS",
    "BiologicalNonlinearity",
    "Connectivity",
    "Conv4D",
    "FabricParams",
    "FitnessWeights",
    "Hierarchical",
    "LayerStrategy",
    "Local3D",
    "MultiScale",
    "NeuralFabric3D",
    "Random",
    "SelfOrganizingMap",
    "Wiring",
    "coords_of",
    "index_of",
]
