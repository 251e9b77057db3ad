"""lillith: an event-driven, continuous-learning agent runtime.

Subpackages, dependencies pointing inward (``runtime -> agents -> fabric``):

- :mod:`lillith.fabric`  numerical core (numba kernels, arrays in, arrays out)
- :mod:`lillith.agents`  the online learner
- :mod:`lillith.sensors` sources, codecs and validation
- :mod:`lillith.state`   zarr snapshots
- :mod:`lillith.runtime` asyncio daemon, config, logging, CLI
"""

from lillith.errors import LillithError

__all__ = ["LillithError", "__version__"]
__version__ = "0.1.0"
