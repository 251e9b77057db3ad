"""The report's figures (matplotlib, the ``report`` extra), one PNG each."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lillith.report.data import Scores, StateView

ALARM = "#d62728"
LABEL = "#2ca02c"
MAX_CHANNELS = 12
"""Channels drawn (one panel each); further ones are listed, not drawn."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        from lillith.report.data import ReportError

        raise ReportError("lillith report needs matplotlib: pip install 'lillith[report]'"
                          ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(scores: Scores, values: np.ndarray) -> Any:
    if not scores.dated:
        return values
    return np.array([datetime.fromtimestamp(float(v), UTC) for v in values])


def _shade(ax: Any, scores: Scores, labels: list[tuple[float, float]], *,
           legend: bool = False) -> None:
    """Labelled windows (green band), alarm periods (red band), onsets (red line)."""
    t = scores.t
    for i, (a, b) in enumerate(labels):
        ax.axvspan(*_x(scores, np.array([a, b])), color=LABEL, alpha=0.15, lw=0,
                   label="labelled window" if legend and i == 0 else None)
    for i, (a, b) in enumerate(scores.periods()):
        end = t[min(b + 1, t.size - 1)]
        ax.axvspan(*_x(scores, np.array([t[a], end])), color=ALARM, alpha=0.12, lw=0,
                   label="alarm period" if legend and i == 0 else None)
    for i, k in enumerate(scores.onsets):
        ax.axvline(_x(scores, t[k:k + 1])[0], color=ALARM, lw=0.8,
                   label="alarm onset" if legend and i == 0 else None)


def channels_figure(scores: Scores, labels: list[tuple[float, float]], out: Path) -> list[str]:
    """``channels.png``: each channel with its forecast (one panel each); returns
    the panel titles."""
    plt = _pyplot()
    names = list(scores.channels)[:MAX_CHANNELS]
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 2.2 * len(names) + 0.6),
                             sharex=True, squeeze=False)
    x = _x(scores, scores.t)
    titles = []
    for ax, c in zip(axes[:, 0], names, strict=True):
        ax.plot(x, scores.channels[c], lw=0.8, color="#1f77b4", label=c)
        if c in scores.forecasts:
            ax.plot(x, scores.forecasts[c], lw=0.8, color="#ff7f0e", alpha=0.8,
                    label="forecast")
        _shade(ax, scores, labels, legend=c == names[0])
        ax.set_title(f"{c}: value and forecast", fontsize=9, loc="left")
        titles.append(f"{c}: value and forecast")
        ax.legend(loc="upper right", fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("time (UTC)" if scores.dated else "row")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return titles


def scores_figure(scores: Scores, labels: list[tuple[float, float]], out: Path) -> list[str]:
    """``scores.png``: the raw anomaly score and the likelihood, alarms shaded."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(12, 5), sharex=True)
    x = _x(scores, scores.t)
    a1.plot(x, scores.score, lw=0.7, color="#555555", label="anomaly score")
    _shade(a1, scores, labels, legend=True)
    a1.set_title("anomaly score (raw)", fontsize=9, loc="left")
    a1.legend(loc="upper right", fontsize=7, ncol=4)
    a2.plot(x, scores.likelihood, lw=0.7, color="#9467bd", label="anomaly likelihood")
    _shade(a2, scores, labels)
    a2.set_ylim(-0.02, 1.02)
    a2.set_title("anomaly likelihood", fontsize=9, loc="left")
    a2.set_xlabel("time (UTC)" if scores.dated else "row")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return ["anomaly score (raw)", "anomaly likelihood"]


def som_figure(view: StateView, out: Path) -> list[str]:
    """``som.png``: the SOM's U-matrix and hit map."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.4))
    im = a1.imshow(view.umatrix, cmap="viridis")
    a1.set_title("SOM U-matrix (mean distance to neighbours)", fontsize=9)
    fig.colorbar(im, ax=a1, shrink=0.8)
    im = a2.imshow(view.hits, cmap="magma")
    a2.set_title("SOM hit map (best-match counts)", fontsize=9)
    fig.colorbar(im, ax=a2, shrink=0.8)
    for a in (a1, a2):
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"self-organising map at step {view.step}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return ["SOM U-matrix", "SOM hit map"]


def lineage_figure(view: StateView, out: Path) -> list[str]:
    """``lineage.png``: births and deaths per step (fabric neurons and tile units)
    and the generations born."""
    plt = _pyplot()
    assert view.births is not None and view.deaths is not None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    fig.suptitle(f"evolution: {view.rounds} rounds by step {view.step}", fontsize=10)
    kinds = {0: "fabric", 1: "tiles"}
    for kind, name in kinds.items():
        b = view.births[view.births[:, 0] == kind]
        d = view.deaths[view.deaths[:, 0] == kind]
        if b.size:
            steps, counts = np.unique(b[:, 5], return_counts=True)
            a1.plot(steps, np.cumsum(counts), drawstyle="steps-post", label=f"{name} births")
        if d.size:
            steps, counts = np.unique(d[:, 2], return_counts=True)
            a1.plot(steps, np.cumsum(counts), drawstyle="steps-post", ls="--",
                    label=f"{name} deaths")
    if not view.births.size and not view.deaths.size:
        a1.text(0.5, 0.5, f"{view.rounds} rounds, no neuron replaced", ha="center",
                transform=a1.transAxes)
    a1.set_title("lineage: cumulative births and deaths", fontsize=9, loc="left")
    a1.set_xlabel("step")
    if view.births.size or view.deaths.size:
        a1.legend(fontsize=7)
    gens = view.births[:, 4]
    a2.hist(gens, bins=np.arange((gens.max() if gens.size else 0) + 2) - 0.5, color="#8c564b")
    a2.set_title("lineage: generation of each birth", fontsize=9, loc="left")
    a2.set_xlabel("generation")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return ["lineage: cumulative births and deaths", "lineage: generation of each birth"]
