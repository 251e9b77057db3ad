"""4D convolution (x, y, z space + t time) with per-channel adaptation (fatigue).

Layout is channels-last throughout:

- input ``x``: ``(batch, X, Y, Z, T, in_channels)``
- kernel ``W``: ``(out_channels, in_channels, kx, ky, kz, kt)``
- output ``y``: ``(batch, X', Y', Z', T', out_channels)`` with
  ``X' = (X + 2 * px - kx) // sx + 1`` (likewise for y, z, t).

Padding is zero padding, applied symmetrically on every dimension.

Two formulations of the same maths are provided:

- ``"numba"``: parallel (``prange``) loop kernels, compiled with
  ``cache=True, nogil=True``; the forward and the input gradient are gathers
  (no write races), the weight gradient is parallel over kernel offsets.
- ``"torch"``: the kt temporal taps are folded into the output channels of a
  single ``conv3d`` over every frame, then shifted and summed; the backward
  pass recomputes that graph and uses autograd.

:class:`Conv4D` picks one per call by default (``backend="auto"``): numba
for small calls, torch above :data:`AUTO_NUMBA_MAX_MACS` multiply-adds, from
the measurements of ``bench/bench_conv4d.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, StateError
from lillith.fabric._conv4d_kernels import _fwd_kernel, _grad_w_kernel, _grad_x_kernel

__all__ = [
    "AUTO_NUMBA_MAX_MACS",
    "Backend",
    "Conv4D",
    "conv4d_backward",
    "conv4d_forward",
    "conv4d_macs",
    "conv4d_output_shape",
    "resolve_backend",
]

Backend = Literal["auto", "numba", "torch"]
FloatArray = npt.NDArray[np.floating[Any]]
Int4 = tuple[int, int, int, int]

#: ``backend="auto"`` runs numba when a call costs fewer multiply-adds than
#: this (``B * X'Y'Z'T' * out * in * kx*ky*kz*kt``), torch otherwise.
#: Measured with ``bench/bench_conv4d.py`` on the 2-core target (2 threads
#: each): numba wins up to a few 1e6 MACs (2.2e6: 0.15 vs 0.18 ms; torch pays
#: ~0.1 ms per call), torch's
#: oneDNN conv3d wins above (~2.5x at 13x13x16x8, 4 -> 8 channels, batch 8;
#: ~2x on the backward pass).
AUTO_NUMBA_MAX_MACS = 5_000_000

# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #


def _as_int4(value: int | tuple[int, ...] | list[int], name: str, minimum: int) -> Int4:
    """Normalise an int or 4-sequence of ints to a 4-tuple, checking ``>= minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = [int(value)] * 4
    elif isinstance(value, (tuple, list)) and len(value) == 4:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise FabricError(f"{name} must contain integers", **{name: value})
        values = [int(v) for v in value]
    else:
        raise FabricError(f"{name} must be an int or a 4-tuple of ints", **{name: value})
    if any(v < minimum for v in values):
        raise FabricError(f"{name} values must be >= {minimum}", **{name: value})
    return (values[0], values[1], values[2], values[3])


def conv4d_output_shape(
    spatial: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
) -> Int4:
    """Output extent ``(X', Y', Z', T')`` of a 4D convolution.

    Parameters
    ----------
    spatial : tuple of 4 int
        Input extent ``(X, Y, Z, T)``.
    kernel_size, stride, padding : int or tuple of 4 int
        Kernel extent (>= 1), stride (>= 1), zero padding per side (>= 0).

    Returns
    -------
    tuple of 4 int
        ``(n + 2 * p - k) // s + 1`` per dimension.

    Raises
    ------
    FabricError
        If an argument is malformed or the kernel does not fit the padded input.
    """
    if len(spatial) != 4:
        raise FabricError("spatial extent must have 4 entries", spatial=spatial)
    k = _as_int4(kernel_size, "kernel_size", 1)
    s = _as_int4(stride, "stride", 1)
    p = _as_int4(padding, "padding", 0)
    out = tuple(
        (int(n) + 2 * pp - kk) // ss + 1 for n, kk, ss, pp in zip(spatial, k, s, p, strict=True)
    )
    if any(int(n) + 2 * pp < kk for n, kk, pp in zip(spatial, k, p, strict=True)):
        raise FabricError(
            "kernel larger than padded input", spatial=spatial, kernel_size=k, padding=p
        )
    return cast(Int4, out)


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_array(a: object, name: str, ndim: int, dtype: np.dtype[Any] | None = None) -> FloatArray:
    """Validate a float array (type, ndim, dtype, finiteness); return it C-contiguous."""
    if not isinstance(a, np.ndarray):
        raise FabricError(f"{name} must be a numpy array", got=type(a).__name__)
    if a.ndim != ndim:
        raise FabricError(f"{name} must have {ndim} dimensions", shape=a.shape)
    if dtype is not None and a.dtype != dtype:
        raise FabricError(f"{name} has the wrong dtype", dtype=str(a.dtype), expected=str(dtype))
    if a.dtype not in _FLOAT_DTYPES:
        raise FabricError(f"{name} must be float32 or float64", dtype=str(a.dtype))
    if a.size and not np.isfinite(a).all():
        raise FabricError(f"{name} contains non-finite values", shape=a.shape)
    return np.ascontiguousarray(a)


