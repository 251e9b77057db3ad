"""The online learner: frames in, anomaly scores and predictions out.

Per frame (see ``docs/model.md`` for the fabric and ``docs/agent.md``):
robust normalisation → loss of the previous prediction → fabric substeps
(plastic, gated by the BioSystem) → SOM on the pooled fabric state → features
(recent normalised frames, pooled fabric, SOM response) → tile predictor
forecasts the next normalised frame → raw anomaly score (prediction error and
SOM quantisation error) → likelihood over a rolling window → BioSystem and
mode cycler.

Learning happens in micro-batches of ``batch_size`` frames aligned to the step
count: within one micro-batch the predictor's weights and the BioSystem's
modulators are those of its first step, so processing frames one by one or
many at a time gives the same decisions, and the agent is reproducible.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.bio import BioConfig, BioSystem, ModeCycler
from lillith.agents.config import AgentConfig
from lillith.agents.lineage import FABRIC, TILE, Lineage
from lillith.agents.predictor import InferencePlan, TilePredictor
from lillith.agents.scores.detector import SECTIONS, Detector, FrameTerms
from lillith.agents.signal import RobustNormalizer
from lillith.agents.tiles import TileSurgeryPolicy
from lillith.errors import AgentError, StateError
from lillith.fabric.evolution import LayerStrategy
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.params import FabricParams
from lillith.fabric.som import SelfOrganizingMap
from lillith.fabric.wiring import Wiring

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
STATE_VERSION = 1
# weight of the frame-to-frame change of the pooled fabric state in the SOM input
DELTA_GAIN = 4.0
# weight of log(mean |frame-to-frame change| of the recent normalised inputs) in it
VAR_GAIN = 0.5
# frames per internal segment (a micro-batch may be cut further; results do not change)
SEGMENT_MAX = 64
# largest |stream time| accepted (s): the time-based scores count hours, days and
# 10-minute bins in int64, with margin (the MQTT edge has its own, smaller bound)
MAX_ABS_T = 1e15


EvolutionHook = Callable[[dict[str, Any]], None]
"""Receives the report of an evolution round (:meth:`Agent.evolve`)."""


@dataclass
class Metrics:
    """What the agent learned from one frame.

    Attributes
    ----------
    step : int
        0-based index of the frame in the agent's life.
    t : float or None
        Stream time of the frame as given by the caller.
    loss : float
        Mean squared error of the previous forecast of this frame, in
        normalised units (0.0 on the first frame, which had no forecast).
    anomaly_score : float
        Raw anomaly score (relative prediction error plus weighted relative
        SOM quantisation error), >= 0.
    anomaly_likelihood : float
        Likelihood in [0, 1] that the recent raw scores are unusual: high
        at news, damped during the rest that follows (docs/agent.md).
    alarm : bool
        The agent considers this frame anomalous now (for as long as the
        condition that raised the alarm lasts).
    alarm_reason : str
        What raised the current alarm: ``forecast``, ``novelty``, ``level``,
        ``range``, ``stuck``, ``context`` or ``shift``; empty when no alarm.
    alarm_onset : bool
        This frame started an alarm.
    prediction : list of float
        Forecast of the next frame, in the input's units.
    bmu : int
        SOM best-matching unit (flat index); -1 when the fabric is ablated.
    mode : str
        Propagation mode of this step.
    energy, learning_drive, mood : float
        BioSystem state after this step.
    skipped : bool
        True when learning was skipped (energy gate shut or learning off).
    """

    step: int
    t: float | None
    loss: float
    anomaly_score: float
    anomaly_likelihood: float
    prediction: list[float]
    bmu: int
    mode: str
    energy: float
    learning_drive: float
    mood: float
    skipped: bool
    alarm: bool = False
    alarm_reason: str = ""
    alarm_onset: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


@dataclass
class _Pending:
    """Frames of the current micro-batch awaiting the training step."""

    feats: list[F32] = field(default_factory=list)
    lasts: list[F32] = field(default_factory=list)
    targets: list[F32] = field(default_factory=list)


class FrameLog:
    """Counts frames whose stream time goes back or repeats (they are processed
    in the order given: every time-based feature takes a time going back as the
    latest time, see the scores).

    Attributes
    ----------
    back : int
        Frames whose time is earlier than the latest time before them.
    repeated : int
        Frames whose time equals the latest time.
    latest : float
        Latest stream time seen (``-inf`` before any).
    """

    def __init__(self) -> None:
        self.back = 0
        self.repeated = 0
        self.latest = -math.inf

    def observe(self, t: float | None) -> None:
        """Count frame time ``t`` (None: a frame without time, not counted)."""
        if t is None:
            return
        if t < self.latest:
            self.back += 1
        elif t == self.latest:
            self.repeated += 1
        else:
            self.latest = t

    def as_array(self) -> npt.NDArray[np.float64]:
        """``[back, repeated, latest, 1 if a time was seen else 0]``, float64 (finite)."""
        seen = math.isfinite(self.latest)
        return np.array([self.back, self.repeated, self.latest if seen else 0.0, float(seen)],
                        dtype=np.float64)

    def load(self, a: npt.NDArray[Any]) -> None:
        """Restore from :meth:`as_array`."""
        v = np.asarray(a, dtype=np.float64)
        self.back, self.repeated = int(v[0]), int(v[1])
        self.latest = float(v[2]) if v.size > 3 and v[3] > 0 else -math.inf


class Agent:
    """Continuous learner bound to ``n_channels`` sensor channels.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    config : AgentConfig, optional
        Everything else (fabric, SOM, predictor, BioSystem, modes, scores).
    name : str
        Agent name (used by the runtime).
    """

    def __init__(self, n_channels: int, config: AgentConfig | None = None, *,
                 name: str = "default") -> None:
        if n_channels < 1:
            raise AgentError("an agent needs at least one channel", n_channels=n_channels)
        self.config = config or AgentConfig()
        self.name = name
        self.n_channels = int(n_channels)
        cfg = self.config
        fc = cfg.fabric
        self.ablated = cfg.ablate_fabric
        self.fabric: NeuralFabric3D | None = None
        self.som: SelfOrganizingMap | None = None
        som_dims = 0
        if not self.ablated:
            wiring_cfg = dict(fc.wiring)
            wiring_cfg.setdefault("shape", list(fc.shape))
            wiring_cfg.setdefault("seed", cfg.seed)
            self.fabric = NeuralFabric3D(
                fc.shape,
                n_inputs=self.n_channels,
                wiring=Wiring.from_config(wiring_cfg),
                n_branches=fc.n_branches,
                n_segments=fc.n_segments,
                n_features=fc.n_features,
                params=FabricParams(**fc.params),
                noise_scale=fc.noise_scale,
                intent_gain=fc.intent_gain,
                bidirectional_weight=fc.bidirectional_weight,
                parallel=fc.parallel,
                seed=cfg.seed,
                fitness_decay=cfg.evolution.fitness_decay,
                fitness_weights=cfg.evolution.fitness_weights,
            )
            sc = cfg.som
            # the SOM sees the pooled state and its change since the last frame,
            # so unusual dynamics (a frozen or racing fabric) are novel too
            # plus the log of the recent input variability, so a stuck (flat) or
            # suddenly erratic sensor is far from every prototype
            self._som_in = np.zeros(2 * self.fabric.n_features + 1, dtype=np.float32)
            self.som = SelfOrganizingMap(
                sc.map_shape, 2 * self.fabric.n_features + 1, sigma_min=sc.sigma_min, lr0=sc.lr0,
                lr_min=sc.lr_min, decay_steps=sc.decay_steps, seed=cfg.seed,
            )
            som_dims = len(sc.map_shape) + 1
            self._goal = np.zeros(self.fabric.n, dtype=np.float32)
            self._batch_goal = np.zeros(self.fabric.n, dtype=np.float32)
            # activations of the segment's frames (the goal update reads its own frame's)
            self._acts = np.zeros((min(cfg.predictor.batch_size, SEGMENT_MAX), self.fabric.n),
                                  dtype=np.float32)
            self._som_scale = np.array([max(s - 1, 1) for s in sc.map_shape], dtype=np.float32)
        self.history = cfg.predictor.history
        n_fab = self.fabric.n_features if self.fabric is not None else 0
        self.feat_dim = self.n_channels * self.history + n_fab + som_dims
        self.normalizer = RobustNormalizer(self.n_channels, alpha=cfg.score.norm_alpha)
        self.detector = self._make_detector()
        # score settings (``score.*``) that differed from the snapshot last restored
        self.score_changes: list[str] = []
        b = cfg.bio
        self.bio = BioSystem(BioConfig(
            cost=b.cost, recovery=b.recovery, rest_boost=b.rest_boost,
            gate_threshold=b.gate_threshold, resume_threshold=b.resume_threshold,
            surprise_gain=b.surprise_gain, drive_min=b.drive_min, drive_max=b.drive_max))
        m = cfg.modes
        self.modes = ModeCycler(shares=m.shares, period=m.period, enabled=m.enabled)
        self.predictor = TilePredictor(self.feat_dim, self.n_channels, cfg)
        pc = cfg.predictor
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=pc.lr,
                                          weight_decay=pc.weight_decay, fused=True)
        self.learning_enabled = True
        self.step = 0
        self.total_updates = 0
        self.skipped_steps = 0
        self.recent_losses: deque[float] = deque(maxlen=1000)
        self._hist = np.zeros((self.history, self.n_channels), dtype=np.float32)
        self._feat = np.zeros(self.feat_dim, dtype=np.float32)
        self._prev_pred: F64 | None = None
        self._prev_feat: F32 | None = None
        self._prev_last: F32 | None = None
        self._qe_avg = 0.0  # running mean of the SOM error (a feature of the forecast)
        self._n_qe = 0
        self._frames = FrameLog()  # times out of order / repeated (counted, never refused)
        # when a list: every frame's FrameTerms is appended (lillith.eval.record replays them)
        self.term_log: list[FrameTerms] | None = None
        self._pending = _Pending()
        self._plan: InferencePlan | None = None  # the forecast kernel's arrays
        self._batch_scale = 1.0  # learning-rate scale frozen for the micro-batch
        self._batch_learns = True
        self._batch_qe = 0.0  # running SOM error as of the micro-batch's first step
        self._forced_mode: str | None = None
        self._init_evolution()

    def _init_evolution(self) -> None:
        """Evolution records (used only when ``config.evolution.every > 0``)."""
        ev = self.config.evolution
        self.evolving = ev.enabled
        w = ev.fitness_weights
        # the tile FFN records hidden-unit fitness in backward only when it is used
        self.predictor.ffn.configure_fitness(
            track=self.evolving, decay=ev.fitness_decay,
            **{k: float(w.get(k, 0.0)) for k in ("importance", "diversity", "stability",
                                                   "energy")})
        params: dict[str, Any] = {"seed": self.config.seed, **ev.surgery_params}
        self.surgery = TileSurgeryPolicy(**params)
        n = self.fabric.n if self.fabric is not None and self.evolving else 0
        self.lineage = Lineage(ev, self.n_channels, self.config.predictor.d_model,
                               None if self.som is None else self.som.map_shape, n)

    # ---------------------------------------------------------------- API
    def set_learning_mode(self, enabled: bool) -> None:
        """Switch learning on or off (inference and scoring always continue).

        Off takes effect at once (the current micro-batch is not trained);
        on takes effect at the next micro-batch boundary.
        """
        self.learning_enabled = bool(enabled)
        if not self.learning_enabled:
            self._batch_learns = False
            self._batch_scale = 0.0

    def force_mode(self, mode: str | None) -> None:
        """Force a propagation mode for every step (``None`` resumes the cycle)."""
        if mode is not None and mode not in ("normal", "random", "intentional",
                                             "bidirectional"):
            raise AgentError("unknown mode", mode=mode)
        self._forced_mode = mode

    @property
    def frame_times(self) -> FrameLog:
        """Frames whose stream time went back or repeated, counted (read-only use)."""
        return self._frames

    @property
    def at_boundary(self) -> bool:
        """True between micro-batches (a consistent point for snapshots)."""
        return self.step % self.config.predictor.batch_size == 0

    def process(self, frame: npt.ArrayLike, t: float | None = None, *,
                mode: str | None = None, on_evolution: EvolutionHook | None = None
                ) -> Metrics:
        """Learn from one frame and return what was learned.

        Parameters
        ----------
        frame : array_like, shape (n_channels,)
            Sensor values in their own units; must be finite.
        t : float, optional
            Stream time (s since the epoch).
        mode : str, optional
            Force the propagation mode of this step.
        on_evolution : callable, optional
            Called with the report of an evolution round run before the frame
            (see :meth:`process_iter`).
        """
        return self.process_many(np.asarray(frame, dtype=np.float64).reshape(1, -1),
                                 None if t is None else [t], mode=mode,
                                 on_evolution=on_evolution)[0]

    def train_step(self, frame: npt.ArrayLike, mode: str | None = None) -> dict[str, Any]:
        """Seed-003 name: process one frame, return the metrics as a dict."""
        return self.process(frame, mode=mode).as_dict()

    def learn_one(self, x: npt.ArrayLike) -> None:
        """river-style: learn from one frame."""
        self.process(x)

    def score_one(self, x: npt.ArrayLike) -> float:
        """river-style: anomaly likelihood of one frame (the agent also learns from it,
        as a streaming detector does; use :meth:`set_learning_mode` to freeze it)."""
        return self.process(x).anomaly_likelihood

    def predict_one(self) -> list[float]:
        """Forecast of the next frame in input units (after at least one frame)."""
        if self._prev_pred is None:
            raise AgentError("no frame seen yet")
        return [float(v) for v in self.normalizer.inverse(self._prev_pred)]

    def process_many(self, frames: npt.ArrayLike, ts: Sequence[float | None] | None = None,
                     *, mode: str | None = None, on_evolution: EvolutionHook | None = None,
                     evolve: bool = True) -> list[Metrics]:
        """Process frames in order; same results as calling :meth:`process` on each.

        The forecast of a run of frames inside one micro-batch is done in one
        call, which is what makes replay fast. ``ts``: one stream time per
        frame (s since the epoch), ``None`` for a frame without one.
        ``on_evolution``, ``evolve``: see :meth:`process_iter`.
        """
        out: list[Metrics] = []
        for part in self.process_iter(frames, ts, mode=mode, on_evolution=on_evolution,
                                      evolve=evolve):
            out.extend(part)
        return out

    def process_iter(self, frames: npt.ArrayLike, ts: Sequence[float | None] | None = None,
                     *, mode: str | None = None, on_evolution: EvolutionHook | None = None,
                     evolve: bool = True) -> Iterator[list[Metrics]]:
        """:meth:`process_many` in parts: the metrics of each run of frames as soon
        as they are known, before the training step that may follow them.

        A runtime reports a micro-batch's last frame without waiting for its
        training step; the training step runs when the next part is asked for
        (or the iteration ends), so the iterator must be consumed to the end.
        The frames and times are validated before the first part (errors raise
        here, at the call, before any state changes): frames must be finite,
        times (seconds since the epoch) finite and within ``MAX_ABS_T``.

        With evolution on, each round runs here, before the frame of the step
        it falls due at (:meth:`evolution_due`), so rounds fall on the same
        steps however the stream is cut into calls, and across a snapshot and
        a restart. ``on_evolution(report)`` is called with each round's report
        (:meth:`evolve`); a round that raises is reported as ``{"step",
        "round", "error"}`` instead, the frames go on and the next round falls
        due ``evolution.every`` steps later. ``evolve=False`` runs no round
        (they stay due): a copy evaluated as it stands.
        """
        X = np.asarray(frames, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_channels:
            raise AgentError("frames must have shape (n, n_channels)", shape=X.shape,
                             n_channels=self.n_channels)
        if not np.all(np.isfinite(X)):
            raise AgentError("frames contain NaN or Inf")
        if ts is not None:
            if len(ts) != X.shape[0]:
                raise AgentError("one time stamp per frame", frames=X.shape[0], times=len(ts))
            for i, t in enumerate(ts):
                if t is not None and not (math.isfinite(t) and abs(t) <= MAX_ABS_T):
                    raise AgentError("frame time not finite or beyond the bound", index=i,
                                     t=t, bound=MAX_ABS_T)
        return self._parts(X, ts, mode, on_evolution, self.evolving and evolve)

    def _parts(self, X: F64, ts: Sequence[float | None] | None, mode: str | None,
               on_evolution: EvolutionHook | None, evolving: bool
               ) -> Iterator[list[Metrics]]:
        B = self.config.predictor.batch_size
        i = 0
        while i < X.shape[0]:
            if evolving and self.step >= self.lineage.next_due:
                self._scheduled_round(on_evolution)
            if self.at_boundary:
                self._begin_batch()
            j = min(X.shape[0], i + B - self.step % B, i + SEGMENT_MAX)
            if evolving:  # a segment ends before the next round
                j = min(j, i + self.lineage.next_due - self.step)
            yield self._segment(X[i:j], None if ts is None else ts[i:j], mode)
            i = j
            if self.at_boundary:
                self._train_batch()

    # ---------------------------------------------------------------- internals
    def _begin_batch(self) -> None:
        # what the per-frame pass reads of the scoring pass's state is frozen for
        # the micro-batch (goal pattern, running SOM error), so a micro-batch cut
        # into calls anywhere (one by one, chunks, a snapshot and restart) computes
        # the same bits
        self._batch_qe = self._qe_avg
        if self.fabric is not None:
            self._batch_goal[:] = self._goal
        mods = self.bio.modulators()
        self._batch_learns = self.learning_enabled and self.bio.can_learn()
        self._batch_scale = mods["learning_drive"] if self._batch_learns else 0.0

    def _segment(self, X: F64, ts: Sequence[float | None] | None, force: str | None
                 ) -> list[Metrics]:
        n = X.shape[0]
        feats = np.empty((n, self.feat_dim), dtype=np.float32)
        lasts = np.empty((n, self.n_channels), dtype=np.float32)
        zs = np.empty((n, self.n_channels), dtype=np.float64)
        qes = np.zeros(n)
        bmus = np.full(n, -1, dtype=np.int64)
        locs = np.empty((n, self.n_channels), dtype=np.float64)
        scales = np.empty((n, self.n_channels), dtype=np.float64)
        modes: list[str] = []
        learns = self._batch_learns
        plast = self._batch_scale
        for r in range(n):
            x = X[r]
            z = self.normalizer.transform(x)
            zs[r] = z
            self.normalizer.learn_one(x)  # statistics, not learning work: never gated
            # the forecast is reported in the units of the statistics after this frame
            locs[r] = self.normalizer.mean
            scales[r] = self.normalizer.effective_scale()
            m = force or self._forced_mode or self.modes.mode_at(self.step + r)
            modes.append(m)
            self._hist[:-1] = self._hist[1:]
            self._hist[-1] = z
            k = self.n_channels * self.history
            feats[r, :k] = self._hist.reshape(-1)
            if self.fabric is not None and self.som is not None:
                self.fabric.step(z, mode=m, goal=self._batch_goal,  # type: ignore[arg-type]
                                 plasticity=plast, substeps=self.config.fabric.substeps)
                self._acts[r] = self.fabric.activation  # for the goal update below
                pooled = self.fabric.pooled()
                nf = self.fabric.n_features
                som_in = self._som_in
                som_in[nf:2 * nf] = DELTA_GAIN * (pooled - som_in[:nf])
                som_in[:nf] = pooled
                # (sum / size: np.mean's bits without its per-call overhead)
                dh = np.abs(np.diff(self._hist, axis=0))
                som_in[-1] = VAR_GAIN * math.log(float(dh.sum() / dh.size) + 1e-3)
                if learns:
                    bmu = self.som.update(som_in)
                    qe = self.som.last_quant_error
                else:
                    bmu = self.som.bmu(som_in)
                    qe = float(np.linalg.norm(som_in - self.som.weights[bmu]))
                bmus[r] = bmu
                qes[r] = qe
                if self.evolving:
                    self.lineage.observe_profile(int(bmu), z, self.fabric.activation)
                feats[r, k:k + nf] = pooled
                coords = np.unravel_index(bmu, self.som.map_shape)
                feats[r, k + nf:k + nf + len(coords)] = np.asarray(coords) / self._som_scale
                feats[r, -1] = qe / (self._batch_qe + 1e-6) if self._batch_qe > 0 else 1.0
            lasts[r] = z
        preds = self._forecast(feats, lasts)
        out: list[Metrics] = []
        for r in range(n):
            z = zs[r]
            t_r = None if ts is None or (tr := ts[r]) is None else float(tr)
            if self._prev_pred is None:
                loss, miss = 0.0, None
            else:
                diff = z - self._prev_pred
                loss = float((diff * diff).sum() / diff.size)  # (np.mean's bits, less overhead)
                miss = np.abs(diff)
                if learns and self._prev_feat is not None and self._prev_last is not None:
                    self._pending.feats.append(self._prev_feat)
                    self._pending.lasts.append(self._prev_last)
                    self._pending.targets.append(z.astype(np.float32))
            self._n_qe += 1
            self._qe_avg += max(1.0 / self._n_qe, 1e-3) * (float(qes[r]) - self._qe_avg)
            self._frames.observe(t_r)
            terms = FrameTerms(X[r], z, miss, float(qes[r]), scales[r], t_r)
            if self.term_log is not None:
                self.term_log.append(terms)
            sc = self.detector.score(terms)
            if self._prev_pred is not None:
                self.bio.observe_loss(loss)
                self.recent_losses.append(loss)
            if self.fabric is not None and learns and loss <= self.bio.loss_slow:
                # intentional mode's goal: the fabric's familiar (well-predicted) states
                self._goal += 0.01 * (self._acts[r] - self._goal)
            self.bio.step(plast if learns else 0.0)
            if not learns:
                self.skipped_steps += 1
            self._prev_pred = preds[r]
            self._prev_feat = feats[r].copy()
            self._prev_last = lasts[r].copy()
            mods = self.bio.modulators()
            out.append(Metrics(
                step=self.step, t=t_r,
                loss=loss,
                anomaly_score=sc.raw, anomaly_likelihood=sc.likelihood,
                alarm=sc.alarm, alarm_reason=sc.reason, alarm_onset=sc.onset,
                prediction=[float(v) for v in locs[r] + preds[r] * scales[r]],
                bmu=int(bmus[r]), mode=modes[r], energy=mods["energy"],
                learning_drive=mods["learning_drive"], mood=mods["mood"], skipped=not learns,
            ))
            self.step += 1
        return out

    def _forecast(self, feats: F32, lasts: F32) -> F64:
        """Forecasts of a segment's rows, computed batch-invariantly.

        BLAS (and torch) kernels may round a row differently depending on
        the shape of the call (a single row goes through a matrix-vector
        kernel); the forecast kernels compute every row alone by the same
        loops, so each frame's forecast is the same bits however the stream
        is cut into calls (one by one, chunks, a snapshot and a restart
        mid-batch)."""
        # numba, not torch: a few small arrays, where torch's per-operation
        # overhead was most of a frame's cost; tile usage is counted by the
        # training step, once per micro-batch whatever the calls
        plan = self._plan
        if plan is None or not plan.current(self.predictor.ffn):
            plan = self._plan = self.predictor.plan()
        pred = self.predictor.infer(feats, lasts, plan)
        out: F64 = pred.astype(np.float64)
        return out

    def _make_detector(self) -> Detector:
        return Detector(self.n_channels, self.config.score, som=self.fabric is not None)

    def _train_batch(self) -> None:
        p = self._pending
        if not p.feats or self._batch_scale <= 0.0:
            self._pending = _Pending()
            return
        pc = self.config.predictor
        for g in self.optimizer.param_groups:
            g["lr"] = pc.lr * self._batch_scale
        if not self.evolving and self.predictor.fits_fast:
            # numba: the same step as autograd's, without its dispatch cost and
            # with the GIL released (evolution needs autograd's gradient hooks)
            self.predictor.fit_batch(np.stack(p.feats), np.stack(p.lasts),
                                     np.stack(p.targets), optimizer=self.optimizer,
                                     aux_weight=pc.aux_weight, grad_clip=pc.grad_clip)
        else:
            self._train_autograd(p)
        self._plan = None  # new weights (a fused step bumps no tensor version)
        self.total_updates += 1
        self._pending = _Pending()

    def _train_autograd(self, p: _Pending) -> None:
        """The training step in torch autograd (with evolution's fitness signals)."""
        pc = self.config.predictor
        feats = torch.from_numpy(np.stack(p.feats))
        lasts = torch.from_numpy(np.stack(p.lasts))
        targets = torch.from_numpy(np.stack(p.targets))
        if self.evolving:
            feats.requires_grad_(True)  # dLoss/d(pooled fabric): the fabric's fitness signal
        pred, aux = self.predictor(feats, lasts)
        task = torch.nn.functional.huber_loss(pred, targets, delta=1.0)
        loss = task + pc.aux_weight * aux["total_aux"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.predictor.parameters(), pc.grad_clip)
        self.optimizer.step()
        if self.evolving:
            self._observe_batch(feats, pred.detach(), targets)

    # ---------------------------------------------------------------- evolution
    def _observe_batch(self, feats: torch.Tensor, pred: torch.Tensor,
                       targets: torch.Tensor) -> None:
        """After a training step: fabric fitness from the gradient of the pooled
        features, and the recent predictor inputs and errors the surgery policy reads."""
        if self.fabric is not None and feats.grad is not None:
            k = self.n_channels * self.history
            g = feats.grad[:, k:k + self.fabric.n_features].abs().mean(0)
            self.fabric.observe_importance(g.numpy())
        if not self.config.evolution.surgery:
            return
        with torch.no_grad():
            h = torch.tanh(self.predictor.proj(feats.detach())).numpy()
            err = (pred - targets).square().mean(1).numpy()
        self.lineage.observe_inputs(h, err)

    def steps_to_evolution(self) -> int | None:
        """Frames until the next evolution round is due (0: due now); None when off.

        The round runs before the frame of that step, in :meth:`process_iter`."""
        return max(self.lineage.next_due - self.step, 0) if self.evolving else None

    def evolution_due(self) -> bool:
        """An evolution round is due before the next frame: evolution on, warm-up
        over and ``every`` steps since the last round."""
        return self.evolving and self.step >= self.lineage.next_due

    def _scheduled_round(self, on_evolution: EvolutionHook | None) -> None:
        """The round due now (see :meth:`process_iter`), reported to ``on_evolution``."""
        try:
            report = self.evolve()
        except Exception as e:  # reported; the frames go on
            report = {"step": self.step, "round": self.lineage.rounds + 1, "error": repr(e)}
            self.lineage.next_due = self.step + self.config.evolution.every
        if on_evolution is not None:
            on_evolution(report)

    def _fabric_strategies(self) -> dict[int, LayerStrategy]:
        ev = self.config.evolution
        assert self.fabric is not None
        out: dict[int, LayerStrategy] = {}
        for z in range(self.fabric.shape[2]):
            le = ev.layers.get(z, ev.fabric)
            if le is not None:
                out[z] = LayerStrategy(prune_rate=le.prune_rate,
                                       mutation_strength=le.mutation_strength,
                                       regrowth=le.regrowth)
        return out

    def evolve(self) -> dict[str, Any]:
        """One evolution round, now: fabric apoptosis per z-layer, tile hidden-unit
        apoptosis, then the tile surgery policy.

        Call it at a step boundary (the runtime does, when :meth:`evolution_due`);
        the next round falls due ``evolution.every`` steps later. Fabric neurons
        die by lowest fitness (EMA of ``|activation x dLoss/dpooled|``, or the
        multi-objective mix of ``evolution.fitness_weights``) within each
        z-layer's strategy, tile hidden units likewise within each tile; slots
        are regrown by preservation (Net2Net split: outputs unchanged),
        mutation or crossover. Regrown tile units get fresh optimiser moments;
        mutation and crossover neurons start at rest with empty traces, a
        preserving split copies its parent (state, goal entry, specialization
        profile). Every birth and death is recorded (:meth:`lineage_history`),
        a policy reseed's too (the tile's units die; the new ones have no parents,
        generation 0).

        Returns
        -------
        dict
            ``step``, ``round``; ``fabric``: ``died``, ``born``, ``nnz_before``,
            ``nnz_after``, ``layers`` (``layer``, ``strategy``, ``turnover``,
            ``skipped`` of each layer that changed); ``tiles``: ``died``,
            ``born``, ``fraction``, ``strategy``, ``frozen_skipped``,
            ``unobserved_skipped``; ``surgery``: the policy's operations.
            JSON-serialisable.

        Raises
        ------
        AgentError
            When evolution is off (``evolution.every = 0``).
        """
        if not self.evolving:
            raise AgentError("evolution is off (set evolution.every > 0)")
        ev = self.config.evolution
        self._plan = None  # weights and signatures change (in place: the versions say so too)
        out: dict[str, Any] = {"step": self.step, "round": self.lineage.rounds + 1}
        if self.fabric is not None:
            out["fabric"] = self._evolve_fabric()
        out["tiles"] = self._evolve_tiles()
        if ev.surgery:
            recent_h, recent_err = self.lineage.recent()
            ffn = self.predictor.ffn
            ids = ffn.unit_lineage()["ids"]
            fit = ffn.unit_fitness().numpy()
            out["surgery"] = self.surgery.run(
                ffn, recent_inputs=recent_h, recent_errors=recent_err, step=self.step,
                optimizer=self.optimizer)
            # a reseeded tile's units die and are born anew (no parents, generation 0)
            lin = ffn.unit_lineage()
            t, u = np.nonzero(lin["ids"] != ids)
            if t.size:
                o = np.argsort(lin["ids"][t, u], kind="stable")
                t, u = t[o], u[o]
                self.lineage.record(TILE, self.step, ids[t, u], fit[t, u], lin["ids"][t, u],
                                    lin["parents"][t, u], lin["generation"][t, u])
        self.lineage.rounds += 1
        self.lineage.next_due = self.step + ev.every
        return out

    def _evolve_fabric(self) -> dict[str, Any]:
        fab = self.fabric
        assert fab is not None
        ev = self.config.evolution
        fit = fab.fitness.copy()
        rep = fab.apoptosis(strategies=self._fabric_strategies(), step=self.step,
                            seed=self.config.seed, allow_sensory=ev.allow_sensory)
        layers = rep["layers"]
        if rep["died"]:
            self.rebase_pooled()
        slots = np.array([s for ly in layers for s in ly["slots"]], dtype=np.int64)
        died = np.array([d for ly in layers for d in ly["died"]], dtype=np.int64)
        if slots.size:
            parents = fab.parent_ids[slots].copy()
            self.lineage.record(FABRIC, self.step, died, fit[slots],
                                fab.neuron_id[slots].copy(), parents, fab.generation[slots])
            pres = np.array([ly["strategy"] == "preservation"
                             for ly in layers for _ in ly["slots"]], dtype=bool)
            # the first parent's slot from its id (parents are survivors)
            order = np.argsort(fab.neuron_id)
            pslot = order[np.searchsorted(fab.neuron_id[order], parents[:, 0])]
            self._goal[slots] = np.where(pres, self._goal[pslot], np.float32(0.0))
            self._batch_goal[slots] = np.where(pres, self._batch_goal[pslot], np.float32(0.0))
            self.lineage.inherit(slots, pslot, pres)
        return {"died": rep["died"], "born": rep["born"], "nnz_before": rep["nnz_before"],
                "nnz_after": rep["nnz_after"],
                "layers": [{"layer": ly["layer"], "strategy": ly["strategy"],
                            "turnover": ly["turnover"], "skipped": ly["skipped"]}
                           for ly in layers if ly["turnover"] or ly["skipped"]]}

    def rebase_pooled(self) -> None:
        """Take the fabric's current pooled features as the SOM's "previous" ones.

        The SOM sees the change of the pooled features since the last frame;
        after an edit of the fabric (an apoptosis round, or any surgery on its
        arrays) that change would include the edit itself and show up as a
        jump in the quantisation error at the next frame: a false alarm made
        by the agent, not by the sensors."""
        if self.fabric is not None:
            self._som_in[:self.fabric.n_features] = self.fabric.pooled()

    def _evolve_tiles(self) -> dict[str, Any]:
        ffn = self.predictor.ffn
        ev = self.config.evolution
        fit = ffn.unit_fitness().numpy()
        rep = ffn.apoptosis(prune_rate=ev.tiles.prune_rate, regrowth=ev.tiles.regrowth,
                            mutation_strength=ev.tiles.mutation_strength, step=self.step,
                            optimizer=self.optimizer,
                            min_observations=ev.tile_min_observations)
        tiles = np.asarray(rep["tiles"], dtype=np.int64)
        units = np.asarray(rep["units"], dtype=np.int64)
        if tiles.size:
            lin = ffn.unit_lineage()
            self.lineage.record(TILE, self.step, np.asarray(rep["died"], dtype=np.int64),
                                fit[tiles, units], np.asarray(rep["born"], dtype=np.int64),
                                np.asarray(rep["parents"], dtype=np.int64).reshape(-1, 2),
                                lin["generation"][tiles, units])
        tv = rep["turnover"]
        return {"died": tv["died"], "born": tv["born"], "fraction": tv["fraction"],
                "strategy": ev.tiles.regrowth, "frozen_skipped": tv["frozen_skipped"],
                "unobserved_skipped": tv["unobserved_skipped"]}

    def lineage_history(self) -> dict[str, npt.NDArray[Any]]:
        """Every birth and death since the agent was made (copies).

        Returns
        -------
        dict
            ``births`` int64 (B, 6): ``kind`` (0 fabric neuron, 1 tile hidden
            unit), ``id``, ``parent0``, ``parent1`` (-1: none), ``generation``,
            ``step``; ``deaths`` int64 (D, 3): ``kind``, ``id``, ``step``;
            ``death_fitness`` float32 (D,): its fitness when it died.
        """
        return self.lineage.history()

    def specialization(self) -> dict[str, npt.NDArray[Any]]:
        """Specialization profile of every fabric neuron (what drives it).

        Returns
        -------
        dict
            ``profile`` float32 (n, R + C): per neuron, the EMA of its
            activation while the SOM's best-matching unit lies in each of the
            R map regions (the map cut into at most 4 x 4 blocks), then the
            EMA of ``activation x z_c`` for each input channel c (normalised
            units); ``neuron_id`` int64 (n,); ``regions`` and ``channels``
            (int64 scalars R and C). Empty (n = 0) when evolution is off or the
            fabric is ablated.
        """
        ids = (self.fabric.neuron_id.copy() if self.fabric is not None and self.evolving
               else np.zeros(0, dtype=np.int64))
        return {"profile": np.ascontiguousarray(self.lineage.profile.T), "neuron_id": ids,
                "regions": np.array(self.lineage.n_regions, dtype=np.int64),
                "channels": np.array(self.n_channels, dtype=np.int64)}

    # ---------------------------------------------------------------- statistics
    def get_training_statistics(self) -> dict[str, Any]:
        """Seed-003 names: ``total_updates``, ``recent_losses`` and more."""
        stats: dict[str, Any] = {
            "steps": self.step,
            "total_updates": self.total_updates,
            "skipped_steps": self.skipped_steps,
            "recent_losses": list(self.recent_losses)[-100:],
            "mean_recent_loss": float(np.mean(self.recent_losses)) if self.recent_losses
            else 0.0,
            "modulators": self.bio.modulators(),
            "learning_enabled": self.learning_enabled,
        }
        if self.som is not None:
            stats["som"] = self.som.get_training_status()
        if self.evolving:
            lin = self.lineage
            stats["evolution"] = {"rounds": lin.rounds, "next_due": lin.next_due,
                                  "births": int(lin.births.shape[0]),
                                  "deaths": int(lin.deaths.shape[0])}
        return stats

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Whole agent as a flat dict of numpy arrays (no pickle anywhere).

        Keys are prefixed by component (``fabric/``, ``som/``, ``predictor/``,
        ``optim/``, ``bio/``, ``norm/``, ``lik/``, ``agent/``). The agent's
        configuration is stored as UTF-8 JSON bytes under ``agent/config``.
        """
        d: dict[str, npt.NDArray[Any]] = {}

        def put(prefix: str, sub: dict[str, npt.NDArray[Any]]) -> None:
            for k, v in sub.items():
                d[f"{prefix}/{k}"] = np.asarray(v)

        if self.fabric is not None and self.som is not None:
            put("fabric", self.fabric.get_state())
            put("som", dict(self.som.get_state()))
            d["agent/goal"] = self._goal.copy()
            d["agent/batch_goal"] = self._batch_goal.copy()
            d["agent/som_in"] = self._som_in.copy()
        for k, v in self.predictor.state_dict().items():
            d[f"predictor/{k}"] = v.detach().cpu().numpy().copy()
        # the tile FFN's own state adds claims, surgery history and counters
        put("tiles", self.predictor.ffn.get_state())
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for k, v in st.items():
                d[f"optim/{idx}/{k}"] = (v.detach().cpu().numpy().copy()
                                         if isinstance(v, torch.Tensor) else np.asarray(v))
        put("bio", self.bio.get_state())
        put("norm", self.normalizer.get_state())
        for section, sub in self.detector.get_state().items():
            put(section, sub)
        d["agent/counters"] = np.array([self.step, self.total_updates, self.skipped_steps,
                                        int(self.learning_enabled), self._n_qe,
                                        STATE_VERSION], dtype=np.int64)
        # (the running means of the raw score's terms: the SOM error's is a forecast feature)
        means = self.detector.means
        d["agent/scores"] = np.array([means[0], self._qe_avg, means[2]], dtype=np.float64)
        d["agent/frames"] = self._frames.as_array()
        d["agent/hist"] = self._hist.copy()
        has_prev = self._prev_pred is not None
        d["agent/has_prev"] = np.array(int(has_prev), dtype=np.int64)
        if has_prev:
            assert self._prev_pred is not None and self._prev_feat is not None
            assert self._prev_last is not None
            d["agent/prev_pred"] = self._prev_pred.copy()
            d["agent/prev_feat"] = self._prev_feat.copy()
            d["agent/prev_last"] = self._prev_last.copy()
        d["agent/recent_losses"] = np.array(self.recent_losses, dtype=np.float64)
        # the part-filled micro-batch, so a snapshot can be taken after any frame
        p = self._pending
        d["agent/pending_feats"] = (np.stack(p.feats) if p.feats
                                    else np.zeros((0, self.feat_dim), dtype=np.float32))
        d["agent/pending_lasts"] = (np.stack(p.lasts) if p.lasts
                                    else np.zeros((0, self.n_channels), dtype=np.float32))
        d["agent/pending_targets"] = (np.stack(p.targets) if p.targets
                                      else np.zeros((0, self.n_channels), dtype=np.float32))
        d["agent/batch"] = np.array([self._batch_scale, float(self._batch_learns),
                                     self._batch_qe], dtype=np.float64)
        if self.evolving:
            put("evo", self.lineage.state()._asdict())
            put("surgery", self.surgery.get_state())
        meta = {"n_channels": self.n_channels, "name": self.name,
                "config": self.config.model_dump(mode="json"),
                "forced_mode": self._forced_mode}
        d["agent/meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()
        return d

    @staticmethod
    def meta_of(state: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """Decode the JSON metadata (channels, name, config) of a state dict."""
        meta: dict[str, Any] = json.loads(bytes(np.asarray(state["agent/meta"],
                                                           dtype=np.uint8)).decode())
        return meta

    @classmethod
    def from_state(cls, state: dict[str, npt.NDArray[Any]]) -> Agent:
        """Build an agent from :meth:`get_state` (configuration included)."""
        meta = cls.meta_of(state)
        agent = cls(int(meta["n_channels"]), AgentConfig.model_validate(meta["config"]),
                    name=str(meta["name"]))
        agent.set_state(state)
        return agent

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`; the agent then continues bit-identically.

        The scoring settings (``score.*``: raw-score weights, likelihood
        windows and rest period) may differ from the state's: they shape what
        is reported, not what was learned, so an upgrade or a
        retuned score keeps the learned agent. The new settings apply from the
        next frame, :attr:`score_changes` lists them, and when the likelihood's
        windows no longer fit (``window`` or ``short`` changed) the likelihood
        starts over (0.5 for ``min_history`` frames). Continuation is then no
        longer bit-identical to the old settings, by design.

        Raises
        ------
        StateError
            When the state belongs to another configuration (anything but the
            scoring settings; ``score.norm_alpha`` counts as a model setting,
            since the normalised frames feed the fabric and the predictor) or
            is incomplete.
        """
        meta = self.meta_of(state)
        self._plan = None
        diffs = config_differences(state, self.config, self.n_channels)
        score_changes = [d for d in diffs if _resume_safe(d)]
        if len(score_changes) < len(diffs):
            raise StateError("agent state belongs to another configuration",
                             differences=[d for d in diffs if not _resume_safe(d)])

        def sub(prefix: str) -> dict[str, npt.NDArray[Any]]:
            pre = prefix + "/"
            return {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}

        try:
            if self.fabric is not None and self.som is not None:
                self.fabric.set_state(sub("fabric"))
                self.som.set_state(sub("som"))
                self._goal = np.asarray(state["agent/goal"], dtype=np.float32).copy()
                # (older snapshots: taken at micro-batch starts, where the two agree)
                self._batch_goal = np.asarray(state.get("agent/batch_goal", self._goal),
                                              dtype=np.float32).copy()
                self._som_in = np.asarray(state["agent/som_in"], dtype=np.float32).copy()
            sd = {k: torch.from_numpy(np.array(v)) for k, v in sub("predictor").items()}
            self.predictor.load_state_dict(sd)
            self.predictor.ffn.set_state(sub("tiles"))
            opt = self.optimizer.state_dict()
            new_state: dict[int, dict[str, Any]] = {}
            for k, v in sub("optim").items():
                idx, name = k.split("/", 1)
                new_state.setdefault(int(idx), {})[name] = torch.from_numpy(np.array(v))
            opt["state"] = new_state
            self.optimizer.load_state_dict(opt)
            self.bio.set_state(sub("bio"))
            self.normalizer.set_state(sub("norm"))
            self.detector = self._make_detector()
            c = np.asarray(state["agent/counters"], dtype=np.int64)
            scores = np.asarray(state["agent/scores"], dtype=np.float64)
            sections = {name: sub(name) for name in SECTIONS}
            if "means" not in sections["lik"]:  # (older snapshots: the agent kept them)
                sections["lik"]["means"] = np.array([*scores, float(c[4])])
            self.detector.set_state(sections, tolerant=bool(score_changes))
            self.score_changes = score_changes
            self.step, self.total_updates, self.skipped_steps = int(c[0]), int(c[1]), int(c[2])
            self.learning_enabled, self._n_qe = bool(c[3]), int(c[4])
            self._qe_avg = float(scores[1])
            self._frames = FrameLog()
            if "agent/frames" in state:
                self._frames.load(state["agent/frames"])
            self._hist = np.asarray(state["agent/hist"], dtype=np.float32).copy()
            if int(state["agent/has_prev"]):
                self._prev_pred = np.asarray(state["agent/prev_pred"], dtype=np.float64).copy()
                self._prev_feat = np.asarray(state["agent/prev_feat"], dtype=np.float32).copy()
                self._prev_last = np.asarray(state["agent/prev_last"], dtype=np.float32).copy()
            else:
                self._prev_pred = self._prev_feat = self._prev_last = None
            self.recent_losses = deque((float(v) for v in state["agent/recent_losses"]),
                                       maxlen=1000)
            self._forced_mode = meta.get("forced_mode")
            pend = _Pending()
            for name, lst in (("feats", pend.feats), ("lasts", pend.lasts),
                              ("targets", pend.targets)):
                arr = np.asarray(state[f"agent/pending_{name}"], dtype=np.float32)
                lst.extend(arr[i].copy() for i in range(arr.shape[0]))
            self._pending = pend
            bs = np.asarray(state["agent/batch"], dtype=np.float64)
            self._batch_scale, self._batch_learns = float(bs[0]), bool(bs[1])
            self._batch_qe = float(bs[2]) if bs.size > 2 else self._qe_avg
            if self.evolving and "evo/counters" in state:
                self.lineage.set_state(sub("evo"))
                surgery = sub("surgery")
                if surgery:
                    self.surgery.set_state(surgery)
        except KeyError as e:
            raise StateError("agent state lacks an array", missing=str(e)) from e


# differences under this prefix (the scoring settings) do not block a restore,
# except the normaliser's rate: the normalised frames are the model's input
SCORE_PREFIX = "score."
MODEL_SCORE_KEYS = ("score.norm_alpha",)


def _resume_safe(difference: str) -> bool:
    """Whether a line of :func:`config_differences` may differ on a restore."""
    key = difference.split(":", 1)[0]
    return key.startswith(SCORE_PREFIX) and key not in MODEL_SCORE_KEYS


def config_differences(state: dict[str, npt.NDArray[Any]], config: AgentConfig,
                       n_channels: int | None, *, scoring: bool = True) -> list[str]:
    """Differences between the agent configuration stored in ``state`` and
    ``config`` (and the channel count, when given), human-readable; empty when
    they match. Settings added since the state was written take their defaults;
    a stored configuration that no longer validates is compared as stored.
    ``scoring=False`` leaves out the scoring settings (``score.*`` but
    ``score.norm_alpha``), which a restore may change (see :meth:`Agent.set_state`)."""
    meta = Agent.meta_of(state)
    theirs = meta["config"]
    with contextlib.suppress(ValueError):
        theirs = AgentConfig.model_validate(theirs).model_dump(mode="json")
    diffs = _config_diff(theirs, config.model_dump(mode="json"))
    if not scoring:
        diffs = [d for d in diffs if not _resume_safe(d)]
    if n_channels is not None and int(meta["n_channels"]) != n_channels:
        diffs.append(f"n_channels: {meta['n_channels']} != {n_channels}")
    return diffs


def _config_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out.extend(_config_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k))
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
