"""The numba training step (TilePredictor.fit_batch) against torch autograd + Adam."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.agents.agent import Agent, AgentError
from lillith.agents.config import AgentConfig
from lillith.agents.predictor import TilePredictor

NAMES = ["proj.weight", "proj.bias", "ffn.norm_weight", "ffn.norm_bias", "ffn.compress_w1",
         "ffn.compress_b1", "ffn.compress_w2", "ffn.compress_b2", "ffn.signatures_raw",
         "ffn.w1", "ffn.b1", "ffn.w2", "ffn.b2", "ffn.calibration.logits", "head.weight",
         "head.bias"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _setup(*, channels: int = 2, n: int = 15, seed: int = 0, calibration: bool = True,
           frozen: tuple[int, ...] = (), spread: float = 1.0, **predictor: Any
           ) -> tuple[TilePredictor, np.ndarray, np.ndarray, np.ndarray]:
    """A predictor with every parameter moved off its initial value, and a batch."""
    cfg = AgentConfig(seed=seed, predictor=AgentConfig().predictor.model_copy(update=predictor))
    agent = Agent(channels, cfg)
    p = agent.predictor
    if not calibration:
        p.ffn.calibration = None
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(0.2 * torch.randn(q.shape, generator=gen))
    for t in frozen:
        p.ffn.freeze_signature(t)
    rng = np.random.default_rng(seed)
    feats = (spread * rng.standard_normal((n, agent.feat_dim))).astype(np.float32)
    last = rng.standard_normal((n, channels)).astype(np.float32)
    target = (last + rng.standard_normal((n, channels))).astype(np.float32)
    return p, feats, last, target


def _torch_step(p: TilePredictor, opt: torch.optim.Optimizer, feats: np.ndarray,
                last: np.ndarray, target: np.ndarray, aux_weight: float,
                grad_clip: float) -> float:
    pred, aux = p(torch.from_numpy(feats), torch.from_numpy(last))
    loss = (torch.nn.functional.huber_loss(pred, torch.from_numpy(target), delta=1.0)
            + aux_weight * aux["total_aux"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(p.parameters(), grad_clip)
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("case", [
    {},
    {"frozen": (0, 5, 6)},
    {"calibration": False},
    {"channels": 1, "n": 1},
    {"n": 40, "spread": 4.0},  # large inputs: saturated tanh
    {"num_tiles": 6, "tiles_per_cluster": 3, "d_model": 12},
    {"num_tiles": 1, "tiles_per_cluster": 1},  # one tile: no routing choice, no diversity
    {"num_tiles": 4, "tiles_per_cluster": 4},  # one cluster
])
def test_gradient_matches_autograd(case: dict[str, Any]) -> None:
    p, feats, last, target = _setup(**case)
    ref = copy.deepcopy(p)
    pred, aux = ref(torch.from_numpy(feats), torch.from_numpy(last))
    loss = (torch.nn.functional.huber_loss(pred, torch.from_numpy(target), delta=1.0)
            + 0.01 * aux["total_aux"])
    loss.backward()
    opt = torch.optim.Adam(p.parameters(), lr=1e-3, fused=True)
    got = p.fit_batch(feats, last, target, optimizer=opt, aux_weight=0.01, grad_clip=1e9)
    assert got == pytest.approx(float(loss.detach()), rel=1e-5)
    named = dict(ref.named_parameters())
    names = [k for k in NAMES if k in named]
    assert p._grads is not None and len(p._grads) == len(names)
    for name, g in zip(names, p._grads, strict=True):
        want = named[name].grad
        assert want is not None, name
        scale = float(want.abs().max()) + 1e-12
        np.testing.assert_allclose(g, want.numpy(), rtol=0, atol=2e-5 * scale, err_msg=name)
        assert np.abs(want.numpy()).max() > 0 or name == "ffn.signatures_raw", name
    for t in case.get("frozen", ()):
        assert not p._grads[8][t].any()  # a frozen signature takes no gradient


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_steps_match_torch_adam_with_clipping(weight_decay: float) -> None:
    """Five steps (clipping active, lr as the agent sets it): parameters, Adam's
    state and the tile usage counters follow torch's own step."""
    p, feats, last, target = _setup(frozen=(2,))
    q = copy.deepcopy(p)
    opt_p = torch.optim.Adam(p.parameters(), lr=5e-3, weight_decay=weight_decay, fused=True)
    opt_q = torch.optim.Adam(q.parameters(), lr=5e-3, weight_decay=weight_decay, fused=True)
    rng = np.random.default_rng(9)
    for k in range(5):
        f = (feats + 0.1 * rng.standard_normal(feats.shape)).astype(np.float32)
        for o in (opt_p, opt_q):
            o.param_groups[0]["lr"] = 5e-3 * (1 + k) / 5
        a = p.fit_batch(f, last, target, optimizer=opt_p, aux_weight=0.01, grad_clip=0.05)
        b = _torch_step(q, opt_q, f, last, target, 0.01, 0.05)
        assert a == pytest.approx(b, rel=1e-4)
    for (name, x), y in zip(p.named_parameters(), q.parameters(), strict=True):
        np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), rtol=0, atol=2e-6,
                                   err_msg=name)
        sp, sq = opt_p.state[x], opt_q.state[y]
        assert sp["step"].dtype == sq["step"].dtype and float(sp["step"]) == 5.0
        for key in ("exp_avg", "exp_avg_sq"):
            scale = float(sq[key].abs().max()) + 1e-12
            np.testing.assert_allclose(sp[key].numpy(), sq[key].numpy(), rtol=0,
                                       atol=1e-4 * scale, err_msg=f"{name} {key}")
    assert torch.equal(p.ffn.usage_counts, q.ffn.usage_counts)
    torch.testing.assert_close(p.ffn.usage_ema, q.ffn.usage_ema)
    assert p.ffn._forward_calls == q.ffn._forward_calls
    # and the state is torch's: the torch step continues from it
    opt_q.load_state_dict(opt_p.state_dict())


