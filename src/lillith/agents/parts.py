"""An agent's parts and what it reports of them: the fabric, the SOM, the tile
predictor and its optimiser, the normaliser, the detector, the BioSystem and
mode cycler, the evolution records. The bottom of :class:`~lillith.agents.agent.Agent`:
:mod:`lillith.agents.agent_state` adds the state round-trip on top of it,
:mod:`lillith.agents.agent` the pipeline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.bio import BioSystem, ModeCycler
from lillith.agents.config import AgentConfig
from lillith.agents.lineage import Lineage
from lillith.agents.metrics import FrameLog
from lillith.agents.predictor import InferencePlan, TilePredictor
from lillith.agents.scores.detector import Detector, FrameTerms
from lillith.agents.scores.normalizer import RobustNormalizer
from lillith.agents.tiles import TileSurgeryPolicy
from lillith.errors import AgentError
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.params import FabricParams
from lillith.fabric.som import SelfOrganizingMap
from lillith.fabric.wiring import Wiring

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
SEGMENT_MAX = 64
"""Frames per internal segment (a micro-batch may be cut further; results do not change)."""


@dataclass
class _Pending:
    """Frames of the current micro-batch awaiting the training step."""

    feats: list[F32] = field(default_factory=list)
    lasts: list[F32] = field(default_factory=list)
    targets: list[F32] = field(default_factory=list)


class AgentParts:
    """The parts of an agent bound to ``n_channels`` channels (parameters as
    :class:`~lillith.agents.agent.Agent`'s)."""

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
        self.bio = BioSystem(cfg.bio)
        self.modes = ModeCycler(cfg.modes)
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

    def _make_detector(self) -> Detector:
        return Detector(self.n_channels, self.config.score, som=self.fabric is not None)

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

    def steps_to_evolution(self) -> int | None:
        """Frames until the next evolution round is due (0: due now); None when off.

        The round runs before the frame of that step, in :meth:`process_iter`."""
        return max(self.lineage.next_due - self.step, 0) if self.evolving else None

    def evolution_due(self) -> bool:
        """An evolution round is due before the next frame: evolution on, warm-up
        over and ``every`` steps since the last round."""
        return self.evolving and self.step >= self.lineage.next_due

    def rebase_pooled(self) -> None:
        """Take the fabric's current pooled features as the SOM's "previous" ones.

        The SOM sees the change of the pooled features since the last frame;
        after an edit of the fabric (an apoptosis round, or any surgery on its
        arrays) that change would include the edit itself and show up as a
        jump in the quantisation error at the next frame: a false alarm made
        by the agent, not by the sensors."""
        if self.fabric is not None:
            self._som_in[:self.fabric.n_features] = self.fabric.pooled()

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

    def get_training_statistics(self) -> dict[str, Any]:
        """Training statistics: ``steps``, ``total_updates``, ``skipped_steps``,
        ``recent_losses``, ``mean_recent_loss``, ``modulators``,
        ``learning_enabled``; ``som`` and ``evolution`` when the agent has them."""
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
