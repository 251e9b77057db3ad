"""The fabric step written as a vectorised torch-CPU program (benchmark baseline).

Same equations and constants as ``lillith.fabric._fabric_kernels._step_impl``
(normal mode, plasticity on), expressed the way one would in torch: gathers
over the synapse list, ``index_add_`` scatters into branches and segments,
element-wise updates over neurons. Used by ``lillith bench fabric`` and by a
test that checks it computes the same step as the numba kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lillith.fabric.neural_fabric import NeuralFabric3D


def _softsig(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + x / (1.0 + x.abs()))


class TorchFabric:
    """Torch copy of a :class:`NeuralFabric3D`'s state and step (normal mode)."""

    def __init__(self, fabric: NeuralFabric3D) -> None:
        st = fabric.get_state()
        self.p = fabric.params
        self.K, self.S = fabric.n_branches, fabric.n_segments
        n = fabric.n
        indptr = st["indptr"]
        lens = np.diff(indptr)
        rows = np.repeat(np.arange(n), lens)
        pos = np.arange(indptr[-1]) - indptr[rows]
        base, extra = lens // self.K, lens % self.K
        # branch of each synapse: contiguous blocks, the first `extra` one longer
        r_base, r_extra = base[rows], extra[rows]
        cut = r_extra * (r_base + 1)
        br = np.where(pos < cut, pos // np.maximum(r_base + 1, 1),
                      r_extra + (pos - cut) // np.maximum(r_base, 1))
        # position within the branch block, mod S, is the segment
        blk_start = np.where(br < r_extra, br * (r_base + 1),
                             cut + (br - r_extra) * r_base)
        seg = (pos - blk_start) % self.S
        t = torch.as_tensor
        self.rows = t(rows, dtype=torch.long)
        self.pre = t(st["indices"].astype(np.int64))
        self.rowbr = t(rows * self.K + br, dtype=torch.long)
        self.rowbrseg = t((rows * self.K + br) * self.S + seg, dtype=torch.long)
        self.sign = t(st["polarity"].astype(np.float32))
        self.fb_gain = t(np.where(st["feedback"] == 1, 0.0, 1.0).astype(np.float32))
        s_rows = np.repeat(np.arange(n), np.diff(st["s_indptr"]))
        self.s_rows = t(s_rows, dtype=torch.long)
        self.s_idx = t(st["s_indices"].astype(np.int64))
        self.s_w = t(st["s_wsigned"])
        self.tau = t(st["tau"])
        def arr(k: str) -> torch.Tensor:
            return t(st[k].copy())

        self.v, self.m_na, self.n_k, self.c_ca = arr("v"), arr("m_na"), arr("n_k"), arr("c_ca")
        self.vb, self.cab, self.hot, self.ref = arr("vb"), arr("cab"), arr("hot"), arr("ref")
        self.adapt, self.theta, self.act, self.w = (arr("adapt"), arr("theta"), arr("act"),
                                                    arr("w"))
        self.n = n

    @torch.no_grad()
    def step(self, x: torch.Tensor, plasticity: float = 1.0) -> torch.Tensor:
        """One time step, in place; returns the activations, shape (n,)."""
        p = self.p
        dt = p.dt
        n, K = self.n, self.K
        ab = dt / p.tau_branch
        eh = float(np.exp(-dt / p.tau_hotspot))
        a_prev = self.act
        pre = a_prev[self.pre]
        cur = self.fb_gain * self.sign * self.w * pre
        self.hot.mul_(eh)
        self.hot.view(-1).index_add_(0, self.rowbrseg, (1.0 - eh) * cur.abs())
        acc = torch.zeros(n * K).index_add_(0, self.rowbr, cur).view(n, K)
        vb = (self.vb * (1.0 - ab) + ab * p.r_syn * acc).clamp_(-p.vb_max, p.vb_max)
        spk = _softsig((vb - p.theta_dend) / p.kappa_dend)
        idend = (vb + p.a_dend * spk).sum(1)
        eta = p.eta * plasticity
        if eta > 0:
            post = a_prev[self.rows]
            dw = (eta * self.cab.view(-1)[self.rowbr] * pre * post * (post - self.theta[self.rows])
                  - eta * p.oja_lambda * post * post * self.w)
            self.w = torch.where(post > 0, (self.w + dw).clamp_(0.0, p.w_max), self.w)
        self.cab += dt / p.tau_calcium * (spk - self.cab)
        self.vb = vb
        drive = torch.zeros(n).index_add_(0, self.s_rows, self.s_w * x[self.s_idx]) * p.r_in
        drive.clamp_(-p.i_max, p.i_max)
        v = self.v
        self.m_na += min(1.0, dt / p.tau_na) * (_softsig((v - p.v_na) / p.k_na) - self.m_na)
        self.n_k += min(1.0, dt / p.tau_k) * (_softsig((v - p.v_k) / p.k_k) - self.n_k)
        self.c_ca += min(1.0, dt / p.tau_ca_gate) * (
            _softsig((v - p.v_ca) / p.k_ca) - self.c_ca)
        dv = ((p.e_leak - v) + p.g_dend / K * idend + drive
              + p.g_na * self.m_na * (p.e_na - v) + p.g_k * self.n_k * (p.e_k - v)
              - p.g_adapt_v * self.adapt)
        v = (v + dt / self.tau * dv).clamp_(p.v_min, p.v_max)
        self.v = v
        u = ((v - p.v_half) / p.v_scale).clamp_(min=0.0)
        a: torch.Tensor = (torch.tanh(u) * (1.0 - p.rho_ref * self.ref)
                           / (1.0 + p.g_adapt * self.adapt))
        raw = (a * (1.0 + p.g_adapt * self.adapt)).clamp_(max=1.0)
        er = float(np.exp(-dt / p.tau_ref))
        self.ref = self.ref * er + (1.0 - er) * raw
        self.adapt += dt / p.tau_adapt * (a + self.c_ca - self.adapt)
        self.theta += dt / p.tau_theta * (a * a - self.theta)
        self.act = a
        return a

    def state(self) -> dict[str, Any]:
        """Current arrays as numpy (for equivalence checks)."""
        return {k: getattr(self, k).numpy().copy() for k in
                ("v", "vb", "cab", "hot", "act", "w", "adapt", "theta")}