def _check_conv_args(
    x: object, weight: object, stride: Any, padding: Any
) -> tuple[FloatArray, FloatArray, Int4, Int4, Int4]:
    w = _check_array(weight, "weight", 6)
    xx = _check_array(x, "x", 6, w.dtype)
    if xx.shape[5] != w.shape[1]:
        raise FabricError(
            "x channels do not match the kernel's in_channels",
            x_shape=xx.shape,
            in_channels=w.shape[1],
        )
    if 0 in xx.shape or 0 in w.shape:
        raise FabricError("empty input or kernel", x_shape=xx.shape, weight_shape=w.shape)
    s = _as_int4(stride, "stride", 1)
    p = _as_int4(padding, "padding", 0)
    k = cast(Int4, tuple(int(v) for v in w.shape[2:]))
    out = conv4d_output_shape(cast(Int4, tuple(xx.shape[1:5])), k, s, p)
    return xx, w, s, p, out


# --------------------------------------------------------------------------- #
# torch formulation
# --------------------------------------------------------------------------- #


def _torch_forward_t(xt: Any, wt: Any, bt: Any, s: Int4, p: Int4) -> Any:
    """Torch graph of the convolution on tensors (channels-last in and out).

    ``xt`` (B, X, Y, Z, T, in), ``wt`` (out, in, kx, ky, kz, kt), ``bt`` (out,)
    -> (B, X', Y', Z', T', out). The kt temporal taps become kt * out output
    channels of one conv3d run over every (padded) frame; output frame t'
    sums tap dt of frame t' * st + dt.
    """
    from torch.nn import functional as tnf

    B, X, Y, Z, T, C = xt.shape
    CO, _, KX, KY, KZ, KT = wt.shape
    sx, sy, sz, st = s
    px, py, pz, pt = p
    OT = (T + 2 * pt - KT) // st + 1
    # (B, T, C, X, Y, Z), pad time, fold frames into the batch
    xf = xt.permute(0, 4, 5, 1, 2, 3)
    if pt:
        xf = tnf.pad(xf, (0, 0, 0, 0, 0, 0, 0, 0, pt, pt))
    TP = T + 2 * pt
    xf = xf.reshape(B * TP, C, X, Y, Z)
    # (kt * out, in, kx, ky, kz): tap-major output channels
    wf = wt.permute(5, 0, 1, 2, 3, 4).reshape(KT * CO, C, KX, KY, KZ)
    out = tnf.conv3d(xf, wf, None, stride=(sx, sy, sz), padding=(px, py, pz))
    OX, OY, OZ = out.shape[2], out.shape[3], out.shape[4]
    out = out.reshape(B, TP, KT, CO, OX, OY, OZ)
    span = st * (OT - 1) + 1
    acc = out[:, 0:span:st, 0]
    for dt in range(1, KT):
        acc = acc + out[:, dt : dt + span : st, dt]
    acc = acc + bt.reshape(1, 1, CO, 1, 1, 1)
    # (B, T', out, X', Y', Z') -> (B, X', Y', Z', T', out)
    return acc.permute(0, 3, 4, 5, 1, 2).contiguous()


