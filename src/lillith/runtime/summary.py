"""What an agent did between two ``frames_processed`` log lines of the daemon."""

from __future__ import annotations

import math
import time
from typing import Any

from lillith.agents.metrics import Metrics


class Window:
    """Counts since the last summary line: frames, alarms, the highest
    likelihood, the latest energy and mode."""

    def __init__(self, mode: str = "") -> None:
        self.frames = 0
        self.max_likelihood = 0.0
        self.alarms = 0
        self.energy = math.nan
        self.mode = mode
        self.started = time.monotonic()

    def observe(self, m: Metrics) -> None:
        """Fold one frame's result in."""
        self.frames += 1
        self.max_likelihood = max(self.max_likelihood, m.anomaly_likelihood)
        self.alarms += int(m.alarm_onset)
        self.energy = m.energy
        self.mode = m.mode

    def summary(self) -> dict[str, Any]:
        """The log line's fields: frames and their rate, alarm onsets, the
        highest likelihood, energy and mode (None before any frame)."""
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {"frames": self.frames, "frames_per_s": round(self.frames / seconds, 1),
                "alarms": self.alarms, "max_likelihood": round(self.max_likelihood, 6),
                "energy": None if math.isnan(self.energy) else round(self.energy, 4),
                "mode": self.mode or None}

    def next(self) -> Window:
        """The next window (the mode carries over)."""
        return Window(self.mode)
