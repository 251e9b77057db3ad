"""BioSystem (energy, fatigue, mood, learning drive) and the mode cycler.

Everything advances per step (per frame), never by wall-clock time, so a run
is reproducible and a restored agent continues identically.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.agents.config import BioSettings, ModeSettings
from lillith.errors import StateError

MODE_NAMES = ("normal", "random", "intentional")


FAST = 0.1
"""Rate of the short-term loss average."""
SLOW = 0.005
"""Rate of the long-term loss average (its floor: it starts as a running mean)."""
FATIGUE_RATE = 0.01
"""Rate of the fatigue average of work."""


class BioSystem:
    """Energy budget that gates learning, with fatigue, mood and learning drive.

    Per step: ``E <- E - cost * work + recovery * (1 - E) * (rest_boost if work == 0)``.
    Learning drive is ``clip(1 + surprise_gain * (fast_loss / slow_loss - 1),
    drive_min, drive_max)`` (surprise = recent loss above its running level);
    mood is ``tanh`` of the relative improvement of the slow over the fast
    loss; fatigue is the moving average of work.
    """

    def __init__(self, config: BioSettings | None = None) -> None:
        self.config = config or BioSettings()
        self.energy = 1.0
        self.fatigue = 0.0
        self.loss_fast = 0.0
        self.loss_slow = 0.0
        self.n_losses = 0
        self.gated = False

    # -- queries ---------------------------------------------------------------
    @property
    def learning_drive(self) -> float:
        """Multiplier >= drive_min that rises with surprise."""
        c = self.config
        if self.n_losses < 2 or self.loss_slow <= 0:
            return 1.0
        d = 1.0 + c.surprise_gain * (self.loss_fast / self.loss_slow - 1.0)
        return float(min(max(d, c.drive_min), c.drive_max))

    @property
    def mood(self) -> float:
        """In [-1, 1]: positive while loss is falling below its running level."""
        if self.n_losses < 2 or self.loss_slow <= 0:
            return 0.0
        return float(math.tanh((self.loss_slow - self.loss_fast) / self.loss_slow))

    def can_learn(self) -> bool:
        """Whether the energy gate lets the next step learn (with hysteresis)."""
        c = self.config
        if self.gated:
            return self.energy >= c.resume_threshold
        return self.energy >= c.gate_threshold

    def modulators(self) -> dict[str, float]:
        """The modulators: ``energy_gate``, ``learning_drive``, ``mood``, ``fatigue``.

        Also ``energy`` and ``learning_rate_scale`` (the factor applied to the
        optimizer's and the fabric plasticity's rates: learning drive when
        the gate is open, 0 when it is shut).
        """
        gate = self.energy
        drive = self.learning_drive
        return {
            "energy_gate": gate,
            "learning_drive": drive,
            "mood": self.mood,
            "fatigue": self.fatigue,
            "energy": self.energy,
            "learning_rate_scale": drive if self.can_learn() else 0.0,
        }

    # -- dynamics --------------------------------------------------------------
    def observe_loss(self, loss: float) -> None:
        """Feed one prediction loss (non-negative, finite)."""
        if not math.isfinite(loss):
            return
        if self.n_losses == 0:
            self.loss_fast = self.loss_slow = loss
        else:
            self.loss_fast += FAST * (loss - self.loss_fast)
            rate = max(SLOW, 1.0 / (self.n_losses + 1))
            self.loss_slow += rate * (loss - self.loss_slow)
        self.n_losses += 1

    def step(self, work: float) -> None:
        """Advance one step after doing ``work`` units of learning (0 = rest)."""
        c = self.config
        rec = c.recovery * (1.0 - self.energy) * (c.rest_boost if work <= 0 else 1.0)
        self.energy = float(min(max(self.energy - c.cost * work + rec, 0.0), 1.0))
        self.fatigue += FATIGUE_RATE * (work - self.fatigue)
        if self.gated and self.energy >= c.resume_threshold:
            self.gated = False
        elif not self.gated and self.energy < c.gate_threshold:
            self.gated = True

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Scalars as a float64 array plus the gate flag."""
        return {
            "scalars": np.array([self.energy, self.fatigue, self.loss_fast, self.loss_slow]),
            "counters": np.array([self.n_losses, int(self.gated)], dtype=np.int64),
        }

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        s = np.asarray(state["scalars"], dtype=np.float64)
        cn = np.asarray(state["counters"], dtype=np.int64)
        if s.shape != (4,) or cn.shape != (2,):
            raise StateError("bio state has wrong shape")
        self.energy, self.fatigue, self.loss_fast, self.loss_slow = (float(v) for v in s)
        self.n_losses, self.gated = int(cn[0]), bool(cn[1])


class ModeCycler:
    """Cycles normal / random / intentional propagation by step count.

    Each cycle of ``period`` steps is split into contiguous segments, one per
    mode, of lengths proportional to ``shares``. ``enabled=False`` keeps the
    agent in normal mode.

    Parameters
    ----------
    settings : ModeSettings, optional
        ``shares`` (relative time in normal, random and intentional mode),
        ``period`` (steps per cycle), ``enabled``; validated by the settings.
    """

    def __init__(self, settings: ModeSettings | None = None) -> None:
        m = settings or ModeSettings()
        total = float(sum(m.shares))
        self.shares = tuple(float(s) / total for s in m.shares)
        self.period = int(m.period)
        self.enabled = bool(m.enabled)
        bounds = np.cumsum(self.shares) * self.period
        self._bounds = np.round(bounds).astype(np.int64)

    def mode_at(self, step: int) -> str:
        """Mode of step ``step`` (0-based)."""
        if not self.enabled:
            return "normal"
        phase = step % self.period
        idx = int(np.searchsorted(self._bounds, phase, side="right"))
        return MODE_NAMES[min(idx, 2)]