def _tensor(a: FloatArray) -> Any:
    """Zero-copy tensor view of ``a`` (a copy when ``a`` is read-only)."""
    import torch

    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _torch_forward(
    x: FloatArray, weight: FloatArray, bias: FloatArray, s: Int4, p: Int4
) -> FloatArray:
    import torch

    with torch.no_grad():
        y = _torch_forward_t(_tensor(x), _tensor(weight), _tensor(bias), s, p)
    return cast(FloatArray, y.numpy())


def _torch_backward(
    x: FloatArray, weight: FloatArray, g: FloatArray, s: Int4, p: Int4
) -> tuple[FloatArray, FloatArray, FloatArray]:
    import torch

    xt = _tensor(x).requires_grad_(True)
    wt = _tensor(weight).requires_grad_(True)
    bt = torch.zeros(weight.shape[0], dtype=xt.dtype, requires_grad=True)
    with torch.enable_grad():
        y = _torch_forward_t(xt, wt, bt, s, p)
        gx, gw, gb = torch.autograd.grad(y, (xt, wt, bt), grad_outputs=_tensor(g))
    return (
        cast(FloatArray, gx.numpy()),
        cast(FloatArray, gw.numpy()),
        cast(FloatArray, gb.numpy()),
    )


# --------------------------------------------------------------------------- #
# public functional API
# --------------------------------------------------------------------------- #


def conv4d_macs(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], out: Int4) -> int:
    """Multiply-adds of one forward pass (upper bound, ignoring padding)."""
    return int(x_shape[0]) * int(np.prod(out)) * int(np.prod(weight_shape))


def resolve_backend(backend: str, macs: int | None = None) -> Literal["numba", "torch"]:
    """Concrete backend for ``backend`` and a call of ``macs`` multiply-adds.

    ``"auto"`` picks ``"numba"`` when ``macs < AUTO_NUMBA_MAX_MACS`` (or
    ``macs`` is None), else ``"torch"``.

    Raises
    ------
    FabricError
        If ``backend`` is not one of ``"auto"``, ``"numba"``, ``"torch"``.
    """
    if backend == "auto":
        if macs is None or macs < AUTO_NUMBA_MAX_MACS:
            return "numba"
        return "torch"
    if backend in ("numba", "torch"):
        return cast(Literal["numba", "torch"], backend)
    raise FabricError("unknown backend", backend=backend, expected=("auto", "numba", "torch"))


def conv4d_forward(
    x: FloatArray,
    weight: FloatArray,
    bias: FloatArray | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    *,
    gain: FloatArray | None = None,
    backend: Backend = "auto",
) -> FloatArray:
    """4D convolution ``y = gain * (conv(x, weight) + bias)``, channels-last.

    Parameters
    ----------
    x : ndarray, shape (B, X, Y, Z, T, C_in), float32 or float64
        Input; must be finite.
    weight : ndarray, shape (C_out, C_in, kx, ky, kz, kt), same dtype as ``x``
        Kernel.
    bias : ndarray, shape (C_out,), optional
        Per-output-channel bias (zero when omitted).
    stride : int or tuple of 4 int
        Stride per dimension (x, y, z, t), >= 1.
    padding : int or tuple of 4 int
        Zero padding on each side per dimension, >= 0.
    gain : ndarray, shape (C_out,), optional
        Per-output-channel multiplicative gain (one when omitted).
    backend : {"auto", "numba", "torch"}
        Formulation to run; ``"auto"`` picks by cost (:func:`resolve_backend`).

    Returns
    -------
    ndarray, shape (B, X', Y', Z', T', C_out), dtype of ``x``
        ``X' = (X + 2 * px - kx) // sx + 1`` and likewise.

    Raises
    ------
    FabricError
        On a malformed, mismatched or non-finite argument.
    """
    xx, w, s, p, out = _check_conv_args(x, weight, stride, padding)
    n_out = w.shape[0]
    b = np.zeros(n_out, dtype=w.dtype) if bias is None else _check_array(bias, "bias", 1, w.dtype)
    g = np.ones(n_out, dtype=w.dtype) if gain is None else _check_array(gain, "gain", 1, w.dtype)
    if b.shape[0] != n_out or g.shape[0] != n_out:
        raise FabricError(
            "bias and gain must have out_channels entries",
            out_channels=n_out,
            bias_shape=b.shape,
            gain_shape=g.shape,
        )
    if resolve_backend(backend, conv4d_macs(xx.shape, w.shape, out)) == "torch":
        y = _torch_forward(xx, w, b, s, p)
        if gain is not None:
            y *= g
        return y
    y = np.empty((xx.shape[0], *out, n_out), dtype=w.dtype)
    wr = np.ascontiguousarray(w.transpose(2, 3, 4, 5, 1, 0))
    _fwd_kernel(xx, wr, b, g, *s, *p, y)
    return y


