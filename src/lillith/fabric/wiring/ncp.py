"""Neural circuit policy wiring: sensory -> inter -> command (recurrent) -> motor."""

from __future__ import annotations

import itertools
from typing import ClassVar, Unpack

import numpy as np
import numpy.typing as npt

from lillith.fabric.wiring.base import ShapeLike, Wiring, WiringOptions
from lillith.fabric.wiring.checks import check_int, check_real, check_triple
from lillith.fabric.wiring.sampling import sample_rows, split_counts

IntArray = npt.NDArray[np.int64]


class NCP(Wiring, builtin=True):
    """Neural circuit policy: sensory -> inter -> command (recurrent) -> motor.

    After the wirings of Lechner & Hasani (``ncps``). The neurons are split,
    in index order (i.e. along z), into four groups with population labels
    0 sensory, 1 inter, 2 command and 3 motor: the sensory group is the z = 0
    face by default, the motor group the last neurons. Input channels project
    onto the sensory group.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    sensory_fraction : float, optional
        Share of all neurons in the sensory group; default: the z = 0 face
        (or a quarter of the neurons when the face leaves too few).
    inter_fraction, command_fraction, motor_fraction : float
        Relative shares of the remaining neurons (defaults 0.4, 0.4, 0.2).
        With at least 4 neurons every group has at least one.
    sensory_fanout : int, default 8
        Inter neurons each sensory neuron projects to.
    inter_fanout : int, default 8
        Command neurons each inter neuron projects to.
    recurrent_command_synapses : int, optional
        Number of random command -> command synapses (distinct, no
        self-loops); default twice the number of command neurons.
    motor_fanin : int, default 8
        Command neurons each motor neuron receives from.
    input_fanout : int, optional
        Sensory neurons each input channel projects to; default all of them.
    **options
        ``n_inputs``, ``seed``, ``tau_m``, ``inhibitory_fraction``: see :class:`Wiring`.

    Notes
    -----
    As in ``ncps``, target neurons no source chose (unreachable inter,
    command or sensory neurons, command neurons without a motor target)
    are connected to the mean fan of their stage, so the circuit has no
    dead ends. Fan-outs are clipped to the target group size.
    """

    GROUPS: ClassVar[tuple[str, ...]] = ("sensory", "inter", "command", "motor")

    def __init__(
        self,
        shape: ShapeLike,
        *,
        sensory_fraction: float | None = None,
        inter_fraction: float = 0.4,
        command_fraction: float = 0.4,
        motor_fraction: float = 0.2,
        sensory_fanout: int = 8,
        inter_fanout: int = 8,
        recurrent_command_synapses: int | None = None,
        motor_fanin: int = 8,
        input_fanout: int | None = None,
        **options: Unpack[WiringOptions],
    ) -> None:
        super().__init__(shape, **options)
        self.sensory_fraction = (
            None if sensory_fraction is None
            else check_real("sensory_fraction", sensory_fraction, low=0.0, high=1.0,
                             low_open=True)
        )
        self.inter_fraction, self.command_fraction, self.motor_fraction = check_triple(
            "inter/command/motor fractions",
            (inter_fraction, command_fraction, motor_fraction), positive=True,
        )
        self.sensory_fanout = check_int("sensory_fanout", sensory_fanout, 1)
        self.inter_fanout = check_int("inter_fanout", inter_fanout, 1)
        self.recurrent_command_synapses = (
            None if recurrent_command_synapses is None
            else check_int("recurrent_command_synapses", recurrent_command_synapses, 0)
        )
        self.motor_fanin = check_int("motor_fanin", motor_fanin, 1)
        self.input_fanout = (
            None if input_fanout is None else check_int("input_fanout", input_fanout, 1)
        )
        self._groups = self._group_ranges()

    def _group_ranges(self) -> dict[str, range]:
        n = self.n_neurons
        face = self.shape[0] * self.shape[1]
        if n < 4:
            sizes = {1: [1, 0, 0, 0], 2: [1, 0, 0, 1], 3: [1, 0, 1, 1]}[n]
        else:
            if self.sensory_fraction is None and n - face >= 3:
                n_s = face
            else:
                frac = 0.25 if self.sensory_fraction is None else self.sensory_fraction
                n_s = min(max(1, round(frac * n)), n - 3)
            sizes = [n_s, *split_counts(
                n - n_s, (self.inter_fraction, self.command_fraction, self.motor_fraction), 1
            )]
        out: dict[str, range] = {}
        start = 0
        for name, size in zip(self.GROUPS, sizes, strict=True):
            out[name] = range(start, start + size)
            start += size
        return out

    @property
    def groups(self) -> dict[str, range]:
        """Neuron index range of each group: sensory, inter, command, motor."""
        return dict(self._groups)

    @property
    def sensory_neurons(self) -> range:
        """Indices of the sensory group (population 0)."""
        return self._groups["sensory"]

    @property
    def motor_neurons(self) -> range:
        """Indices of the motor group (population 3), the circuit's outputs."""
        return self._groups["motor"]

    def _fanout(self, src: range, dst: range, k: int) -> tuple[IntArray, IntArray]:
        """Each ``src`` neuron projects to ``k`` random ``dst``; unreachable ``dst`` get fed."""
        k = min(k, len(dst))
        offs = sample_rows(self.rng, len(src), len(dst), k)
        s = np.repeat(np.arange(src.start, src.stop, dtype=np.int64), k)
        d = dst.start + offs.ravel()
        reached = np.bincount(offs.ravel(), minlength=len(dst)) > 0
        lost = np.nonzero(~reached)[0]
        if lost.size:
            mean_fanin = min(max(len(src) * k // len(dst), 1), len(src))
            extra = sample_rows(self.rng, lost.size, len(src), mean_fanin)
            s = np.concatenate([s, src.start + extra.ravel()])
            d = np.concatenate([d, np.repeat(dst.start + lost, mean_fanin)])
        return s, d

    def _fanin(self, src: range, dst: range, k: int) -> tuple[IntArray, IntArray]:
        """Each ``dst`` neuron hears ``k`` random ``src``; ``src`` without target get one."""
        k = min(k, len(src))
        offs = sample_rows(self.rng, len(dst), len(src), k)
        s = src.start + offs.ravel()
        d = np.repeat(np.arange(dst.start, dst.stop, dtype=np.int64), k)
        used = np.bincount(offs.ravel(), minlength=len(src)) > 0
        lost = np.nonzero(~used)[0]
        if lost.size:
            mean_fanout = min(max(len(dst) * k // len(src), 1), len(dst))
            extra = sample_rows(self.rng, lost.size, len(dst), mean_fanout)
            s = np.concatenate([s, np.repeat(src.start + lost, mean_fanout)])
            d = np.concatenate([d, dst.start + extra.ravel()])
        return s, d

    def _connect(self) -> None:
        g = self._groups
        for p, name in enumerate(self.GROUPS):
            if len(g[name]):
                self.set_population(np.arange(g[name].start, g[name].stop), p)
        chain = [name for name in self.GROUPS if len(g[name])]
        fanout = {"sensory": self.sensory_fanout, "inter": self.inter_fanout,
                  "command": self.inter_fanout}
        for a, b in itertools.pairwise(chain):
            if b == "motor":
                src, dst = self._fanin(g[a], g[b], self.motor_fanin)
            else:
                src, dst = self._fanout(g[a], g[b], fanout[a])
            self._add_synapses(src, dst)
        cmd = g["command"]
        c = len(cmd)
        if c >= 2:
            want = 2 * c if self.recurrent_command_synapses is None else (
                self.recurrent_command_synapses)
            m = min(want, c * (c - 1))
            if m:
                pairs = self.rng.choice(c * (c - 1), size=m, replace=False, shuffle=False)
                s, j = np.divmod(pairs.astype(np.int64), c - 1)
                d = j + (j >= s)
                self._add_synapses(cmd.start + s, cmd.start + d)
        if self.n_inputs > 0:
            sens = g["sensory"]
            if self.input_fanout is None:
                ch = np.tile(np.arange(self.n_inputs, dtype=np.int64), len(sens))
                dst = np.repeat(np.arange(sens.start, sens.stop, dtype=np.int64), self.n_inputs)
            else:
                ch_range = range(self.n_inputs)
                s_off, d_abs = self._fanout(ch_range, sens, self.input_fanout)
                ch, dst = s_off, d_abs
            self._add_sensory_synapses(ch, dst)
