"""Tests for the sparse-lookup tile FFN (``lillith.agents.tiles``)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.agents.tiles import (
    ScoreCalibrationSpline,
    SparseLookupBlockV2,
    SparseLookupFFNv2,
    TileError,
    reset_optimizer_moments,
)
from lillith.errors import LillithError, StateError

D = 16


@pytest.fixture(autouse=True)
def _seed_global_rng() -> None:
    """Inputs drawn from the global RNG are reproducible test to test."""
    torch.manual_seed(1234)


def make_ffn(**kw: Any) -> SparseLookupFFNv2:
    args: dict[str, Any] = {
        "d_model": D,
        "num_tiles": 8,
        "tiles_per_cluster": 4,
        "seed": 0,
    }
    args.update(kw)
    return SparseLookupFFNv2(**args)


def no_aux() -> dict[str, float]:
    return {
        "ternary_weight": 0.0,
        "sparsity_weight": 0.0,
        "diversity_weight": 0.0,
        "balance_weight": 0.0,
    }


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(5, D), (1, D), (2, 7, D)])
def test_forward_shapes(shape: tuple[int, ...]) -> None:
    ffn = make_ffn()
    x = torch.randn(*shape)
    out, info, aux = ffn(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    for key in ("tile_idx", "cluster_idx", "gate", "score", "prob"):
        assert info[key].shape == shape[:-1], key
    assert info["tile_idx"].dtype == torch.int64
    assert torch.equal(info["cluster_idx"], info["tile_idx"] // ffn.tiles_per_cluster)
    assert bool(((info["gate"] > 0) & (info["gate"] < 1)).all())
    assert bool((info["prob"] >= 1.0 / ffn.num_tiles - 1e-6).all())
    assert set(aux) == {"balance", "ternary", "sparsity", "diversity", "total_aux"}
    for v in aux.values():
        assert v.shape == () and bool(torch.isfinite(v))
    parts = aux["balance"] + aux["ternary"] + aux["sparsity"] + aux["diversity"]
    assert torch.allclose(aux["total_aux"], parts)


@pytest.mark.parametrize("kw", [{}, {"input_norm": False}, {"use_score_calibration": False},
                                {"temperature": 0.3, "tiles_per_cluster": 2}])
def test_numpy_inference_matches_forward(kw: dict[str, Any]) -> None:
    """``infer`` (numpy, the agent's per-frame pass) gives forward's output, also
    with a frozen signature and after training moved every parameter."""
    ffn = make_ffn(**kw)
    opt = torch.optim.Adam(ffn.parameters(), lr=0.05)
    for _ in range(20):
        out, _, aux = ffn(torch.randn(32, D))
        (out.square().mean() + aux["total_aux"]).backward()
        opt.step()
        opt.zero_grad()
    ffn.insert_signature(1, torch.randn(D), freeze=True)
    x = torch.randn(64, D)
    ffn.eval()
    with torch.no_grad():
        ref, info, _ = ffn(x, track=False)
    got = ffn.infer(x.numpy())
    assert got.dtype == np.float32 and got.shape == (64, D)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert len(set(info["tile_idx"].tolist())) > 1  # several tiles took part
    # each row's result depends on that row alone, bit for bit (the agent's
    # forecasts are the same however a stream is cut into calls)
    for r in (0, 17, 63):
        alone = np.zeros_like(x.numpy())
        alone[r] = x.numpy()[r]
        assert np.array_equal(ffn.infer(alone)[r], got[r])


def test_aux_entries_are_weighted() -> None:
    ffn = make_ffn(ternary_weight=0.5, sparsity_weight=0.0, diversity_weight=2.0)
    _, _, aux = ffn(torch.randn(4, D))
    assert torch.allclose(aux["ternary"], 0.5 * ffn.compute_ternary_loss())
    assert float(aux["sparsity"]) == 0.0
    assert torch.allclose(aux["diversity"], 2.0 * ffn.compute_diversity_loss())
    # balance is 1 for a perfectly uniform router and >= 0 always
    assert float(aux["balance"].detach()) > 0.0


def test_routing_is_hierarchical_top1() -> None:
    ffn = make_ffn(num_tiles=12, tiles_per_cluster=3)
    x = torch.randn(50, D)
    _, info, _ = ffn(x)
    with torch.no_grad():
        xn = F.layer_norm(x, (D,), ffn.norm_weight, ffn.norm_bias)
        code = F.linear(
            F.silu(F.linear(xn, ffn.compress_w1, ffn.compress_b1)), ffn.compress_w2, ffn.compress_b2
        )
        dots = code @ ffn.signatures.t()
        cluster = dots.view(50, 4, 3).mean(-1).argmax(-1)
        within = dots.view(50, 4, 3)[torch.arange(50), cluster].argmax(-1)
    assert torch.equal(info["cluster_idx"], cluster)
    assert torch.equal(info["tile_idx"], cluster * 3 + within)


def test_block_shapes_and_causality() -> None:
    block = SparseLookupBlockV2(d_model=D, n_heads=4, num_tiles=8, tiles_per_cluster=4, seed=1)
    block.eval()
    x = torch.randn(2, 6, D)
    out, info, aux = block(x)
    assert out.shape == x.shape
    assert info["tile_idx"].shape == (2, 6)
    assert "total_aux" in aux
    out2d, info2d, _ = block(x[0])
    assert out2d.shape == (6, D) and info2d["tile_idx"].shape == (6,)
    assert torch.allclose(out2d, out[0], atol=1e-6)
    # causal: changing the last token leaves earlier outputs unchanged
    y = x.clone()
    y[:, -1] += 3.0
    out_y, _, _ = block(y, is_causal=True)
    assert torch.equal(out_y[:, :-1], out[:, :-1])
    out_nc, _, _ = block(y, is_causal=False)
    assert not torch.allclose(out_nc[:, :-1], out[:, :-1])
    # surgery through block.ffn, gradients through the whole block
    sig = torch.zeros(D)
    sig[:4] = 1.0
    block.ffn.insert_signature(0, sig, freeze=True, tag="concept")
    assert block.ffn.is_frozen(0)
    block.train()
    out, _, aux = block(x, labels=torch.randint(0, 3, (2, 6)))
    (out.square().mean() + aux["total_aux"]).backward()
    assert block.qkv_weight.grad is not None and bool(block.qkv_weight.grad.abs().sum() > 0)
    assert block.ffn.signatures_raw.grad is not None


def test_block_state_round_trip() -> None:
    a = SparseLookupBlockV2(d_model=D, n_heads=2, num_tiles=8, tiles_per_cluster=4, seed=3)
    b = SparseLookupBlockV2(d_model=D, n_heads=2, num_tiles=8, tiles_per_cluster=4, seed=4)
    a.eval()
    b.eval()
    a.ffn.insert_signature(2, torch.ones(D), tag="x")
    x = torch.randn(2, 5, D)
    assert not torch.equal(a(x)[0], b(x)[0])
    b.set_state(a.get_state())
    assert torch.equal(a(x)[0], b(x)[0])
    assert b.ffn.get_surgery_history() == a.ffn.get_surgery_history()


# --------------------------------------------------------------------------- errors


def test_constructor_errors() -> None:
    with pytest.raises(TileError) as e:
        SparseLookupFFNv2(d_model=D, num_tiles=10, tiles_per_cluster=4)
    assert isinstance(e.value, LillithError)
    assert e.value.fields["num_tiles"] == 10
    for kw in (
        {"dropout": 1.0},
        {"temperature": 0.0},
        {"ternary_weight": -1.0},
        {"grid_size": 1},
        {"d_model": 0},
        {"tile_hidden": 0},
        {"num_tiles": True},
    ):
        with pytest.raises(TileError):
            make_ffn(**kw)
    with pytest.raises(TileError):
        SparseLookupBlockV2(d_model=10, n_heads=4, num_tiles=8, tiles_per_cluster=4)
    with pytest.raises(TileError):
        ScoreCalibrationSpline(num_knots=1)


def test_input_errors() -> None:
    ffn = make_ffn()
    for bad in (torch.randn(D), torch.randn(2, 3, 4, D), torch.randn(4, D + 1), torch.randn(0, D)):
        with pytest.raises(TileError):
            ffn(bad)
    x = torch.randn(2, 3, D)
    with pytest.raises(TileError):
        ffn(x, labels=torch.zeros(6, dtype=torch.int64))
    with pytest.raises(TileError):
        ffn(x, labels=torch.zeros(2, 3))
    block = SparseLookupBlockV2(d_model=D, n_heads=2, num_tiles=8, tiles_per_cluster=4)
    with pytest.raises(TileError):
        block(torch.randn(3, D + 1))


@pytest.mark.parametrize("bad", [-1, 8, 100, 1.5, True, "0"])
def test_bad_tile_index(bad: Any) -> None:
    ffn = make_ffn()
    sig = torch.zeros(D)
    calls: list[Callable[[], object]] = [
        lambda: ffn.insert_signature(bad, sig),
        lambda: ffn.freeze_signature(bad),
        lambda: ffn.unfreeze_signature(bad),
        lambda: ffn.is_frozen(bad),
        lambda: ffn.get_signature_analysis(bad),
        lambda: ffn.get_claim_rate(bad, 0),
        lambda: ffn.get_tile_purity(bad),
        lambda: ffn.reseed_tile(bad),
    ]
    for call in calls:
        with pytest.raises(TileError):
            call()
    assert ffn.get_surgery_history() == []


def test_bad_signature() -> None:
    ffn = make_ffn()
    with pytest.raises(TileError):
        ffn.insert_signature(0, torch.zeros(D + 1))
    with pytest.raises(TileError):
        ffn.insert_signature(0, torch.zeros(2, D))
    bad = torch.zeros(D)
    bad[3] = float("nan")
    with pytest.raises(TileError):
        ffn.insert_signature(0, bad)
    with pytest.raises(TileError):
        ffn.get_claim_rate(0, -1)
    with pytest.raises(TileError):
        ffn.get_claim_rate(0, 1.5)  # type: ignore[arg-type]
    assert not ffn.is_frozen(0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("router_grad", ["mixture", "straight_through"])
@pytest.mark.parametrize("calibrate", [True, False])
def test_task_loss_reaches_routing(calibrate: bool, router_grad: str) -> None:
    ffn = make_ffn(
        use_score_calibration=calibrate, dropout=0.0, router_grad=router_grad, **no_aux()
    )
    x = torch.randn(2, 5, D)
    target = torch.randn(2, 5, D)
    out, _, aux = ffn(x)
    assert float(aux["total_aux"]) == 0.0
    F.mse_loss(out, target).backward()
    named = {
        "signatures_raw": ffn.signatures_raw,
        "compress_w1": ffn.compress_w1,
        "compress_w2": ffn.compress_w2,
        "w1": ffn.w1,
        "w2": ffn.w2,
    }
    if calibrate:
        assert ffn.calibration is not None
        named["calibration.logits"] = ffn.calibration.logits
    for name, p in named.items():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0.0, name
    # signatures of tiles that were not chosen get gradient too (through the
    # route probabilities)
    g = ffn.signatures_raw.grad
    assert g is not None
    chosen = set(ffn(x, track=False)[1]["tile_idx"].flatten().tolist())
    unchosen = [t for t in range(ffn.num_tiles) if t not in chosen]
    assert unchosen and all(float(g[t].abs().sum()) > 0.0 for t in unchosen)


def test_router_grad_changes_only_gradients() -> None:
    a = make_ffn(seed=4, dropout=0.0)
    b = make_ffn(seed=4, dropout=0.0, router_grad="straight_through")
    x = torch.randn(3, 9, D)
    oa, ia, _ = a(x)
    ob, ib, _ = b(x)
    assert torch.equal(oa, ob)
    assert torch.equal(ia["gate"], ib["gate"])
    with torch.no_grad():
        assert torch.equal(a(x)[0], oa)
    with pytest.raises(TileError):
        make_ffn(router_grad="soft")


def test_score_calibration_spline() -> None:
    spline = ScoreCalibrationSpline(num_knots=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        spline.logits.copy_(torch.randn(9, generator=gen))
    scores = torch.randn(32, 64, generator=gen) * 2
    gates = spline(scores)
    assert gates.shape == scores.shape
    assert bool(((gates > 0) & (gates < 1)).all())
    # non-decreasing exactly (in float32), for many random parameter draws
    grid = torch.cat((torch.linspace(-3, 3, 1001), torch.randn(3000, generator=gen))).sort()[0]
    for _ in range(100):
        with torch.no_grad():
            spline.logits.copy_(torch.randn(9, generator=gen) * 3)
        g = spline(grid)
        assert bool((g[1:] >= g[:-1]).all())
        assert bool(((g >= 0) & (g <= 1)).all())
    knots = spline.knot_values()
    assert bool((knots[1:] > knots[:-1]).all())
    assert torch.allclose(spline(spline.knot_positions()), knots, atol=1e-6)
    assert spline(torch.tensor(0.3)).shape == ()
    assert spline(torch.randn(2, 3, 4, dtype=torch.float64)).dtype == torch.float64
    x = torch.randn(10, requires_grad=True)
    spline(x * 0.5).sum().backward()
    assert spline.logits.grad is not None and float(spline.logits.grad.abs().sum()) > 0
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- surgery


def test_insert_signature_exact_and_analysis() -> None:
    ffn = make_ffn()
    sig = torch.zeros(D)
    sig[:5] = 1.0
    sig[5:8] = -1.0
    sig[8] = 0.123456789
    ffn.insert_signature(2, sig, freeze=True, tag="concept")
    assert torch.equal(ffn.signatures[2], sig)
    assert ffn.is_frozen(2)
    a = ffn.get_signature_analysis(2)
    assert a == {
        "tile_idx": 2,
        "positive_dims": [0, 1, 2, 3, 4],
        "negative_dims": [5, 6, 7],
        "zero_count": D - 8,
        "frozen": True,
    }
    ffn.insert_signature(3, np.full(D, 0.25, dtype=np.float32), freeze=False)
    assert not ffn.is_frozen(3)
    assert torch.equal(ffn.signatures[3], torch.full((D,), 0.25))
    assert torch.equal(ffn.signatures_raw[3].detach(), torch.full((D,), 0.25))
    ffn(torch.randn(3, D))
    ffn.freeze_signature(3)
    ffn.unfreeze_signature(2)
    hist = ffn.get_surgery_history()
    assert [(h["op"], h["tile_idx"], h["tag"]) for h in hist] == [
        ("insert", 2, "concept"),
        ("insert", 3, ""),
        ("freeze", 3, ""),
        ("unfreeze", 2, ""),
    ]
    assert [h["step"] for h in hist] == [0, 0, 1, 1]
    assert [h["seq"] for h in hist] == [0, 1, 2, 3]
    # unfreezing restarts the raw parameter from the frozen value
    assert torch.equal(ffn.signatures_raw[2].detach(), sig)


def train_steps(
    ffn: SparseLookupFFNv2,
    opt: torch.optim.Optimizer,
    steps: int,
    gen: torch.Generator,
    labels: bool = False,
) -> None:
    for _ in range(steps):
        x = torch.randn(24, D, generator=gen)
        target = torch.tanh(x.flip(-1) * 2.0)
        lab = (x[:, 0] > 0).long() if labels else None
        out, _, aux = ffn(x, labels=lab)
        loss = F.mse_loss(out, target) + aux["total_aux"]
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("opt_name", ["adam", "adamw"])
def test_frozen_means_frozen(opt_name: str) -> None:
    weights = {
        "ternary_weight": 0.1,
        "sparsity_weight": 0.1,
        "diversity_weight": 0.1,
        "balance_weight": 0.1,
    }
    ffn = make_ffn(**weights)
    opt: torch.optim.Optimizer
    if opt_name == "adam":
        opt = torch.optim.Adam(ffn.parameters(), lr=1e-2)
    else:
        opt = torch.optim.AdamW(ffn.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(5)
    train_steps(ffn, opt, 20, gen)  # build up optimizer momentum on every signature
    designed = torch.zeros(D)
    designed[:4] = 1.0
    designed[4:6] = -1.0
    ffn.insert_signature(0, designed, freeze=True, tag="designed")
    ffn.freeze_signature(5)
    learned = ffn.signatures[5].clone()
    others = ffn.signatures.clone()
    train_steps(ffn, opt, 200, gen, labels=True)
    sigs = ffn.signatures
    assert float((sigs[0] - designed).abs().max()) == 0.0
    assert float((sigs[5] - learned).abs().max()) == 0.0
    # the optimizer did move the raw rows (momentum / weight decay): the
    # effective-signature indirection is what keeps them exact
    assert not torch.equal(ffn.signatures_raw[5].detach(), learned)
    # unfrozen tiles did learn
    assert not torch.equal(sigs[1], others[1])
    state = ffn.get_state()
    assert np.array_equal(state["frozen_values"][0], designed.numpy())
    assert ffn.get_routing_stats()["frozen_tiles"] == 2
    assert ffn.get_signature_analysis(0)["positive_dims"] == [0, 1, 2, 3]
    # unfreeze: starts from the frozen value, then moves
    ffn.unfreeze_signature(5)
    assert torch.equal(ffn.signatures[5], learned)
    train_steps(ffn, opt, 20, gen)
    assert float((ffn.signatures[5] - learned).abs().max()) > 0.0
    assert float((ffn.signatures[0] - designed).abs().max()) == 0.0


def test_reseed_tile() -> None:
    ffn = make_ffn()
    ffn.insert_signature(4, torch.ones(D), freeze=True)
    ffn(torch.randn(40, D), labels=torch.randint(0, 2, (40,)))
    w1 = ffn.w1[4].detach().clone()
    ffn.reseed_tile(4)
    assert not ffn.is_frozen(4)
    assert not torch.equal(ffn.w1[4].detach(), w1)
    assert not torch.equal(ffn.signatures[4], torch.ones(D))
    assert ffn.get_routing_stats()["usage"][4] == 0.0
    assert ffn.tile_usage()[4] == pytest.approx(1.0 / 8)
    assert ffn.get_tile_purity(4) == (-1, 0.0)
    sig = torch.linspace(-1, 1, D)
    ffn.reseed_tile(1, signature=sig)
    assert torch.equal(ffn.signatures[1], sig)
    assert [h["op"] for h in ffn.get_surgery_history()][-2:] == ["reseed", "reseed"]


# --------------------------------------------------------------------------- regularisers


def optimise_alone(ffn: SparseLookupFFNv2, loss_fn: Callable[[], torch.Tensor]) -> list[float]:
    opt = torch.optim.Adam([ffn.signatures_raw], lr=1e-2)
    losses = []
    for _ in range(150):
        loss = loss_fn()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    losses.append(float(loss_fn().detach()))
    return losses


def test_ternary_regulariser() -> None:
    ffn = make_ffn()
    before = ffn.get_island_stats()["ternary_fraction"]
    losses = optimise_alone(ffn, ffn.compute_ternary_loss)
    assert losses[-1] < 0.1 * losses[0]
    after = ffn.get_island_stats()["ternary_fraction"]
    assert after > 0.9 and after > before + 0.3
    s = ffn.signatures
    assert float((s - s.round().clamp(-1, 1)).abs().mean()) < 0.05


def test_sparsity_regulariser() -> None:
    ffn = make_ffn()
    before = ffn.get_island_stats()["sparsity"]
    losses = optimise_alone(ffn, ffn.compute_sparsity_loss)
    assert losses[-1] < 0.2 * losses[0]
    assert ffn.get_island_stats()["sparsity"] > before + 0.3


def test_diversity_regulariser() -> None:
    ffn = make_ffn()
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(D, generator=gen)
    for t in range(ffn.num_tiles):
        ffn.insert_signature(t, base + 0.3 * torch.randn(D, generator=gen), freeze=False)
    before = ffn.get_island_stats()
    losses = optimise_alone(ffn, ffn.compute_diversity_loss)
    after = ffn.get_island_stats()
    assert losses[-1] < 0.5 * losses[0]
    assert after["mean_pairwise_similarity"] < before["mean_pairwise_similarity"] - 0.3
    assert after["diversity"] == pytest.approx(1.0 - after["mean_pairwise_similarity"])


def test_frozen_rows_get_no_regulariser_gradient() -> None:
    ffn = make_ffn()
    ffn.freeze_signature(3)
    (
        ffn.compute_ternary_loss() + ffn.compute_sparsity_loss() + ffn.compute_diversity_loss()
    ).backward()
    g = ffn.signatures_raw.grad
    assert g is not None
    assert float(g[3].abs().sum()) == 0.0
    assert float(g[2].abs().sum()) > 0.0


# --------------------------------------------------------------------------- stats


def test_island_stats_measure_raw_values() -> None:
    ffn = make_ffn()
    for t in range(ffn.num_tiles):
        ffn.insert_signature(t, torch.full((D,), 0.4), freeze=False)
    s = ffn.get_island_stats()
    assert s["ternary_fraction"] == 0.0
    assert s["sparsity"] == 0.0
    assert s["mean_pairwise_similarity"] == pytest.approx(1.0)
    assert s["diversity"] == pytest.approx(0.0, abs=1e-9)
    # exact ternary, half zeros; tiles pairwise orthogonal
    for t in range(ffn.num_tiles):
        sig = torch.zeros(D)
        sig[2 * t] = 1.0
        sig[2 * t + 1] = -1.0 if t % 2 else 1.0
        ffn.insert_signature(t, sig, freeze=t < 3)
    s = ffn.get_island_stats()
    assert s["ternary_fraction"] == 1.0
    assert s["sparsity"] == pytest.approx(1.0 - 2.0 / D)
    assert s["mean_pairwise_similarity"] == pytest.approx(0.0, abs=1e-9)
    assert s["diversity"] == pytest.approx(1.0)
    # near-ternary values within the tolerance still count
    ffn.insert_signature(0, torch.full((D,), 0.95), freeze=False)
    assert ffn.get_island_stats()["ternary_fraction"] == 1.0


def test_routing_stats_counts() -> None:
    ffn = make_ffn(usage_decay=0.5)
    ffn.freeze_signature(1)
    ffn.freeze_signature(6)
    stats = ffn.get_routing_stats()
    assert stats["total_tokens"] == 0 and stats["active_tiles"] == 0
    assert stats["num_clusters"] == 2 and stats["frozen_tiles"] == 2
    seen: list[int] = []
    for n in (5, 11, 30):
        _, info, _ = ffn(torch.randn(n, D) * 3)
        seen += info["tile_idx"].tolist()
    ffn(torch.randn(4, D), track=False)
    stats = ffn.get_routing_stats()
    counts = np.bincount(seen, minlength=8)
    assert stats["total_tokens"] == 46
    assert stats["active_tiles"] == int(np.count_nonzero(counts))
    assert np.allclose(stats["usage"], counts / 46)
    assert stats["usage_mean"] == pytest.approx(1.0 / 8)
    assert stats["usage_std"] == pytest.approx(float(np.std(counts / 46)))
    ema = ffn.tile_usage()
    assert ema.shape == (8,) and ema.dtype == np.float64
    assert ema.sum() == pytest.approx(1.0, abs=1e-5)
    ffn.reset_stats()
    stats = ffn.get_routing_stats()
    assert stats["total_tokens"] == 0 and stats["active_tiles"] == 0
    assert np.allclose(ffn.tile_usage(), 1.0 / 8)
    assert stats["frozen_tiles"] == 2


def test_usage_ema_recurrence() -> None:
    ffn = make_ffn(usage_decay=0.5)
    ema = np.full(8, 1.0 / 8)
    for n in (5, 11, 30):
        _, info, _ = ffn(torch.randn(n, D))
        ema = 0.5 * ema + 0.5 * np.bincount(info["tile_idx"].numpy(), minlength=8) / n
        assert np.allclose(ffn.tile_usage(), ema, atol=1e-6)


# --------------------------------------------------------------------------- claims


def test_claim_tracking_bookkeeping() -> None:
    ffn = make_ffn()
    assert ffn.get_tile_purity(0) == (-1, 0.0)
    assert ffn.get_claim_rate(0, 0) == 0.0
    x = torch.randn(3, 10, D)
    labels = torch.randint(0, 3, (3, 10))
    labels[0, :4] = -1  # ignored
    _, info, _ = ffn(x, labels=labels)
    counts = ffn.claim_counts()
    assert counts.shape == (8, 3) and counts.sum() == 26
    tiles = info["tile_idx"].flatten().numpy()
    labs = labels.flatten().numpy()
    for t in range(8):
        for c in range(3):
            mask = labs == c
            expected = np.sum(tiles[mask] == t) / max(1, mask.sum())
            assert ffn.get_claim_rate(t, c) == pytest.approx(expected)
    assert ffn.get_claim_rate(0, 7) == 0.0
    # classes grow
    ffn(torch.randn(2, D), labels=torch.tensor([5, 5]))
    assert ffn.claim_counts().shape == (8, 6)
    t = int(ffn(torch.randn(1, D), labels=torch.tensor([5]))[1]["tile_idx"][0])
    dom, purity = ffn.get_tile_purity(t)
    row = ffn.claim_counts()[t]
    assert dom == int(np.argmax(row)) and purity == pytest.approx(row.max() / row.sum())
    ffn.reset_claim_tracking()
    assert ffn.claim_counts().shape == (8, 0)
    assert ffn.get_tile_purity(t) == (-1, 0.0)


def test_claim_tracking_toy_task() -> None:
    """Labels = which of two input clusters x comes from; each cluster needs its
    own output map, so each class ends up owned by its own tile.

    Two clusters of two tiles: with many more tiles than classes the balance
    loss spreads each class over several (still pure) tiles, so no single tile
    holds more than half of a class.
    """
    ffn = make_ffn(num_tiles=4, tiles_per_cluster=2, dropout=0.0)
    gen = torch.Generator().manual_seed(2)
    centers = torch.randn(2, D, generator=gen)
    centers = 3.0 * centers / centers.norm(dim=1, keepdim=True)
    maps = torch.randn(2, D, D, generator=gen) / D**0.5

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lab = torch.randint(0, 2, (n,), generator=gen)
        x = centers[lab] + 0.5 * torch.randn(n, D, generator=gen)
        y = x + torch.tanh(torch.einsum("nd,nde->ne", x, maps[lab]))
        return x, y, lab

    opt = torch.optim.Adam(ffn.parameters(), lr=1e-2)
    for _ in range(300):
        x, y, lab = batch(32)
        out, _, aux = ffn(x, labels=lab)
        loss = F.mse_loss(out, y) + aux["total_aux"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    ffn.eval()
    ffn.reset_claim_tracking()
    with torch.no_grad():
        x, _, lab = batch(400)
        ffn(x, labels=lab)
    owners = set()
    for cls in (0, 1):
        rates = [ffn.get_claim_rate(t, cls) for t in range(ffn.num_tiles)]
        tile = int(np.argmax(rates))
        owners.add(tile)
        assert rates[tile] > 0.5
        dom, purity = ffn.get_tile_purity(tile)
        assert dom == cls and purity > 0.8
    assert len(owners) == 2


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize(("input_norm", "ratio"), [(False, 0.15), (True, 0.45)])
def test_regression_learns(input_norm: bool, ratio: float) -> None:
    """Learn y = x + tanh(x A) B (d = 8). With the input LayerNorm the experts
    cannot see the scale of x, so less of the loss is reachable."""
    ffn = make_ffn(d_model=8, tile_hidden=16, dropout=0.0, input_norm=input_norm, seed=0)
    assert (ffn.norm_weight is not None) == input_norm
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(8, 8, generator=gen) / 8**0.5
    B = torch.randn(8, 8, generator=gen) * (2.0 / 8**0.5)

    def f(x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(x @ A) @ B

    x_test = torch.randn(256, 8, generator=gen)
    y_test = f(x_test)

    def test_loss() -> float:
        with torch.no_grad():
            return float(F.mse_loss(ffn(x_test, track=False)[0], y_test))

    start = test_loss()
    opt = torch.optim.Adam(ffn.parameters(), lr=5e-3)
    for _ in range(600):
        x = torch.randn(64, 8, generator=gen)
        out, _, aux = ffn(x)
        loss = F.mse_loss(out, f(x)) + aux["total_aux"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = test_loss()
    assert end < ratio * start, (start, end)


# --------------------------------------------------------------------------- state


def test_determinism() -> None:
    a, b, c = make_ffn(seed=11), make_ffn(seed=11), make_ffn(seed=12)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    x = torch.randn(3, 4, D)
    a.eval()
    b.eval()
    c.eval()
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.equal(a(x)[0], c(x)[0])
    a.reseed_tile(2)
    b.reseed_tile(2)
    assert torch.equal(a.signatures, b.signatures) and torch.equal(a.w1, b.w1)


def test_state_is_plain_numpy_and_round_trips() -> None:
    a = make_ffn(seed=1)
    gen = torch.Generator().manual_seed(0)
    train_steps(a, torch.optim.Adam(a.parameters(), lr=1e-2), 5, gen, labels=True)
    a.insert_signature(1, torch.ones(D), tag="ones")
    a.freeze_signature(6)
    state = a.get_state()
    for key, value in state.items():
        assert isinstance(value, np.ndarray), key
        assert value.dtype != object, key
    assert state["surgery_history"].dtype == np.uint8
    hist = json.loads(state["surgery_history"].tobytes().decode("utf-8"))
    assert hist == a.get_surgery_history()
    assert state["claim_counts"].shape == (8, 2)
    assert state["usage_counts"].sum() == 5 * 24

    b = make_ffn(seed=99, ternary_weight=0.3)
    b.set_state(state)
    assert b.ternary_weight == a.ternary_weight
    for key, value in b.get_state().items():
        assert np.array_equal(value, state[key]), key
    a.eval()
    b.eval()
    x = torch.randn(2, 5, D)
    oa, ia, xa = a(x)
    ob, ib, xb = b(x)
    assert torch.equal(oa, ob)
    for k in ia:
        assert torch.equal(ia[k], ib[k])
    for k in xa:
        assert torch.equal(xa[k], xb[k])
    assert b.is_frozen(1) and b.is_frozen(6) and not b.is_frozen(0)
    assert b.get_surgery_history() == a.get_surgery_history()
    assert b.get_routing_stats() == a.get_routing_stats()
    assert np.array_equal(b.claim_counts(), a.claim_counts())
    # the init generator travels with the state
    a.reseed_tile(3)
    b.reseed_tile(3)
    assert torch.equal(a.w1, b.w1) and torch.equal(a.signatures, b.signatures)


def test_state_continues_training_identically() -> None:
    a = make_ffn(seed=1, dropout=0.0)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.05)
    gen = torch.Generator().manual_seed(4)
    train_steps(a, opt_a, 10, gen, labels=True)
    a.freeze_signature(2)
    state = a.get_state()
    opt_state = copy.deepcopy(opt_a.state_dict())  # as if saved and loaded

    b = make_ffn(seed=2, dropout=0.0)
    b.set_state(state)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05)
    opt_b.load_state_dict(opt_state)
    for key in opt_state["state"]:
        for name, value in opt_state["state"][key].items():
            assert torch.equal(opt_b.state_dict()["state"][key][name], value)

    gen_a = torch.Generator().manual_seed(7)
    gen_b = torch.Generator().manual_seed(7)
    train_steps(a, opt_a, 10, gen_a, labels=True)
    train_steps(b, opt_b, 10, gen_b, labels=True)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    sa, sb = a.get_state(), b.get_state()
    for key in sa:
        assert np.array_equal(sa[key], sb[key]), key


def test_set_state_validation_leaves_instance_unchanged() -> None:
    a = make_ffn(seed=1)
    good = a.get_state()
    before = {k: v.copy() for k, v in good.items()}

    def check(bad: dict[str, Any]) -> None:
        with pytest.raises(StateError):
            a.set_state(bad)
        for k, v in a.get_state().items():
            assert np.array_equal(v, before[k]), k

    check({k: v for k, v in good.items() if k != "w1"})
    check({**good, "w1": good["w1"][:, :, :1]})
    check({**good, "signatures_raw": np.full_like(good["signatures_raw"], np.nan)})
    check({**good, "surgery_history": np.frombuffer(b"not json", dtype=np.uint8)})
    check({**good, "claim_counts": -np.ones((8, 2), dtype=np.int64)})
    check({**good, "rng_state": np.zeros(3, dtype=np.uint8)})
    check({**good, "hyper": good["hyper"] * -1.0})
    check(make_ffn(d_model=D, num_tiles=16, tiles_per_cluster=4).get_state())
    check(make_ffn(tile_hidden=7).get_state())


# --------------------------------------------------------------------------- evolution

H = 8  # tile_hidden of the evolution tests


def make_evo(**kw: Any) -> SparseLookupFFNv2:
    args: dict[str, Any] = {"tile_hidden": H, "dropout": 0.0}
    args.update(kw)
    return make_ffn(**args)


def trained_evo(steps: int = 15, **kw: Any) -> tuple[SparseLookupFFNv2, torch.optim.Optimizer]:
    ffn = make_evo(**kw)
    opt = torch.optim.Adam(ffn.parameters(), lr=1e-2)
    train_steps(ffn, opt, steps, torch.Generator().manual_seed(3))
    return ffn, opt


def clone_of(ffn: SparseLookupFFNv2) -> SparseLookupFFNv2:
    other = make_evo(seed=77)
    other.set_state(ffn.get_state())
    other.train(ffn.training)
    return other


def test_importance_is_ema_of_activation_times_gradient() -> None:
    ffn = make_evo(input_norm=False, use_score_calibration=False, fitness_decay=0.75)
    assert float(ffn.unit_importance.abs().sum()) == 0.0
    x = torch.randn(40, D)
    weights = torch.randn(40, D)
    out, info, _ = ffn(x)
    (out * weights).sum().backward()
    idx = info["tile_idx"]
    with torch.no_grad():
        a = F.silu(torch.einsum("nd,ndh->nh", x, ffn.w1[idx]) + ffn.b1[idx])
        g = torch.einsum("nd,nhd->nh", weights, ffn.w2[idx])  # dL/da = w2 (dL/dy), gate 1
        expected = torch.zeros(ffn.num_tiles, H)
        counts = torch.bincount(idx, minlength=ffn.num_tiles)
        expected.index_add_(0, idx, (a * g).abs())
        expected = 0.25 * expected / counts.clamp_min(1).unsqueeze(1)
    torch.testing.assert_close(ffn.unit_importance, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(ffn.unit_fitness_obs, (counts > 0).long())
    assert bool((ffn.unit_importance[counts == 0] == 0).all())
    # a second batch decays the seen rows only
    before = ffn.unit_importance.clone()
    x2 = torch.randn(5, D)
    out2, info2, _ = ffn(x2)
    out2.sum().backward()
    unseen = torch.bincount(info2["tile_idx"], minlength=ffn.num_tiles) == 0
    assert torch.equal(ffn.unit_importance[unseen], before[unseen])
    assert not torch.equal(ffn.unit_importance[~unseen], before[~unseen])


def test_fitness_capture_costs_nothing_without_gradients_and_changes_nothing() -> None:
    a = make_evo(seed=4)
    b = make_evo(seed=4, track_fitness=False)
    x = torch.randn(30, D)
    with torch.no_grad():
        a(x)
    a(x, track=False)[0].sum().backward()
    assert float(a.unit_importance.abs().sum()) == 0.0
    assert int(a.unit_fitness_obs.sum()) == 0
    a.zero_grad()
    oa = a(x)[0]
    ob = b(x)[0]
    assert torch.equal(oa, ob)
    oa.square().sum().backward()
    ob.square().sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert pa.grad is not None and pb.grad is not None
        assert torch.equal(pa.grad, pb.grad), name
    assert float(a.unit_importance.sum()) > 0.0
    assert float(b.unit_importance.abs().sum()) == 0.0
    # state_dict() is unchanged by the new buffers (agents store it separately)
    assert not any(k.startswith("unit_") for k in a.state_dict())


def test_multi_objective_fitness_components() -> None:
    ffn = make_evo(
        input_norm=False,
        fitness_decay=0.0,  # the EMAs are exactly the last batch's statistics
        fitness_importance=0.4,
        fitness_diversity=0.3,
        fitness_stability=0.2,
        fitness_energy=0.1,
    )
    assert ffn.unit_act_cross.shape == (ffn.num_tiles, H, H)
    x = torch.randn(200, D)
    out, info, _ = ffn(x)
    out.square().sum().backward()
    comps = ffn.fitness_components()
    assert set(comps) == {"importance", "diversity", "stability", "energy"}
    for name, c in comps.items():
        assert c.shape == (ffn.num_tiles, H) and c.dtype == np.float32, name
        assert np.all((c >= 0.0) & (c <= 1.0 + 1e-6)), name
    idx = info["tile_idx"]
    t = int(torch.bincount(idx).argmax())
    with torch.no_grad():
        sel = idx == t
        a = F.silu(x[sel] @ ffn.w1[t] + ffn.b1[t]).double().numpy()
    mean, sq = a.mean(0), (a * a).mean(0)
    np.testing.assert_allclose(comps["stability"][t], mean**2 / sq, rtol=1e-4)
    corr = np.abs(np.corrcoef(a.T))
    np.fill_diagonal(corr, 0.0)
    np.testing.assert_allclose(comps["diversity"][t], 1.0 - corr.sum(1) / (H - 1), atol=1e-3)
    with torch.no_grad():
        norm = (ffn.w1[t].square().sum(0) + ffn.b1[t].square() + ffn.w2[t].square().sum(1)).sqrt()
    np.testing.assert_allclose(comps["energy"][t], 1.0 - (norm / norm.max()).numpy(), atol=1e-6)
    assert comps["importance"][t].max() == pytest.approx(1.0)
    combined = sum(w * comps[k] for k, w in ffn.fitness_weights.items())
    np.testing.assert_allclose(ffn.unit_fitness().numpy(), combined, atol=1e-6)
    with pytest.raises(TileError):
        ffn.configure_fitness(importance=0.0, diversity=0.0, stability=0.0, energy=0.0)
    with pytest.raises(TileError):
        ffn.configure_fitness(decay=1.0)
    with pytest.raises(TileError):
        make_evo(fitness_stability=-1.0)
    assert ffn.fitness_weights["importance"] == 0.4


@pytest.mark.parametrize("regrowth", ["preservation", "mutation", "crossover"])
def test_apoptosis_output_equals_pruned_network(regrowth: str) -> None:
    ffn, _ = trained_evo()
    ffn.eval()
    full = clone_of(ffn)
    pruned = clone_of(ffn)
    report = ffn.apoptosis(
        prune_rate=0.3, regrowth=regrowth, mutation_strength=0.5, step=100, seed=5
    )
    assert report["turnover"]["died"] == report["turnover"]["born"] == 2 * ffn.num_tiles
    with torch.no_grad():  # the reference: the same network with the dead units silenced
        for t, c in zip(report["tiles"], report["units"], strict=True):
            pruned.w2[t, c] = 0.0
    x = torch.randn(500, D)
    with torch.no_grad():
        out, new_out, full_out = ffn(x)[0], pruned(x)[0], full(x)[0]
    assert float((out - new_out).abs().max()) < 1e-5
    assert float((out - full_out).abs().max()) > 1e-4  # something was pruned
    if regrowth == "preservation":
        for t, c, par in zip(report["tiles"], report["units"], report["parents"], strict=True):
            p = int(np.flatnonzero(ffn.unit_lineage()["ids"][t] == par[0])[0])
            assert par[1] == -1
            assert torch.equal(ffn.w1[t, :, c], ffn.w1[t, :, p])
            assert torch.equal(ffn.b1[t, c], ffn.b1[t, p])
            assert torch.equal(ffn.w2[t, c], ffn.w2[t, p])
    else:
        assert all(
            float(ffn.w2[t, c].detach().abs().sum()) == 0.0
            for t, c in zip(report["tiles"], report["units"], strict=True)
        )
        twos = [p for p in report["parents"] if p[1] >= 0]
        assert (len(twos) == len(report["parents"])) == (regrowth == "crossover")
        # the children are not copies of their parent
        lin = ffn.unit_lineage()
        t, c, par = report["tiles"][0], report["units"][0], report["parents"][0]
        p = int(np.flatnonzero(lin["ids"][t] == par[0])[0])
        assert not torch.equal(ffn.w1[t, :, c], ffn.w1[t, :, p])
    assert set(report["strategies"]) == {regrowth}
    hist = [h for h in ffn.get_surgery_history() if h["op"] == "apoptosis"]
    assert len(hist) == ffn.num_tiles
    assert sum(len(h["born"]) for h in hist) == len(report["born"])
    assert all(h["agent_step"] == 100 and h["tag"] == regrowth for h in hist)


def test_apoptosis_prunes_the_least_fit() -> None:
    ffn, _ = trained_evo()
    fit = ffn.unit_fitness().numpy()
    ids = ffn.unit_lineage()["ids"]
    report = ffn.apoptosis(prune_rate=0.25, regrowth="mutation", step=1, seed=0)
    for t in range(ffn.num_tiles):
        died = [int(i) for i in report["died"] if i in set(ids[t].tolist())]
        expect = ids[t][np.argsort(fit[t], kind="stable")[:2]]
        assert sorted(died) == sorted(expect.tolist())


def test_lineage_stays_consistent_over_many_rounds() -> None:
    ffn, opt = trained_evo(steps=3)
    gen = torch.Generator().manual_seed(9)
    T = ffn.num_tiles
    seen: set[int] = set(ffn.unit_lineage()["ids"].ravel().tolist())
    total_born = 0
    for rnd in range(1, 31):
        train_steps(ffn, opt, 2, gen)
        before = ffn.unit_lineage()
        regrowth = ("preservation", "mutation", "crossover")[rnd % 3]
        step = 10 * rnd
        rep = ffn.apoptosis(prune_rate=0.3, regrowth=regrowth, step=step, optimizer=opt, seed=rnd)
        lin = ffn.unit_lineage()
        ids = lin["ids"]
        assert np.unique(ids).size == ids.size == T * H
        total_born += len(rep["born"])
        assert int(lin["next_id"][0]) == T * H + total_born
        assert not seen & set(rep["born"])  # ids are never reused
        seen |= set(rep["born"])
        assert set(rep["died"]) <= set(before["ids"].ravel().tolist())
        assert not set(rep["died"]) & set(ids.ravel().tolist())
        alive_before = {int(i): (t, j) for (t, j), i in np.ndenumerate(before["ids"])}
        for t, c, child, par in zip(
            rep["tiles"], rep["units"], rep["born"], rep["parents"], strict=True
        ):
            assert ids[t, c] == child and lin["birth"][t, c] == step
            assert list(lin["parents"][t, c]) == par
            gens = []
            for pid in par:
                if pid < 0:
                    continue
                pt, pj = alive_before[pid]
                assert pt == t  # parents come from the same tile
                assert pid not in rep["died"]  # and survived
                gens.append(int(before["generation"][pt, pj]))
            assert lin["generation"][t, c] == 1 + max(gens)
    assert int(ffn.unit_lineage()["generation"].max()) >= 2


def test_apoptosis_never_touches_frozen_tiles() -> None:
    ffn, opt = trained_evo()
    ffn.freeze_signature(0)
    ffn.insert_signature(5, torch.ones(D), freeze=True, tag="concept")
    frozen = (0, 5)
    keep = {n: getattr(ffn, n).detach()[list(frozen)].clone() for n in ("w1", "b1", "w2", "b2")}
    sigs = ffn.signatures[list(frozen)].clone()
    lin = ffn.unit_lineage()
    imp = ffn.unit_importance[list(frozen)].clone()
    rep = ffn.apoptosis(prune_rate=0.5, regrowth="crossover", step=3, optimizer=opt, seed=1)
    assert rep["turnover"]["frozen_skipped"] == [0, 5]
    assert all(t not in frozen for t in rep["tiles"]) and rep["tiles"]
    for n, v in keep.items():
        assert torch.equal(getattr(ffn, n).detach()[list(frozen)], v), n
    assert torch.equal(ffn.unit_importance[list(frozen)], imp)
    for key in ("ids", "parents", "generation", "birth"):
        assert np.array_equal(ffn.unit_lineage()[key][list(frozen)], lin[key][list(frozen)])
    # training moves the experts but never the frozen signatures
    train_steps(ffn, opt, 10, torch.Generator().manual_seed(2))
    assert torch.equal(ffn.signatures[list(frozen)], sigs)


@pytest.mark.parametrize("fused", [False, True])
def test_apoptosis_resets_adam_moments_of_regrown_slices_only(fused: bool) -> None:
    ffn = make_evo()
    opt = torch.optim.Adam(ffn.parameters(), lr=1e-2, fused=fused)
    params_before = [id(p) for g in opt.param_groups for p in g["params"]]
    train_steps(ffn, opt, 10, torch.Generator().manual_seed(3))
    before = {
        name: {k: v.clone() for k, v in opt.state[getattr(ffn, name)].items()}
        for name in ("w1", "b1", "w2", "b2", "signatures_raw")
    }
    state_objs = {name: opt.state[getattr(ffn, name)]["exp_avg"] for name in ("w1", "b1", "w2")}
    rep = ffn.apoptosis(prune_rate=0.3, regrowth="preservation", step=1, optimizer=opt, seed=0)
    assert rep["moments_reset"] == 6 and rep["born"]
    assert [id(p) for g in opt.param_groups for p in g["params"]] == params_before
    tt = torch.tensor(rep["tiles"])
    cc = torch.tensor(rep["units"])
    slices = {"w1": (tt, slice(None), cc), "b1": (tt, cc), "w2": (tt, cc, slice(None))}
    for name, old in before.items():
        st = opt.state[getattr(ffn, name)]
        for key in ("exp_avg", "exp_avg_sq"):
            new = st[key]
            if name in slices:
                assert new is state_objs[name] if key == "exp_avg" else True
                mask = torch.zeros_like(new, dtype=torch.bool)
                mask[slices[name]] = True
                assert bool((new[mask] == 0).all()), (name, key)
                assert torch.equal(new[~mask], old[key][~mask]), (name, key)
            else:
                assert torch.equal(new, old[key]), (name, key)
        assert torch.equal(st["step"], old["step"])
    train_steps(ffn, opt, 3, torch.Generator().manual_seed(4))
    assert all(bool(torch.isfinite(p).all()) for p in ffn.parameters())


def test_reset_optimizer_moments_without_state() -> None:
    ffn = make_evo()
    opt = torch.optim.SGD(ffn.parameters(), lr=0.1, momentum=0.9)
    assert reset_optimizer_moments(opt, ffn.w1, 0) == 0  # never stepped
    train_steps(ffn, opt, 2, torch.Generator().manual_seed(0))
    assert reset_optimizer_moments(opt, ffn.w1, (1, slice(None), 2)) == 1
    assert float(opt.state[ffn.w1]["momentum_buffer"][1, :, 2].abs().sum()) == 0.0


def test_state_round_trip_after_apoptosis_is_exact() -> None:
    a, opt = trained_evo(fitness_diversity=0.5, fitness_stability=0.5)
    a.apoptosis(prune_rate=0.3, regrowth="crossover", step=7, optimizer=opt)
    a.apoptosis(prune_rate=0.3, regrowth="preservation", step=9, optimizer=opt, min_age=1)
    state = a.get_state()
    for key in (
        "fitness_config",
        "unit_importance",
        "unit_act_cross",
        "lineage_ids",
        "lineage_parents",
        "lineage_generation",
        "lineage_birth",
        "lineage_next",
    ):
        assert isinstance(state[key], np.ndarray) and state[key].dtype != object, key
    b = make_evo(seed=42)
    assert b.fitness_weights["diversity"] == 0.0
    b.set_state(state)
    assert b.fitness_weights == a.fitness_weights
    for key, value in b.get_state().items():
        assert np.array_equal(value, state[key]), key
    # both continue identically, including the generator-driven apoptosis
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    for ffn, o in ((a, opt), (b, opt_b)):
        train_steps(ffn, o, 3, torch.Generator().manual_seed(8))
        ffn.apoptosis(prune_rate=0.25, regrowth="mutation", step=12, optimizer=o)
    sa, sb = a.get_state(), b.get_state()
    for key in sa:
        assert np.array_equal(sa[key], sb[key]), key


def test_state_without_evolution_keys_and_bad_evolution_state() -> None:
    a, _ = trained_evo()
    a.apoptosis(prune_rate=0.3, step=1, seed=0)
    good = a.get_state()
    old = {k: v for k, v in good.items() if not k.startswith(("unit_", "lineage_", "fitness_"))}
    b = make_evo(seed=5)
    b.set_state(old)  # written before fitness and lineage existed
    lin = b.unit_lineage()
    assert np.array_equal(lin["ids"].ravel(), np.arange(b.num_tiles * H))
    assert float(b.unit_importance.abs().sum()) == 0.0
    assert torch.equal(b.w1, a.w1)

    before = {k: v.copy() for k, v in a.get_state().items()}

    def check(bad: dict[str, Any]) -> None:
        with pytest.raises(StateError):
            a.set_state(bad)
        for k, v in a.get_state().items():
            assert np.array_equal(v, before[k]), k

    check({k: v for k, v in good.items() if k != "lineage_ids"})
    dup = good["lineage_ids"].copy()
    dup[0, 0] = dup[0, 1]
    check({**good, "lineage_ids": dup})
    check({**good, "lineage_next": np.array([3], dtype=np.int64)})
    check({**good, "unit_importance": np.full_like(good["unit_importance"], np.nan)})
    check({**good, "unit_act_cross": np.zeros((2, H, H), dtype=np.float32)})
    check({**good, "fitness_config": np.zeros(6)})
    check({**good, "lineage_parents": good["lineage_parents"][..., :1]})


def test_apoptosis_arguments_and_no_ops() -> None:
    fresh = make_evo()
    rep = fresh.apoptosis(prune_rate=0.5, step=0, seed=0)  # no fitness observed yet
    assert rep["died"] == [] and len(rep["turnover"]["unobserved_skipped"]) == fresh.num_tiles
    ffn, _ = trained_evo()
    w1 = ffn.w1.detach().clone()
    rep = ffn.apoptosis(prune_rate=0.1, step=0, seed=0)  # floor(0.1 * 8) = 0
    assert rep["died"] == [] and torch.equal(ffn.w1, w1)
    assert not [h for h in ffn.get_surgery_history() if h["op"] == "apoptosis"]
    rep = ffn.apoptosis(prune_rate=0.5, step=0, seed=0, min_age=1)  # all born at step 0
    assert rep["died"] == []
    for kwargs in (
        {"prune_rate": 1.0},
        {"prune_rate": -0.1},
        {"prune_rate": float("nan")},
        {"prune_rate": 0.2, "regrowth": "cloning"},
        {"prune_rate": 0.2, "mutation_strength": -1.0},
        {"prune_rate": 0.2, "step": 1.5},
        {"prune_rate": 0.2, "step": True},
        {"prune_rate": 0.2, "optimizer": "adam"},
        {"prune_rate": 0.2, "min_observations": None},
    ):
        args: dict[str, Any] = {"step": 0, **kwargs}
        with pytest.raises(TileError):
            ffn.apoptosis(**args)
    assert torch.equal(ffn.w1, w1)


def test_reseed_tile_gives_fresh_lineage_and_fitness() -> None:
    ffn, _ = trained_evo()
    ffn.apoptosis(prune_rate=0.3, step=1, seed=0)
    nxt = int(ffn.unit_lineage()["next_id"][0])
    ffn.reseed_tile(3, step=40, tag="fresh")
    lin = ffn.unit_lineage()
    assert lin["ids"][3].tolist() == list(range(nxt, nxt + H))
    assert (lin["parents"][3] == -1).all() and (lin["generation"][3] == 0).all()
    assert (lin["birth"][3] == 40).all()
    assert float(ffn.unit_importance[3].abs().sum()) == 0.0 and int(ffn.unit_fitness_obs[3]) == 0
    assert ffn.get_surgery_history()[-1]["tag"] == "fresh"
    ffn.reseed_tile(2)
    assert (ffn.unit_lineage()["birth"][2] == -1).all()


def test_route_matches_forward() -> None:
    ffn, _ = trained_evo()
    ffn.insert_signature(2, torch.linspace(-1, 1, D), freeze=True)
    x = torch.randn(3, 7, D)
    counts = ffn.usage_counts.clone()
    r = ffn.route(x)
    _, info, _ = ffn(x, track=False)
    assert torch.equal(r["tile_idx"], info["tile_idx"])
    assert torch.equal(r["cluster_idx"], info["cluster_idx"])
    torch.testing.assert_close(r["score"], info["score"])
    assert r["code"].shape == (21, D)
    assert torch.equal(ffn.usage_counts, counts)
    assert torch.equal(ffn.route(x.numpy())["tile_idx"], r["tile_idx"])
    with pytest.raises(TileError):
        ffn.route(torch.randn(4, D + 1))


@settings(max_examples=25, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.floats(0.0, 0.95),
            st.sampled_from(["preservation", "mutation", "crossover"]),
            st.floats(0.0, 3.0),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**31),
)
def test_apoptosis_property_no_nan_unique_ids(
    rounds: list[tuple[float, str, float, int]], seed: int
) -> None:
    ffn = make_evo(tile_hidden=5, fitness_diversity=0.2, seed=seed % 1000)
    opt = torch.optim.Adam(ffn.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    train_steps(ffn, opt, 1, gen)
    n_born = 0
    for i, (rate, regrowth, strength, min_age) in enumerate(rounds):
        rep = ffn.apoptosis(
            prune_rate=rate,
            regrowth=regrowth,
            mutation_strength=strength,
            step=i,
            optimizer=opt,
            seed=seed + i,
            min_age=min_age,
        )
        n_born += len(rep["born"])
        assert len(rep["died"]) == len(rep["born"])
        assert all(n <= math.floor(rate * 5 + 1e-9) for n in rep["turnover"]["per_tile"])
        train_steps(ffn, opt, 1, gen)
        ids = ffn.unit_lineage()["ids"]
        assert np.unique(ids).size == ids.size
        assert int(ffn.unit_lineage()["next_id"][0]) == ffn.num_tiles * 5 + n_born
        for p in ffn.parameters():
            assert bool(torch.isfinite(p).all())
        for buf in (ffn.unit_importance, ffn.unit_act_cross, ffn.unit_fitness()):
            assert bool(torch.isfinite(buf).all())
