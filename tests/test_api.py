"""The public API (docs/api.md): every name of ``lillith.__all__`` imports from
``lillith``, is documented, and the seed classes and river's verbs work as the
documentation says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lillith
from lillith import (
    NCP,
    Agent,
    AgentConfig,
    AgentError,
    Conv4D,
    Hierarchical,
    Local3D,
    MultiScale,
    NeuralFabric3D,
    Random,
    SelfOrganizingMap,
    SparseLookupBlockV2,
    SparseLookupFFNv2,
    Wiring,
)

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SMALL = AgentConfig.model_validate({"fabric": {"shape": [3, 3, 4], "n_features": 8},
                                    "som": {"map_shape": [4, 4]}})


def test_every_public_name_imports_and_is_documented() -> None:
    doc = API_DOC.read_text()
    for name in lillith.__all__:
        assert getattr(lillith, name) is not None, name
        assert re.search(rf"`{re.escape(name)}\b", doc), f"{name} is not in docs/api.md"
    with pytest.raises(AttributeError):
        lillith.NoSuchThing  # noqa: B018


def test_importing_lillith_loads_no_torch() -> None:
    code = "import sys, lillith, lillith.sensors.codec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_river_verbs() -> None:
    """``learn_one`` learns one frame (an array or a dict), ``score_one`` is
    side-effect free (river's contract); ``predict_one`` forecasts the next
    frame in input units."""
    agent = Agent(2, SMALL)
    with pytest.raises(AgentError):
        agent.predict_one()
    twin = Agent(2, SMALL)
    rng = np.random.default_rng(0)
    xs = 5.0 + rng.standard_normal((60, 2))
    for x in xs[:40]:
        agent.learn_one({"b": x[1], "a": x[0]})  # keys sorted: a, b
    assert agent.feature_names == ("a", "b")
    ms = twin.process_many(xs)
    scores = []
    for x in xs[40:]:
        before = agent.get_state()
        s = agent.score_one(x)
        assert agent.score_one(x) == s  # asked twice, the same answer ...
        after = agent.get_state()  # ... and the same state
        assert before.keys() == after.keys()
        assert all(np.array_equal(before[k], after[k]) for k in before)
        agent.learn_one(x)
        scores.append(s)
    assert agent.step == twin.step == 60
    assert scores == [m.anomaly_likelihood for m in ms[40:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert agent.predict_one() == ms[-1].prediction  # the forecast of frame 61
    with pytest.raises(AgentError):
        agent.learn_one({"a": 1.0, "c": 2.0})


def test_the_fabric_and_its_wirings() -> None:
    for wiring in (Local3D((3, 3, 4)), MultiScale((3, 3, 4)), Hierarchical((3, 3, 4)),
                   Random((3, 3, 4), fan_in=4), NCP((3, 3, 4))):
        assert isinstance(wiring, Wiring)
        cfg = wiring.to_config()
        assert Wiring.from_config(cfg).to_config() == cfg
        fabric = NeuralFabric3D((3, 3, 4), n_inputs=2, wiring=wiring, n_features=8)
        act = fabric.step(np.ones(2), mode="bidirectional", plasticity=1.0)
        assert act.shape == (36,) and fabric.pooled().shape == (8,)
        assert fabric.activation_map.shape == (3, 3, 4)


def test_the_self_organizing_map() -> None:
    som = SelfOrganizingMap((5, 5), 3, seed=1)
    x = np.random.default_rng(1).standard_normal((200, 3)).astype(np.float32)
    for row in x:
        som.update(row)
    assert 0 <= som.bmu(x[0]) < 25 and som.u_matrix().shape == (5, 5)
    assert som.get_training_status()["step"] == 200


def test_conv4d() -> None:
    conv = Conv4D(2, 3, kernel_size=(3, 3, 1, 2), padding=(1, 1, 0, 0), seed=0)
    y = conv.forward(np.ones((1, 4, 4, 2, 3, 2), dtype=np.float32))
    assert y.shape == conv.output_shape((1, 4, 4, 2, 3, 2))


def test_sparse_lookup_block_and_ffn() -> None:
    block = SparseLookupBlockV2(d_model=16, n_heads=2, num_tiles=4, tiles_per_cluster=2,
                                seed=0)
    out, routing, aux = block(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 16) and routing["tile_idx"].shape == (2, 5)
    assert set(aux) >= {"balance", "total_aux"}
    assert isinstance(block.ffn, SparseLookupFFNv2)
