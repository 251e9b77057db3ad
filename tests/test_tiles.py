"""Tests for the sparse-lookup tile FFN (``lillith.agents.tiles``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lillith.agents.tiles import (
    ScoreCalibrationSpline,
    SparseLookupBlockV2,
    SparseLookupFFNv2,
    TileError,
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
