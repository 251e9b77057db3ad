"""Tests of lillith.fabric.conv4d: shapes, reference equality, gradients, adaptation, backends."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.errors import FabricError, StateError
from lillith.fabric.conv4d import (
    AUTO_NUMBA_MAX_MACS,
    Backend,
    Conv4D,
    conv4d_backward,
    conv4d_forward,
    conv4d_output_shape,
    resolve_backend,
)

from .nojit import run_python

BACKENDS: tuple[Backend, ...] = ("numba", "torch")


def ref_conv4d(
    x: np.ndarray[Any, Any],
    w: np.ndarray[Any, Any],
    b: np.ndarray[Any, Any],
    stride: tuple[int, int, int, int],
    padding: tuple[int, int, int, int],
) -> np.ndarray[Any, Any]:
    """Plain-numpy reference: zero-pad, then one einsum per kernel offset."""
    B, X, Y, Z, T, _ = x.shape
    n_out, _, KX, KY, KZ, KT = w.shape
    pads = ((0, 0), *((p, p) for p in padding), (0, 0))
    xp = np.pad(x, pads)
    out = [
        (n + 2 * p - k) // s + 1
        for n, k, s, p in zip((X, Y, Z, T), (KX, KY, KZ, KT), stride, padding, strict=True)
    ]
    y = np.zeros((B, *out, n_out), dtype=np.float64)
    sx, sy, sz, st_ = stride
    for dx, dy, dz, dt in itertools.product(range(KX), range(KY), range(KZ), range(KT)):
        patch = xp[
            :,
            dx : dx + sx * (out[0] - 1) + 1 : sx,
            dy : dy + sy * (out[1] - 1) + 1 : sy,
            dz : dz + sz * (out[2] - 1) + 1 : sz,
            dt : dt + st_ * (out[3] - 1) + 1 : st_,
            :,
        ]
        y += np.einsum("bxyztc,oc->bxyzto", patch, w[:, :, dx, dy, dz, dt])
    return np.asarray(y + b)


def _rand(shape: tuple[int, ...], seed: int, dtype: Any = np.float64) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- #
# shapes
# --------------------------------------------------------------------------- #

dims = st.integers(1, 6)
ks = st.integers(1, 3)
strides = st.integers(1, 3)
pads = st.integers(0, 2)


@settings(max_examples=40, deadline=None)
@given(
    spatial=st.tuples(dims, dims, dims, dims),
    kernel=st.tuples(ks, ks, ks, ks),
    stride=st.tuples(strides, strides, strides, strides),
    padding=st.tuples(pads, pads, pads, pads),
    batch=st.integers(1, 2),
)
def test_output_shape_formula(
    spatial: tuple[int, int, int, int],
    kernel: tuple[int, int, int, int],
    stride: tuple[int, int, int, int],
    padding: tuple[int, int, int, int],
    batch: int,
) -> None:
    fits = all(n + 2 * p >= k for n, k, p in zip(spatial, kernel, padding, strict=True))
    layer = Conv4D(2, 3, kernel, stride=stride, padding=padding, dtype=np.float64)
    x = _rand((batch, *spatial, 2), 0)
    if not fits:
        with pytest.raises(FabricError):
            layer.forward(x)
        return
    expected = tuple(
        (n + 2 * p - k) // s + 1
        for n, k, s, p in zip(spatial, kernel, stride, padding, strict=True)
    )
    assert conv4d_output_shape(spatial, kernel, stride, padding) == expected
    assert layer.output_shape(x.shape) == (batch, *expected, 3)
    for backend in BACKENDS:
        layer.backend = backend
        y = layer.forward(x, adapt=False)
        assert y.shape == (batch, *expected, 3)
        np.testing.assert_allclose(
            y, ref_conv4d(x, layer.weight, layer.bias, stride, padding), rtol=1e-10, atol=1e-10
        )


# --------------------------------------------------------------------------- #
# reference equality, backends
# --------------------------------------------------------------------------- #

CASES = [
    ((1, 1, 1, 1), (0, 0, 0, 0)),
    ((2, 2, 2, 2), (1, 1, 1, 1)),
    ((1, 2, 1, 2), (0, 1, 2, 1)),
    ((3, 1, 2, 1), (1, 0, 0, 2)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("stride", "padding"), CASES)
def test_forward_matches_numpy_reference(
    backend: Backend, stride: tuple[int, int, int, int], padding: tuple[int, int, int, int]
) -> None:
    x = _rand((2, 6, 5, 7, 5, 3), 1)
    w = _rand((4, 3, 3, 2, 3, 2), 2)
    b = _rand((4,), 3)
    y = conv4d_forward(x, w, b, stride, padding, backend=backend)
    np.testing.assert_allclose(y, ref_conv4d(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)
    gain = np.array([0.5, 1.0, 0.25, 2.0])
    y2 = conv4d_forward(x, w, b, stride, padding, gain=gain, backend=backend)
    np.testing.assert_allclose(y2, y * gain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("stride", "padding"), CASES)
def test_backends_agree_float32(
    stride: tuple[int, int, int, int], padding: tuple[int, int, int, int]
) -> None:
    layers = {
        be: Conv4D(3, 5, (3, 3, 3, 2), stride=stride, padding=padding, seed=7, backend=be)
        for be in BACKENDS
    }
    x = _rand((2, 7, 6, 8, 5, 3), 4, np.float32)
    ys = {be: layer.forward(x) for be, layer in layers.items()}
    assert ys["numba"].dtype == ys["torch"].dtype == np.float32
    np.testing.assert_allclose(ys["numba"], ys["torch"], rtol=1e-4, atol=1e-5)
    # same adaptation update from the same outputs
    np.testing.assert_allclose(
        layers["numba"].adaptation, layers["torch"].adaptation, rtol=1e-5, atol=1e-7
    )
    g = _rand(ys["numba"].shape, 5, np.float32)
    gx = {be: layer.backward(g) for be, layer in layers.items()}
    assert gx["numba"].dtype == np.float32
    np.testing.assert_allclose(gx["numba"], gx["torch"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layers["numba"].grad_W, layers["torch"].grad_W, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(layers["numba"].grad_b, layers["torch"].grad_b, rtol=1e-4, atol=1e-3)


def test_auto_backend_by_cost() -> None:
    assert resolve_backend("auto", 10) == "numba"
    assert resolve_backend("auto", AUTO_NUMBA_MAX_MACS) == "torch"
    assert resolve_backend("numba", 10**12) == "numba"
    assert resolve_backend("torch", 1) == "torch"
    with pytest.raises(FabricError):
        resolve_backend("cuda")
    x = _rand((1, 6, 6, 6, 4, 2), 0, np.float32)
    auto = Conv4D(2, 4, seed=1).forward(x, adapt=False)
    numba_y = Conv4D(2, 4, seed=1, backend="numba").forward(x, adapt=False)
    np.testing.assert_array_equal(auto, numba_y)


# --------------------------------------------------------------------------- #
# gradients: central finite differences in float64
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1])
def test_gradients_match_finite_differences(backend: Backend, stride: int, padding: int) -> None:
    layer = Conv4D(
        2,
        3,
        (2, 3, 2, 3),
        stride=stride,
        padding=padding,
        dtype=np.float64,
        seed=3,
        backend=backend,
    )
    state = layer.get_state()
    state["bias"] = _rand((3,), 9)
    state["adaptation"] = np.array([0.0, 0.5, 2.0])  # gain != 1 must flow into the gradients
    layer.set_state(state)
    x = _rand((2, 4, 5, 4, 5, 2), 10)
    y = layer.forward(x, adapt=False)
    r = _rand(y.shape, 11)  # loss = sum(y * r)  =>  dL/dy = r
    gx = layer.backward(r)
    gw, gb = layer.grad_W.copy(), layer.grad_b.copy()

    def loss() -> float:
        return float((layer.forward(x, adapt=False) * r).sum())

    eps = 1e-6

    def fd(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = np.empty_like(arr)
        flat, gflat = arr.reshape(-1), out.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        return out

    np.testing.assert_allclose(gx, fd(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, fd(layer.weight), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, fd(layer.bias), rtol=1e-6, atol=1e-7)


def test_gradients_accumulate_and_reset() -> None:
    layer = Conv4D(2, 3, (2, 2, 2, 2), dtype=np.float64)
    x = _rand((1, 3, 3, 3, 3, 2), 0)
    g = _rand(layer.forward(x).shape, 1)
    layer.backward(g)
    gw1, gb1 = layer.grad_W.copy(), layer.grad_b.copy()
    layer.backward(g)
    np.testing.assert_allclose(layer.grad_W, 2 * gw1)
    np.testing.assert_allclose(layer.grad_b, 2 * gb1)
    layer.zero_grad()
    assert not layer.grad_W.any()
    assert not layer.grad_b.any()


def test_functional_backward_matches_reference_vjp() -> None:
    # grad_x of the reference via its adjoint: <conv(x), g> == <x, grad_x>
    x = _rand((1, 5, 4, 5, 4, 2), 20)
    w = _rand((3, 2, 3, 2, 3, 2), 21)
    s, p = (2, 1, 2, 1), (1, 0, 1, 1)
    y = ref_conv4d(x, w, np.zeros(3), s, p)
    g = _rand(y.shape, 22)
    gx, gw, gb = conv4d_backward(x, w, g, s, p, backend="numba")
    assert np.isclose((y * g).sum(), (x * gx).sum(), rtol=1e-12)
    assert np.isclose((y * g).sum(), (w * gw).sum(), rtol=1e-12)
    np.testing.assert_allclose(gb, g.sum(axis=(0, 1, 2, 3, 4)))


# --------------------------------------------------------------------------- #
# initialisation, adaptation, state
# --------------------------------------------------------------------------- #


def test_he_init_and_seed() -> None:
    layer = Conv4D(4, 16, (3, 3, 3, 3), seed=5)
    assert layer.weight.shape == (16, 4, 3, 3, 3, 3)
    assert layer.weight.dtype == np.float32
    assert layer.bias.shape == (16,)
    std = np.sqrt(2.0 / (4 * 81))
    assert abs(layer.weight.std() / std - 1) < 0.05
    np.testing.assert_array_equal(layer.weight, Conv4D(4, 16, seed=5).weight)
    assert not np.array_equal(layer.weight, Conv4D(4, 16, seed=6).weight)


def test_adaptation_rises_under_strong_input_and_recovers() -> None:
    layer = Conv4D(2, 3, (2, 2, 2, 2), adaptation_rate=0.05, adaptation_recovery=0.1, seed=1)
    x = np.full((1, 4, 4, 4, 4, 2), 3.0, dtype=np.float32)
    history = []
    first_abs = np.abs(layer.forward(x)).mean(axis=(0, 1, 2, 3, 4))
    for _ in range(30):
        history.append(layer.adaptation.copy())
        layer.forward(x)
    history.append(layer.adaptation.copy())
    a = np.array(history)
    assert (np.diff(a, axis=0) > 0).all()  # rises every step
    assert (layer.gain < 1).all()
    # fatigue lowers the response to the same input
    last_abs = np.abs(layer.forward(x, adapt=False)).mean(axis=(0, 1, 2, 3, 4))
    assert (last_abs < first_abs).all()

    peak = layer.adaptation.copy()
    zero = np.zeros_like(x)
    for _ in range(60):
        before = layer.adaptation.copy()
        layer.forward(zero)
        assert (layer.adaptation <= before).all()
    assert (layer.adaptation < 0.01 * peak).all()  # (1 - 0.1) ** 60 ~ 0.002
    assert (layer.adaptation >= 0).all()


def test_adapt_false_and_eval_do_not_mutate() -> None:
    layer = Conv4D(2, 3, (2, 2, 2, 2), seed=1)
    x = _rand((1, 4, 4, 4, 4, 2), 0, np.float32)
    layer.forward(x)  # some non-zero adaptation
    before = layer.get_state()
    y1 = layer.forward(x, adapt=False)
    y2 = layer.forward(x, adapt=False)
    np.testing.assert_array_equal(y1, y2)
    layer.eval()
    layer.forward(x)
    after = layer.get_state()
    for key, value in before.items():
        np.testing.assert_array_equal(value, after[key])
    layer.train()
    layer.forward(x)
    assert not np.array_equal(layer.adaptation, before["adaptation"])


def test_state_round_trip() -> None:
    a = Conv4D(3, 4, (3, 2, 3, 2), seed=1)
    x = _rand((2, 5, 4, 5, 4, 3), 0, np.float32)
    for _ in range(3):
        a.forward(x)
    state = a.get_state()
    assert set(state) == {"weight", "bias", "adaptation"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = Conv4D(3, 4, (3, 2, 3, 2), seed=99)
    b.set_state(state)
    np.testing.assert_array_equal(a.forward(x, adapt=False), b.forward(x, adapt=False))
    # get_state returns copies, set_state copies in
    state["weight"][...] = 0
    assert a.weight.any()
    assert b.weight.any()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("bias"),
        lambda s: s.update(extra=np.zeros(1)),
        lambda s: s.update(weight=np.zeros((1, 2, 3))),
        lambda s: s.update(bias=np.array([np.nan, 0, 0, 0])),
        lambda s: s.update(adaptation=-np.ones(4)),
        lambda s: s.update(bias=np.array(["a", "b", "c", "d"])),
    ],
)
def test_set_state_rejects_bad_state(mutate: Any) -> None:
    layer = Conv4D(3, 4)
    state = layer.get_state()
    mutate(state)
    with pytest.raises(StateError):
        layer.set_state(state)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def _bad_inputs() -> list[tuple[str, Any]]:
    good = np.zeros((1, 4, 4, 4, 4, 2), dtype=np.float32)
    nan = good.copy()
    nan[0, 1, 1, 1, 1, 0] = np.nan
    inf = good.copy()
    inf[0, 0, 0, 0, 0, 1] = np.inf
    return [
        ("list", good.tolist()),
        ("ndim", good[0]),
        ("channels", np.zeros((1, 4, 4, 4, 4, 3), dtype=np.float32)),
        ("dtype64", good.astype(np.float64)),
        ("int", good.astype(np.int32)),
        ("nan", nan),
        ("inf", inf),
        ("too_small", np.zeros((1, 4, 4, 2, 4, 2), dtype=np.float32)),
        ("empty_batch", np.zeros((0, 4, 4, 4, 4, 2), dtype=np.float32)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "x"), _bad_inputs(), ids=[n for n, _ in _bad_inputs()])
def test_bad_inputs_raise_fabric_error(backend: Backend, name: str, x: Any) -> None:
    layer = Conv4D(2, 3, (3, 3, 3, 3), backend=backend)
    before = layer.get_state()
    with pytest.raises(FabricError):
        layer.forward(x)
    np.testing.assert_array_equal(layer.adaptation, before["adaptation"])


def test_backward_errors() -> None:
    layer = Conv4D(2, 3, (2, 2, 2, 2))
    with pytest.raises(FabricError, match="before forward"):
        layer.backward(np.zeros((1, 3, 3, 3, 3, 3), dtype=np.float32))
    y = layer.forward(np.ones((1, 4, 4, 4, 4, 2), dtype=np.float32))
    with pytest.raises(FabricError):
        layer.backward(np.zeros((1, 3, 3, 3, 2, 3), dtype=np.float32))
    bad = np.zeros_like(y)
    bad[0, 0, 0, 0, 0, 0] = np.nan
    with pytest.raises(FabricError):
        layer.backward(bad)
    with pytest.raises(FabricError):
        layer.backward(y.astype(np.float64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"out_channels": -1},
        {"kernel_size": (3, 3, 3)},
        {"kernel_size": 0},
        {"stride": 0},
        {"stride": (1, 1, 1, 1.5)},
        {"padding": -1},
        {"adaptation_rate": -0.1},
        {"adaptation_recovery": 1.5},
        {"adaptation_rate": float("nan")},
        {"dtype": np.int32},
        {"backend": "gpu"},
    ],
)
def test_bad_constructor_args_raise_fabric_error(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"in_channels": 2, "out_channels": 3}
    args.update(kwargs)
    with pytest.raises(FabricError):
        Conv4D(**args)


def test_read_only_input_accepted() -> None:
    x = _rand((1, 4, 4, 4, 4, 2), 0, np.float32)
    x.flags.writeable = False
    for backend in BACKENDS:
        y = Conv4D(2, 3, (2, 2, 2, 2), backend=backend).forward(x)
        assert np.isfinite(y).all()


# --------------------------------------------------------------------------- #
# numba kernels without JIT (pure Python semantics of the same source)
# --------------------------------------------------------------------------- #

_NOJIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from lillith.fabric import _conv4d_kernels, conv4d

    # with NUMBA_DISABLE_JIT=1 the kernels are the plain Python functions
    assert not hasattr(_conv4d_kernels._fwd_kernel, "signatures"), "JIT is active"
    d = np.load(sys.argv[1])
    s, p = tuple(d["stride"]), tuple(d["padding"])
    y = conv4d.conv4d_forward(d["x"], d["w"], d["b"], s, p, gain=d["gain"], backend="numba")
    gx, gw, gb = conv4d.conv4d_backward(d["x"], d["w"], d["g"], s, p, backend="numba")
    np.savez(sys.argv[2], y=y, gx=gx, gw=gw, gb=gb)
    """
)


@pytest.mark.nojit
def test_numba_kernels_match_without_jit(tmp_path: Path) -> None:
    x = _rand((1, 4, 3, 4, 3, 2), 30, np.float32)
    w = _rand((2, 2, 2, 3, 2, 2), 31, np.float32)
    b = _rand((2,), 32, np.float32)
    gain = np.array([0.5, 1.5], dtype=np.float32)
    stride, padding = np.array([2, 1, 2, 1]), np.array([1, 1, 0, 1])
    y = conv4d_forward(x, w, b, tuple(stride), tuple(padding), gain=gain, backend="numba")
    g = _rand(y.shape, 33, np.float32)
    gx, gw, gb = conv4d_backward(x, w, g, tuple(stride), tuple(padding), backend="numba")

    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, x=x, w=w, b=b, gain=gain, g=g, stride=stride, padding=padding)
    run_python(_NOJIT_SCRIPT, str(src), str(dst))
    out = np.load(dst)
    np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["gx"], gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["gw"], gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["gb"], gb, rtol=1e-5, atol=1e-6)
