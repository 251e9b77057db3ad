"""Constants of the fabric's neuron model (see ``docs/model.md``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError
from lillith.fabric import _fabric_kernels as K


@dataclass(frozen=True)
class FabricParams:
    """Neuron, dendrite and plasticity constants.

    Voltages in mV, times in ms, everything else dimensionless. The kernels
    use explicit Euler steps, so every ``dt / tau`` must be <= 1.

    Attributes
    ----------
    dt : float
        Integration step, ms.
    tau_branch, tau_hotspot, tau_calcium : float
        Branch voltage, segment hotspot trace and branch calcium time
        constants, ms.
    r_syn : float
        Synaptic current to branch voltage gain, mV per unit current.
    theta_dend, kappa_dend, a_dend : float
        Dendritic spike threshold, width and amplitude, mV.
    g_dend : float
        Dendrite-to-soma coupling (mean over branches).
    r_in : float
        Sensory current to somatic drive, mV per unit input.
    e_leak, e_na, e_k : float
        Reversal potentials, mV.
    g_na, g_k : float
        Maximal Na+ / K+ conductances relative to the leak.
    v_na, k_na, tau_na, v_k, k_k, tau_k, v_ca, k_ca, tau_ca_gate : float
        Half-activation (mV), slope (mV) and time constant (ms) of the
        Na+, K+ and Ca2+ gates.
    v_half, v_scale : float
        Output nonlinearity threshold and scale, mV.
    tau_ref, rho_ref : float
        Refractory recovery time constant (ms) and depth in [0, 1].
    tau_adapt, g_adapt, g_adapt_v : float
        Adaptation time constant (ms), output divisor gain and
        hyperpolarising current (mV per unit adaptation).
    v_min, v_max, vb_max, i_max : float
        Clips of somatic voltage, branch voltage and external drive, mV.
    eta, oja_lambda, w_max, tau_theta : float
        Plasticity rate per step, normalisation strength, weight bound and
        BCM threshold time constant (ms).
    g_inh : float
        Initial E/I balance: each neuron's inhibitory weights sum to
        ``g_inh`` times its excitatory weights (which sum to 1).
    eta_gate, gate_decay, gate_logit0 : float
        Learning rate per step (times the plasticity multiplier), decay
        toward the resting logit, and resting (initial) logit of the gated
        skip connections (wirings with ``skip_gates``); see ``docs/model.md``.
        Not part of :meth:`pack`.
    """

    dt: float = 1.0
    tau_branch: float = 5.0
    tau_hotspot: float = 50.0
    tau_calcium: float = 30.0
    r_syn: float = 150.0
    theta_dend: float = 6.0
    kappa_dend: float = 1.0
    a_dend: float = 8.0
    g_dend: float = 2.0
    r_in: float = 15.0
    e_leak: float = -70.0
    e_na: float = 50.0
    e_k: float = -90.0
    g_na: float = 0.3
    g_k: float = 0.5
    v_na: float = -45.0
    k_na: float = 4.0
    tau_na: float = 1.0
    v_k: float = -45.0
    k_k: float = 8.0
    tau_k: float = 8.0
    v_ca: float = -35.0
    k_ca: float = 6.0
    tau_ca_gate: float = 40.0
    v_half: float = -68.0
    v_scale: float = 10.0
    tau_ref: float = 4.0
    rho_ref: float = 0.3
    tau_adapt: float = 100.0
    g_adapt: float = 0.5
    g_adapt_v: float = 10.0
    v_min: float = -100.0
    v_max: float = 60.0
    vb_max: float = 80.0
    i_max: float = 200.0
    eta: float = 1e-3
    oja_lambda: float = 1.0
    w_max: float = 2.0
    tau_theta: float = 1000.0
    g_inh: float = 1.0
    eta_gate: float = 0.05
    gate_decay: float = 0.02
    gate_logit0: float = 0.0

    def validate(self, tau_m: npt.NDArray[np.float32] | None = None) -> None:
        """Raise :class:`FabricError` if a constant is unusable.

        Parameters
        ----------
        tau_m : ndarray, shape (n,), float32, optional
            Per-neuron membrane time constants (ms) to check against ``dt``.
        """
        for f in fields(self):
            val = getattr(self, f.name)
            if not np.isfinite(val):
                raise FabricError("fabric parameter is not finite", name=f.name, value=val)
        if self.dt <= 0:
            raise FabricError("dt must be > 0", dt=self.dt)
        for name in ("tau_branch", "tau_hotspot", "tau_calcium", "tau_ref", "tau_adapt",
                     "tau_theta"):
            tau = getattr(self, name)
            if tau < self.dt:
                raise FabricError("time constant below dt (Euler step unstable)",
                                  name=name, tau=tau, dt=self.dt)
        for name in ("tau_na", "tau_k", "tau_ca_gate", "kappa_dend", "k_na", "k_k", "k_ca",
                     "v_scale"):
            if getattr(self, name) <= 0:
                raise FabricError("parameter must be > 0", name=name)
        if not 0.0 <= self.rho_ref <= 1.0:
            raise FabricError("rho_ref must lie in [0, 1]", rho_ref=self.rho_ref)
        if self.v_min >= self.v_max or self.w_max <= 0 or self.vb_max <= 0 or self.i_max <= 0:
            raise FabricError("inconsistent clip bounds", v_min=self.v_min, v_max=self.v_max)
        if self.eta < 0 or self.oja_lambda < 0 or self.g_adapt < 0 or self.g_inh < 0:
            raise FabricError("rates must be >= 0", eta=self.eta)
        if self.eta_gate < 0 or self.gate_decay < 0 or abs(self.gate_logit0) > K.GATE_LOGIT_MAX:
            raise FabricError("gate rates must be >= 0 and the initial logit within bounds",
                              eta_gate=self.eta_gate, gate_decay=self.gate_decay,
                              gate_logit0=self.gate_logit0, bound=K.GATE_LOGIT_MAX)
        if tau_m is not None and tau_m.size and not np.isfinite(tau_m).all():
            raise FabricError("membrane time constant is not finite")
        if tau_m is not None and tau_m.size and float(tau_m.min()) < self.dt:
            raise FabricError("membrane time constant below dt", tau_min=float(tau_m.min()),
                              dt=self.dt)

    def pack(self) -> npt.NDArray[np.float32]:
        """Parameter vector in kernel order, shape (N_PARAMS,), float32.

        The gate constants (``eta_gate``, ``gate_decay``, ``gate_logit0``) are
        not in it: the gate rule runs outside the step kernel.
        """
        return np.asarray([getattr(self, name) for name in _PACKED], dtype=np.float32)

    def with_packed(self, vector: npt.ArrayLike) -> FabricParams:
        """These constants with those of a :meth:`pack` vector (shape (N_PARAMS,))
        in their place; the gate constants stay. Not validated."""
        vals = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vals.shape != (K.N_PARAMS,):
            raise FabricError("fabric parameter vector has wrong length", length=vals.size)
        return replace(self, **{name: float(v) for name, v in zip(_PACKED, vals, strict=True)})


# the constants of the step kernel's parameter vector, in kernel order (K.P_*)
_PACKED = (
    "dt", "tau_branch", "tau_hotspot", "tau_calcium", "r_syn",
    "theta_dend", "kappa_dend", "a_dend", "g_dend", "r_in",
    "e_leak", "e_na", "e_k", "g_na", "g_k",
    "v_na", "k_na", "tau_na", "v_k", "k_k", "tau_k",
    "v_ca", "k_ca", "tau_ca_gate", "v_half", "v_scale",
    "tau_ref", "rho_ref", "tau_adapt", "g_adapt", "g_adapt_v",
    "v_min", "v_max", "vb_max", "i_max",
    "eta", "oja_lambda", "w_max", "tau_theta",
)
assert len(_PACKED) == K.N_PARAMS
