"""Typed configuration of an agent (pydantic v2 models, immutable)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FabricConfig(_Model):
    """Neural fabric of an agent (see :class:`lillith.fabric.NeuralFabric3D`)."""

    shape: tuple[int, int, int] = (5, 5, 16)
    n_branches: int = Field(5, ge=1, le=64)
    n_segments: int = Field(10, ge=1, le=1024)
    n_features: int = Field(64, ge=1)
    substeps: int = Field(1, ge=1, le=64)
    # fast / medium / slow membrane time constants (ms = frames at one substep):
    # docs/performance.md "What the fabric adds"
    wiring: dict[str, Any] = Field(
        default_factory=lambda: {"type": "MultiScale", "taus": [2.0, 10.0, 40.0]})
    params: dict[str, float] = Field(default_factory=dict)
    noise_scale: float = Field(2.0, ge=0)
    intent_gain: float = Field(0.5, ge=0)
    bidirectional_weight: float = Field(0.5, ge=0, le=1)
    parallel: bool | None = None

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError("every fabric dimension must be >= 1")
        return v


class SomConfig(_Model):
    """Self-organizing map on the pooled fabric state."""

    map_shape: tuple[int, ...] = (17, 17)
    sigma_min: float = Field(0.5, gt=0)
    lr0: float = Field(0.5, gt=0, le=1)
    lr_min: float = Field(0.01, gt=0, le=1)
    decay_steps: int = Field(10_000, ge=1)

    @field_validator("map_shape")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) not in (2, 3) or min(v) < 1:
            raise ValueError("map_shape must have 2 or 3 positive dimensions")
        return v


class PredictorConfig(_Model):
    """Tile predictor (SparseLookupFFNv2) and its online optimiser."""

    history: int = Field(8, ge=1, le=1024)
    d_model: int = Field(32, ge=4)
    num_tiles: int = Field(16, ge=1)
    tiles_per_cluster: int = Field(4, ge=1)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, le=4096)
    grad_clip: float = Field(1.0, gt=0)
    aux_weight: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _tiles(self) -> PredictorConfig:
        if self.num_tiles % self.tiles_per_cluster:
            raise ValueError("num_tiles must be a multiple of tiles_per_cluster")
        return self


class BioSettings(_Model):
    """Constants of the BioSystem (:class:`lillith.agents.bio.BioSystem`; rates per step).

    Attributes
    ----------
    cost : float
        Energy spent per unit of learning work (one frame learned at drive 1).
    recovery : float
        Recovery rate toward full energy, ``dE = recovery * (1 - E)`` per step.
    rest_boost : float
        Recovery multiplier on steps that do no learning work (rest).
    gate_threshold : float
        Learning is skipped while energy is below this.
    resume_threshold : float
        After a skip, learning resumes once energy is back above this
        (hysteresis, so the gate does not flicker); >= ``gate_threshold``.
    surprise_gain : float
        How strongly learning drive rises with surprise.
    drive_min, drive_max : float
        Bounds of the learning drive (``drive_min <= drive_max``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cost: float = Field(4e-4, ge=0)
    recovery: float = Field(2e-3, ge=0)
    rest_boost: float = Field(5.0, ge=0)
    gate_threshold: float = Field(0.1, ge=0, le=1)
    resume_threshold: float = Field(0.3, ge=0, le=1)
    surprise_gain: float = Field(1.0, ge=0)
    drive_min: float = Field(0.5, ge=0)
    drive_max: float = Field(3.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> BioSettings:
        if self.gate_threshold > self.resume_threshold:
            raise ValueError("need gate_threshold <= resume_threshold")
        if self.drive_min > self.drive_max:
            raise ValueError("need drive_min <= drive_max")
        return self


class ModeSettings(_Model):
    """Mode cycler: shares of normal / random / intentional and period in steps."""

    shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    period: int = Field(300, ge=1)
    enabled: bool = True

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or sum(v) <= 0:
            raise ValueError("mode shares must be non-negative, not all 0")
        return v


class ScoreSettings(_Model):
    """Raw anomaly score and its likelihood."""

    err_weight: float = Field(1.0, ge=0)
    som_weight: float = Field(0.5, ge=0)
    level_weight: float = Field(2.0, ge=0)
    window: int = Field(2000, ge=10)
    short: int = Field(3, ge=1)
    min_history: int = Field(50, ge=1)
    suppress: int = Field(200, ge=0)
    alarm: float = Field(0.9999, gt=0.5, le=1)
    budget: int = Field(8, ge=0)
    budget_period: int = Field(2000, ge=1)
    range_alarm: bool = True
    range_tol: float = Field(0.2, ge=0)
    range_days: int = Field(90, ge=0, le=3650)
    week_context: bool = True
    stuck_alarm: bool = False
    stuck_factor: float = Field(2.0, ge=1)
    stuck_min_run: int = Field(10, ge=2)
    recurrence_days: int = Field(2, ge=0, le=14)
    recurrence_slack: int = Field(1, ge=0, le=14)
    recurrence_tol: float = Field(5400.0, ge=0, lt=43200)
    recurrence_ratio: float = Field(0.8, gt=0)
    norm_alpha: float = Field(2e-3, gt=0, le=1)
    hold: float = Field(0.5, ge=0, lt=1)
    shift_alarm: bool = True
    shift_rate: float = Field(0.02, gt=0, le=1)
    shift_level: float = Field(0.999, gt=0.5, le=1)
    shift_news: bool = False

    @model_validator(mode="after")
    def _some_term(self) -> ScoreSettings:
        if self.err_weight + self.som_weight + self.level_weight <= 0:
            raise ValueError("at least one of err_weight, som_weight, level_weight must be > 0")
        return self


class LayerEvolution(_Model):
    """Apoptosis strategy of a group of neurons (a fabric z-layer, or the tiles)."""

    prune_rate: float = Field(0.04, ge=0, le=0.5)
    mutation_strength: float = Field(0.1, ge=0)
    regrowth: Literal["preservation", "mutation", "crossover"] = "preservation"


class EvolutionConfig(_Model):
    """Evolution while running (apoptosis and regrowth, tile surgery); see docs/evolution.md.

    ``every = 0`` switches it off (no fitness is tracked then). Otherwise a
    round is due every ``every`` steps once ``warmup`` steps have passed; the
    runtime runs due rounds at step boundaries (:meth:`Agent.evolve`).
    """

    every: int = Field(0, ge=0)
    warmup: int = Field(2000, ge=0)
    fabric: LayerEvolution = Field(default_factory=LayerEvolution)
    layers: dict[int, LayerEvolution | None] = Field(default_factory=dict)
    allow_sensory: bool = False
    fitness_decay: float = Field(0.99, ge=0, lt=1)
    fitness_weights: dict[str, float] = Field(default_factory=lambda: {"importance": 1.0})
    tiles: LayerEvolution = Field(default_factory=lambda: LayerEvolution(prune_rate=0.125))
    tile_min_observations: int = Field(4, ge=1)
    surgery: bool = True
    surgery_params: dict[str, int | float] = Field(default_factory=dict)
    recent: int = Field(256, ge=1, le=65536)
    profile_rate: float = Field(0.01, gt=0, le=1)
    history: int = Field(200_000, ge=1)

    @field_validator("fitness_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        known = {"importance", "diversity", "stability", "energy"}
        if set(v) - known:
            raise ValueError(f"unknown fitness weights {sorted(set(v) - known)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("fitness weights must be >= 0 and not all 0")
        return v

    @property
    def enabled(self) -> bool:
        """Evolution rounds happen (and fitness is tracked)."""
        return self.every > 0


class AgentConfig(_Model):
    """Everything that defines an agent; stored in its snapshots."""

    fabric: FabricConfig = Field(default_factory=FabricConfig)
    som: SomConfig = Field(default_factory=SomConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    bio: BioSettings = Field(default_factory=BioSettings)
    modes: ModeSettings = Field(default_factory=ModeSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    ablate_fabric: bool = False
    seed: int = 0