@settings(max_examples=25, deadline=None)
@given(scale=st.sampled_from([1e-6, 1.0, 1e3, 1e6]), n=st.integers(1, 20),
       seed=st.integers(0, 2**16), clip=st.sampled_from([1e-3, 1.0, 1e6]))
def test_extreme_batches_keep_everything_finite(scale: float, n: int, seed: int,
                                                clip: float) -> None:
    """Huge or tiny inputs and targets: the loss, every gradient and every
    parameter after the step stay finite (tanh saturates, Huber bounds the
    error's gradient, clipping bounds the step)."""
    p, feats, last, target = _setup(n=n, seed=seed, spread=scale)
    target = (target * scale).astype(np.float32)
    opt = torch.optim.Adam(p.parameters(), lr=1e-2, fused=True)
    loss = p.fit_batch(feats, last, target, optimizer=opt, aux_weight=0.01, grad_clip=clip)
    assert np.isfinite(loss)
    assert p._grads is not None and all(np.isfinite(g).all() for g in p._grads)
    assert all(torch.isfinite(q).all() for q in p.parameters())


def test_refuses_what_it_does_not_implement() -> None:
    p, feats, last, target = _setup()
    opt = torch.optim.Adam(p.parameters(), amsgrad=True)
    with pytest.raises(AgentError):
        p.fit_batch(feats, last, target, optimizer=opt, aux_weight=0.01, grad_clip=1.0)
    p.ffn.configure_fitness(track=True)
    assert not p.fits_fast


def test_agent_trains_like_the_torch_step() -> None:
    """An agent on the numba step and one on autograd (fits_fast off) learn the
    same stream to the same forecasts, within float drift."""
    t = np.arange(600)
    X = (10 + 3 * np.sin(2 * np.pi * t / 40)
         + 0.2 * np.random.default_rng(0).standard_normal(600))[:, None]
    fast = Agent(1, AgentConfig(seed=5))
    slow = Agent(1, AgentConfig(seed=5))
    slow_cls = type("TorchOnly", (TilePredictor,), {"fits_fast": property(lambda s: False)})
    slow.predictor.__class__ = slow_cls
    a = fast.process_many(X)
    b = slow.process_many(X)
    assert fast.total_updates == slow.total_updates > 30
    pa = np.array([m.prediction[0] for m in a])
    pb = np.array([m.prediction[0] for m in b])
    np.testing.assert_allclose(pa[:100], pb[:100], rtol=0, atol=1e-3)
    late = np.abs(pa[-200:] - pb[-200:])
    assert np.median(late) < 0.05 * X.std()
    loss_a = np.mean([m.loss for m in a[-200:]])
    loss_b = np.mean([m.loss for m in b[-200:]])
    assert loss_a == pytest.approx(loss_b, rel=0.2)


NOJIT_SCRIPT = """
import sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from test_fit_batch import _setup
p, feats, last, target = _setup(n=3, channels=1, frozen=(1,), num_tiles=4,
                                tiles_per_cluster=2, d_model=8)
opt = torch.optim.Adam(p.parameters(), lr=1e-2, fused=True)
for _ in range(2):
    p.fit_batch(feats, last, target, optimizer=opt, aux_weight=0.01, grad_clip=0.5)
np.savez(sys.argv[1], *[q.detach().numpy() for q in p.parameters()])
"""


@pytest.mark.nojit
def test_kernels_without_jit_match_compiled(tmp_path: Any) -> None:
    from pathlib import Path

    from .nojit import run_python

    here = str(Path(__file__).resolve().parent)
    outs = {}
    for jit in (False, True):
        path = tmp_path / f"p{int(jit)}.npz"
        run_python(NOJIT_SCRIPT, str(path), here, jit=jit)
        outs[jit] = dict(np.load(path))
    for k in outs[True]:
        np.testing.assert_allclose(outs[True][k], outs[False][k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)