def conv4d_backward(
    x: FloatArray,
    weight: FloatArray,
    grad_out: FloatArray,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    *,
    backend: Backend = "auto",
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of ``conv(x, weight) + bias`` given the gradient of its output.

    Parameters
    ----------
    x : ndarray, shape (B, X, Y, Z, T, C_in), float32 or float64
        The input of the forward pass.
    weight : ndarray, shape (C_out, C_in, kx, ky, kz, kt), same dtype as ``x``
        The kernel of the forward pass.
    grad_out : ndarray, shape (B, X', Y', Z', T', C_out), same dtype as ``x``
        Gradient of the loss with respect to the (pre-gain) output.
    stride, padding : int or tuple of 4 int
        As in :func:`conv4d_forward`.
    backend : {"auto", "numba", "torch"}
        Formulation to run.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_weight : ndarray, shape of ``weight``
    grad_bias : ndarray, shape (C_out,)

    Raises
    ------
    FabricError
        On a malformed, mismatched or non-finite argument.
    """
    xx, w, s, p, out = _check_conv_args(x, weight, stride, padding)
    g = _check_array(grad_out, "grad_out", 6, w.dtype)
    expected = (xx.shape[0], *out, w.shape[0])
    if g.shape != expected:
        raise FabricError("grad_out has the wrong shape", shape=g.shape, expected=expected)
    if resolve_backend(backend, conv4d_macs(xx.shape, w.shape, out)) == "torch":
        return _torch_backward(xx, w, g, s, p)
    wr = np.ascontiguousarray(w.transpose(2, 3, 4, 5, 1, 0))
    gx = np.empty_like(xx)
    _grad_x_kernel(g, wr, *s, *p, gx)
    gwr = np.empty_like(wr)
    _grad_w_kernel(xx, g, *s, *p, gwr)
    gw = np.ascontiguousarray(gwr.transpose(5, 4, 0, 1, 2, 3))
    gb = g.sum(axis=(0, 1, 2, 3, 4))
    return gx, gw, gb


# --------------------------------------------------------------------------- #
# layer
# --------------------------------------------------------------------------- #


class Conv4D:
    """4D convolution layer with He-initialised kernel and output-channel fatigue.

    ``forward`` returns ``y = gain * (conv(x, weight) + bias)`` with
    ``gain[o] = 1 / (1 + adaptation[o])``. After a forward pass in training
    mode (and ``adapt=True``) the adaptation integrates the output activity
    and decays back::

        adaptation[o] += adaptation_rate * mean(|y[..., o]|)
                         - adaptation_recovery * adaptation[o]
        adaptation[o] = max(adaptation[o], 0)

    so strongly driven channels tire (their gain drops) and recover at rest.
    The gain is treated as a constant in ``backward`` (it is state, not a
    parameter).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts (>= 1).
    kernel_size : int or tuple of 4 int
        Kernel extent ``(kx, ky, kz, kt)``, default ``(3, 3, 3, 3)``.
    stride : int or tuple of 4 int
        Stride per dimension, default 1.
    padding : int or tuple of 4 int
        Zero padding per side per dimension, default 0.
    adaptation_rate : float
        Gain of activity into adaptation (>= 0).
    adaptation_recovery : float
        Fraction of adaptation recovered per forward pass, in ``[0, 1]``.
    seed : int
        Seed of ``numpy.random.default_rng`` for the He initialisation.
    dtype : {numpy.float32, numpy.float64}
        Dtype of parameters, inputs and outputs (float64 is for tests).
    backend : {"auto", "numba", "torch"}
        Formulation; ``"auto"`` picks per call by cost (:func:`resolve_backend`).

    Attributes
    ----------
    weight : ndarray, shape (out, in, kx, ky, kz, kt)
        Kernel, He-initialised: normal with std ``sqrt(2 / (in * kx * ky * kz * kt))``.
    bias : ndarray, shape (out,)
        Bias, zero-initialised.
    adaptation : ndarray, shape (out,)
        Fatigue state (>= 0), zero-initialised.
    grad_W, grad_b : ndarray
        Gradients accumulated by :meth:`backward` (shapes of ``weight``, ``bias``);
        reset with :meth:`zero_grad`.
    training : bool
        Whether ``forward`` updates the adaptation (see :meth:`train`, :meth:`eval`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = (3, 3, 3, 3),
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        adaptation_rate: float = 0.01,
        adaptation_recovery: float = 0.05,
        seed: int = 0,
        dtype: type[np.floating[Any]] | np.dtype[Any] = np.float32,
        backend: Backend = "auto",
    ) -> None:
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FabricError(f"{name} must be an int >= 1", **{name: v})
        self.kernel_size: Int4 = _as_int4(kernel_size, "kernel_size", 1)
        self.stride: Int4 = _as_int4(stride, "stride", 1)
        self.padding: Int4 = _as_int4(padding, "padding", 0)
        if not (np.isfinite(adaptation_rate) and adaptation_rate >= 0):
            raise FabricError("adaptation_rate must be finite and >= 0", value=adaptation_rate)
        if not (np.isfinite(adaptation_recovery) and 0 <= adaptation_recovery <= 1):
            raise FabricError("adaptation_recovery must be in [0, 1]", value=adaptation_recovery)
        dt = np.dtype(dtype)
        if dt not in _FLOAT_DTYPES:
            raise FabricError("dtype must be float32 or float64", dtype=str(dt))
        resolve_backend(backend)  # validates the name
        self.backend: Backend = backend
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.adaptation_rate = float(adaptation_rate)
        self.adaptation_recovery = float(adaptation_recovery)
        self.dtype: np.dtype[Any] = dt
        self.training = True

        fan_in = self.in_channels * int(np.prod(self.kernel_size))
        rng = np.random.default_rng(seed)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.weight: FloatArray = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dt)
        self.bias: FloatArray = np.zeros(self.out_channels, dtype=dt)
        self.adaptation: FloatArray = np.zeros(self.out_channels, dtype=dt)
        self.grad_W: FloatArray = np.zeros_like(self.weight)
        self.grad_b: FloatArray = np.zeros_like(self.bias)
        self._last_x: FloatArray | None = None
        self._last_gain: FloatArray | None = None
        self._last_out_shape: tuple[int, ...] | None = None

    # -- mode --------------------------------------------------------------- #

    def train(self, mode: bool = True) -> Conv4D:
        """Set training mode (adaptation updates on forward); returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self) -> Conv4D:
        """Set inference mode (adaptation frozen); returns ``self``."""
        return self.train(False)

    @property
    def gain(self) -> FloatArray:
        """Current per-output-channel gain ``1 / (1 + adaptation)``, shape (out,)."""
        return cast(FloatArray, (1.0 / (1.0 + self.adaptation)).astype(self.dtype))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output shape ``(B, X', Y', Z', T', out)`` of an input ``(B, X, Y, Z, T, in)``."""
        if len(input_shape) != 6:
            raise FabricError("input shape must have 6 entries", shape=input_shape)
        out = conv4d_output_shape(
            tuple(input_shape[1:5]), self.kernel_size, self.stride, self.padding
        )
        return (int(input_shape[0]), *out, self.out_channels)

    # -- compute ------------------------------------------------------------ #

    def forward(self, x: FloatArray, *, adapt: bool = True) -> FloatArray:
        """Convolve ``x`` and apply the adaptation gain.

        Parameters
        ----------
        x : ndarray, shape (B, X, Y, Z, T, in_channels), dtype ``self.dtype``
            Finite input.
        adapt : bool
            Update the adaptation afterwards (only in training mode). With
            ``adapt=False`` the layer state (weight, bias, adaptation) is untouched.

        Returns
        -------
        ndarray, shape (B, X', Y', Z', T', out_channels), dtype ``self.dtype``

        Raises
        ------
        FabricError
            If ``x`` has the wrong type, shape, dtype, channel count or is non-finite,
            or the kernel does not fit the padded input.
        """
        gain = self.gain
        y = conv4d_forward(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            gain=gain,
            backend=self.backend,
        )
        self._last_x = np.array(x, dtype=self.dtype, order="C", copy=True)
        self._last_gain = gain
        self._last_out_shape = y.shape
        if adapt and self.training:
            activity = np.abs(y).mean(axis=(0, 1, 2, 3, 4), dtype=np.float64)
            a = self.adaptation.astype(np.float64)
            a += self.adaptation_rate * activity - self.adaptation_recovery * a
            self.adaptation = np.maximum(a, 0.0).astype(self.dtype)
        return y

    __call__ = forward

    def backward(self, grad_y: FloatArray) -> FloatArray:
        """Backpropagate through the last :meth:`forward`.

        Accumulates (adds to) :attr:`grad_W` and :attr:`grad_b`.

        Parameters
        ----------
        grad_y : ndarray, shape of the last output, dtype ``self.dtype``
            Gradient of the loss with respect to the last output.

        Returns
        -------
        ndarray, shape of the last input, dtype ``self.dtype``
            Gradient of the loss with respect to the last input.

        Raises
        ------
        FabricError
            If no forward pass preceded, or ``grad_y`` is malformed or non-finite.
        """
        if self._last_x is None or self._last_gain is None:
            raise FabricError("backward called before forward")
        g = _check_array(grad_y, "grad_y", 6, self.dtype)
        if g.shape != self._last_out_shape:
            raise FabricError(
                "grad_y does not match the last output shape",
                shape=g.shape,
                expected=self._last_out_shape,
            )
        gz = g * self._last_gain
        gx, gw, gb = conv4d_backward(
            self._last_x, self.weight, gz, self.stride, self.padding, backend=self.backend
        )
        self.grad_W += gw
        self.grad_b += gb
        return gx

    def zero_grad(self) -> None:
        """Reset the accumulated gradients to zero."""
        self.grad_W.fill(0)
        self.grad_b.fill(0)

    # -- state -------------------------------------------------------------- #

    def get_state(self) -> dict[str, FloatArray]:
        """Copy of the layer state.

        Returns
        -------
        dict
            ``weight`` (out, in, kx, ky, kz, kt), ``bias`` (out,) and
            ``adaptation`` (out,), numpy arrays of dtype ``self.dtype``.
        """
        return {
            "weight": self.weight.copy(),
            "bias": self.bias.copy(),
            "adaptation": self.adaptation.copy(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load a state produced by :meth:`get_state` (arrays are copied).

        Parameters
        ----------
        state : mapping
            Keys ``weight``, ``bias``, ``adaptation`` with the shapes of
            :meth:`get_state`; values are cast to ``self.dtype``.

        Raises
        ------
        StateError
            On missing or unknown keys, wrong shapes, non-numeric or non-finite
            values, or a negative adaptation.
        """
        expected = {
            "weight": self.weight.shape,
            "bias": self.bias.shape,
            "adaptation": self.adaptation.shape,
        }
        if set(state) != set(expected):
            raise StateError(
                "Conv4D state keys mismatch", keys=sorted(state), expected=sorted(expected)
            )
        loaded: dict[str, FloatArray] = {}
        for key, shape in expected.items():
            try:
                arr = np.array(state[key], dtype=self.dtype, copy=True)
            except (TypeError, ValueError) as exc:
                raise StateError("Conv4D state value is not numeric", key=key) from exc
            if arr.shape != shape:
                raise StateError(
                    "Conv4D state shape mismatch", key=key, shape=arr.shape, expected=shape
                )
            if not np.isfinite(arr).all():
                raise StateError("Conv4D state contains non-finite values", key=key)
            loaded[key] = arr
        if (loaded["adaptation"] < 0).any():
            raise StateError("Conv4D adaptation must be >= 0", key="adaptation")
        self.weight = loaded["weight"]
        self.bias = loaded["bias"]
        self.adaptation = loaded["adaptation"]
