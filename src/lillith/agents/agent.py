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

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.agent_state import AgentState
from lillith.agents.evolution import evolve_fabric, evolve_tiles, run_surgery
from lillith.agents.metrics import Metrics
from lillith.agents.parts import SEGMENT_MAX, _Pending
from lillith.agents.scores.detector import FrameTerms
from lillith.errors import AgentError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
# weight of the frame-to-frame change of the pooled fabric state in the SOM input
DELTA_GAIN = 4.0
# weight of log(mean |frame-to-frame change| of the recent normalised inputs) in it
VAR_GAIN = 0.5
# largest |stream time| accepted (s): the time-based scores count hours, days and
# 10-minute bins in int64, with margin (the MQTT edge has its own, smaller bound)
MAX_ABS_T = 1e15


EvolutionHook = Callable[[dict[str, Any]], None]
"""Receives the report of an evolution round (:meth:`Agent.evolve`)."""


class Agent(AgentState):
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

    feature_names: tuple[str, ...] | None = None
    """Keys of the dicts given to :meth:`learn_one` / :meth:`score_one`, in frame
    order (sorted), fixed by the first dict; ``None`` until then."""

    def frame_of(self, x: Mapping[str, float] | npt.ArrayLike) -> F64:
        """One frame from a river-style dict of features or an array.

        A dict's keys are sorted into the frame's channels by the first dict
        seen (:attr:`feature_names`); every later dict must have the same keys.

        Raises
        ------
        AgentError
            A dict whose keys differ from the first one's, or whose number of
            keys is not ``n_channels``.
        """
        if not isinstance(x, Mapping):
            return np.asarray(x, dtype=np.float64).reshape(-1)
        names = self.feature_names
        if names is None:
            names = tuple(sorted(str(k) for k in x))
            if len(names) != self.n_channels:
                raise AgentError("a dict frame needs one key per channel",
                                 keys=len(names), n_channels=self.n_channels)
            self.feature_names = names
        if len(x) != len(names) or any(k not in x for k in names):
            raise AgentError("the dict's keys differ from the first dict's",
                             expected=list(names)[:16], got=sorted(map(str, x))[:16])
        return np.array([float(x[k]) for k in names], dtype=np.float64)

    def learn_one(self, x: Mapping[str, float] | npt.ArrayLike) -> None:
        """river-style: learn from one frame (an array, or a dict of features:
        :meth:`frame_of`)."""
        self.process(self.frame_of(x))

    def score_one(self, x: Mapping[str, float] | npt.ArrayLike) -> float:
        """river-style: the anomaly likelihood the frame would get, without learning it.

        Side-effect free (river's contract): the agent's state is copied,
        the frame processed and the copy restored, so asking twice gives the
        same answer and the next :meth:`learn_one` or :meth:`process` is
        unaffected. The copy costs about twice a frame's processing; a
        streaming caller that scores and then learns every frame should call
        :meth:`process` once instead (its ``anomaly_likelihood``), or use
        :class:`lillith.river.Detector`, which learns a scored frame without
        processing it again.
        """
        frame = self.frame_of(x)
        saved, changes = self.get_state(), self.score_changes
        try:
            return self.process(frame).anomaly_likelihood
        finally:
            self.set_state(saved)
            self.score_changes = changes

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
            z = self.normalizer.update_one(x)  # statistics, not learning work: never gated
            zs[r] = z
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

    def _scheduled_round(self, on_evolution: EvolutionHook | None) -> None:
        """The round due now (see :meth:`process_iter`), reported to ``on_evolution``."""
        try:
            report = self.evolve()
        except Exception as e:  # reported; the frames go on
            report = {"step": self.step, "round": self.lineage.rounds + 1, "error": repr(e)}
            self.lineage.next_due = self.step + self.config.evolution.every
        if on_evolution is not None:
            on_evolution(report)

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
            out["fabric"] = evolve_fabric(self.fabric, self.config, self.lineage, self.step,
                                          goals=(self._goal, self._batch_goal))
            if out["fabric"]["died"]:
                self.rebase_pooled()
        ffn = self.predictor.ffn
        out["tiles"] = evolve_tiles(ffn, self.optimizer, ev, self.lineage, self.step)
        if ev.surgery:
            out["surgery"] = run_surgery(ffn, self.surgery, self.optimizer, self.lineage,
                                         self.step)
        self.lineage.rounds += 1
        self.lineage.next_due = self.step + ev.every
        return out
