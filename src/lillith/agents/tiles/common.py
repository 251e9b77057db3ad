"""What the tile modules share: their error, constants, seeded draws, argument
checks, and the reset of an optimiser's moments for regrown parameters."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from lillith.errors import LillithError

#: A signature value counts as "near" a ternary level (for
#: :meth:`SparseLookupFFNv2.get_island_stats`) when within this distance of it.
TERNARY_TOLERANCE = 0.1
#: :meth:`SparseLookupFFNv2.get_signature_analysis` calls a dimension positive
#: when ``s > 0.5``, negative when ``s < -0.5`` and zero otherwise.
ANALYSIS_THRESHOLD = 0.5
#: Regrowth strategies of :meth:`SparseLookupFFNv2.apoptosis`.
REGROWTH_STRATEGIES = ("preservation", "mutation", "crossover")
#: Components of the hidden-unit fitness, in the order of the state's ``fitness_config``.
FITNESS_NAMES = ("importance", "diversity", "stability", "energy")
ROUTER_GRADS = ("mixture", "straight_through")


def numpy_view(t: Tensor) -> npt.NDArray[np.float32]:
    """A numpy view of a float32 tensor's current values (no copy)."""
    out: npt.NDArray[np.float32] = t.detach().numpy()
    return out


class TileError(LillithError):
    """Invalid tile configuration, tile index, signature or input shape."""


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed) % (2**63))
    return gen


def uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> Tensor:
    """float32 tensor uniform in ``[-bound, bound]`` drawn from ``gen``."""
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise TileError(f"{name} must be an integer", **{name: value})
    try:
        v = operator.index(value)
    except TypeError as e:
        raise TileError(f"{name} must be an integer", **{name: value}) from e
    if v < 1:
        raise TileError(f"{name} must be >= 1", **{name: v})
    return v


def check_weight(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise TileError(f"{name} must be finite and >= 0", **{name: value})
    return v


def reset_optimizer_moments(optimizer: torch.optim.Optimizer, param: Tensor, index: Any) -> int:
    """Zero an optimiser's per-element state of ``param[index]``, in place.

    Every state tensor of ``param`` with the parameter's own shape (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's
    ``momentum_buffer``; RMSprop's ``square_avg``, ...) gets ``[index] = 0``;
    scalar entries such as Adam's ``step`` are per parameter and stay. The
    state tensors are modified in place, so the optimiser (fused or not)
    keeps using the same objects. A parameter the optimiser has no state
    for yet (never stepped, or not one of its parameters) is left alone.

    With Adam the bias correction then treats the zeroed elements as
    long-trained: the first update of a zeroed element is about
    ``lr * (1 - beta1) / sqrt(1 - beta2)`` (~3.2 lr with the defaults)
    in the direction of its gradient, then the moments catch up.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    param : Tensor
        A parameter (the very object the optimiser holds).
    index : index expression
        Anything ``tensor[index] = 0`` accepts (ints, slices, index tensors).

    Returns
    -------
    int
        Number of state tensors modified.
    """
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    with torch.no_grad():
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[index] = 0
                touched += 1
    return touched
