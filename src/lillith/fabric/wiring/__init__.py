"""lillith.fabric.wiring: builders of the fabric's CSR connectivity.

- :class:`Wiring` the base (:mod:`.base`): explicit synapses, ``build``, the
  config round-trip; subclass it and override ``_connect`` for your own
- :class:`Local3D`, :class:`MultiScale` local neighbourhoods (:mod:`.local`)
- :class:`Hierarchical` layers with feed-forward, skip, feedback and lateral
  pathways (:mod:`.hierarchical`)
- :class:`Random` a fixed number of random inputs per neuron (:mod:`.random_wiring`)
- :class:`NCP` a neural circuit policy (:mod:`.ncp`)
"""

from lillith.fabric.wiring.base import Wiring, WiringOptions, wiring_types
from lillith.fabric.wiring.hierarchical import Hierarchical
from lillith.fabric.wiring.local import Local3D, MultiScale
from lillith.fabric.wiring.ncp import NCP
from lillith.fabric.wiring.random_wiring import Random

__all__ = ["NCP", "Hierarchical", "Local3D", "MultiScale", "Random", "Wiring", "WiringOptions",
           "wiring_types"]
