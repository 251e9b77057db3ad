"""The step kernel's chunked passes: equivalence with the numpy reference on
fabrics that span several chunks (``_fabric_kernels.CHUNK``), serial and parallel.

The reference tests of test_fabric.py use fabrics smaller than one chunk; a
neuron skipped or updated twice at a chunk boundary would pass them and also
the serial/parallel comparison (both builds chunk alike), but not these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lillith.fabric import _fabric_kernels as K
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.wiring import Hierarchical, Local3D

from .fabric_reference import reference_step

FLOAT_KEYS = ("v", "m_na", "n_k", "c_ca", "vb", "cab", "hot", "ref", "adapt", "theta", "act", "w")
SHAPE = (7, 5, 10)  # 350 neurons: chunk boundaries inside z-layers, last chunk not full


def _assert_state_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    # the tolerances of test_fabric.test_numba_step_matches_numpy_reference
    for k in FLOAT_KEYS:
        g, w = got[k], want[k]
        if k == "hot":  # stored traces are scaled by a global gain
            g, w = g * float(got["hot_gain"]), w * float(want["hot_gain"])
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4, err_msg=k)
    for k in ("gate_logit", "gate_val"):
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-4, err_msg=k)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("wiring_name", ["local", "gated"])
@pytest.mark.parametrize("mode", ["normal", "random", "intentional", "bidirectional"])
def test_step_over_several_chunks_matches_reference(mode: str, wiring_name: str,
                                                    parallel: bool) -> None:
    wiring = {
        "local": Local3D(SHAPE, seed=1),
        "gated": Hierarchical(SHAPE, feedback=True, skip=True, skip_gates=True, seed=3),
    }[wiring_name]
    f = NeuralFabric3D(SHAPE, n_inputs=3, wiring=wiring, seed=5, parallel=parallel)
    n_chunks = -(-f.n // K.CHUNK)
    assert n_chunks >= 3
    edges = [c * f.n // n_chunks for c in range(1, n_chunks)]  # first neuron of a chunk
    rng = np.random.default_rng(0)
    goal = rng.random(f.n).astype(np.float32)
    active = 0
    for t in range(25):
        x = (3.0 * rng.standard_normal(f.n_inputs)).astype(np.float32)
        if t in (5, 6):
            for i in edges:  # one-shot inputs on both sides of every chunk boundary
                f.add_synaptic_input(i - 1, 1, 2, 1.5, 0.8)
                f.add_synaptic_input(i, 3, 0, -1.0, 0.5)
        before = f.get_state()
        want = reference_step(before, x.astype(np.float64), f.params, mode=mode, goal=goal,
                              plasticity=1.5, seed=5)
        f.step(x, mode=mode, goal=goal, plasticity=1.5)  # type: ignore[arg-type]
        _assert_state_close(f.get_state(), want)
        active += int((f.act[edges[0]:] > 0).sum())
    assert f.n_gates > 0 or wiring_name == "local"
    assert active > 0, "no neuron beyond the first chunk was ever active"


def test_serial_and_parallel_agree_over_several_chunks() -> None:
    a = NeuralFabric3D(SHAPE, n_inputs=3, seed=4, parallel=False)
    b = NeuralFabric3D(SHAPE, n_inputs=3, seed=4, parallel=True)
    rng = np.random.default_rng(2)
    for t in range(40):
        x = 2.0 * rng.standard_normal(3)
        mode = ("normal", "random", "bidirectional")[t % 3]
        a.step(x, mode=mode)  # type: ignore[arg-type]
        b.step(x, mode=mode)  # type: ignore[arg-type]
    for k in FLOAT_KEYS:
        np.testing.assert_allclose(a.get_state()[k], b.get_state()[k], rtol=1e-3, atol=1e-4,
                                   err_msg=k)
