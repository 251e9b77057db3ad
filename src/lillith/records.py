"""State records: a component's whole state as one NamedTuple of numpy arrays.

As norse keeps a population's state in a named tuple (``LIFState(z, v, i)``),
every stateful component of lillith has a record type (``FabricState``,
``SomState``, ``TileState``, ``NormalizerState``, ...) whose fields are the
arrays of its snapshot, declared once with their dtype and shape. Then

* ``get_state()`` is ``self.state()._asdict()``: the record of copies, as the
  flat ``{name: ndarray}`` dict a snapshot stores (the snapshot keys are the
  field names, under the component's prefix);
* ``set_state(d)`` reads the record's arrays back with :func:`read_arrays`:
  one check of every field's presence, dtype kind and shape against the
  component's sizes, naming the first array that does not fit; the component
  then checks what only it knows (a CSR row pointer, a ring position) before
  it commits anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import StateError

Spec = Mapping[str, tuple[npt.DTypeLike, tuple[int, ...] | None]]
"""Per field: the dtype it is restored as, and its shape (None: any)."""


def read_arrays(state: Mapping[str, Any], spec: Spec, *, what: str,
                optional: Collection[str] = ()) -> dict[str, npt.NDArray[Any]]:
    """The arrays of ``state`` that ``spec`` names, checked and copied.

    Parameters
    ----------
    state : mapping of str to array_like
        A component's state dict (``get_state()`` output, or a snapshot's).
    spec : mapping of str to (dtype, shape)
        Every array the component restores: its dtype (values are cast to it;
        a cast that changes the kind, float to int say, is refused) and its
        shape (``None``: any).
    what : str
        The component, for the error messages.
    optional : collection of str
        Fields a state may lack (written before they existed); missing ones
        are left out of the result for the caller to fill.

    Returns
    -------
    dict of str to ndarray
        C-contiguous copies, in the order of ``spec``.

    Raises
    ------
    StateError
        A required array is missing, or one has the wrong shape or dtype.
    """
    missing = [k for k in spec if k not in state and k not in optional]
    if missing:
        raise StateError(f"{what} state lacks arrays", missing=missing)
    out: dict[str, npt.NDArray[Any]] = {}
    for key, (dtype, shape) in spec.items():
        if key not in state:
            continue
        try:
            arr = np.asarray(state[key])
        except (TypeError, ValueError) as e:
            raise StateError(f"{what} state entry is not an array", array=key,
                             reason=str(e)) from None
        want = np.dtype(dtype)
        if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, want, "same_kind"):
            raise StateError(f"{what} state array has wrong dtype", array=key,
                             dtype=str(arr.dtype), expected=want.name)
        if shape is not None and arr.shape != shape:
            raise StateError(f"{what} state array has wrong shape", array=key,
                             shape=arr.shape, expected=shape)
        out[key] = np.array(arr, dtype=want, order="C", copy=True)
    return out


def finite(arrays: Mapping[str, Any], what: str) -> None:
    """Raise :class:`StateError` naming the first float array of ``arrays`` (a
    record's ``_asdict()``) that holds a NaN or an infinity."""
    for key, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise StateError(f"{what} state array has non-finite values", array=key)
