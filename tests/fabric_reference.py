"""Plain-numpy reference of one fabric step (float64), for equivalence tests.

Written from docs/model.md independently of the numba kernel's loop
structure: vectorised over neurons and synapses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lillith.fabric.params import FabricParams


def softsig(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + x / (1.0 + np.abs(x)))


def splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gauss_noise(seed: int, step: int, n: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.uint64)
    h1 = splitmix(np.uint64(seed) ^ splitmix(np.uint64(step) ^ splitmix(idx)))
    h2 = splitmix(h1)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 9007199254740992.0
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / 9007199254740992.0
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def branch_and_segment(indptr: np.ndarray, K: int, S: int,
                       bptr: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Branch k takes the k-th contiguous block of each row (first ln % K blocks one
    longer, or the blocks ``[bptr[i*K+k], bptr[i*K+k+1])`` when a branch pointer is
    given); the m-th synapse of a branch block lands on segment m mod S."""
    br = np.empty(indptr[-1], dtype=np.int64)
    seg = np.empty(indptr[-1], dtype=np.int64)
    for i in range(indptr.shape[0] - 1):
        lo, hi = indptr[i], indptr[i + 1]
        ln = hi - lo
        if bptr is None:
            sizes = np.full(K, ln // K) + (np.arange(K) < ln % K)
        else:
            sizes = np.diff(bptr[i * K:(i + 1) * K + 1])
            assert bptr[i * K] == lo and sizes.sum() == ln
        br[lo:hi] = np.repeat(np.arange(K), sizes)
        seg[lo:hi] = np.concatenate([np.arange(m) % S for m in sizes]) if ln else []
    return br, seg


def reference_step(
    st: dict[str, Any],
    x: np.ndarray,
    prm: FabricParams,
    *,
    mode: str = "normal",
    goal: np.ndarray | None = None,
    plasticity: float = 1.0,
    noise_scale: float = 2.0,
    intent_gain: float = 0.5,
    bidirectional_weight: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """One step on a ``get_state()`` dict; returns the new state (float64).

    With skip gates (``gate`` >= 0) a synapse's gain is multiplied by its gate
    value, and after the step the gate logits follow the local rule of
    docs/model.md (``eta_gate``, ``gate_decay``, ``gate_logit0`` of ``prm``).
    """
    s = {k: np.array(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else np.array(v)
         for k, v in st.items()}
    n, K = s["vb"].shape
    dt = prm.dt
    indptr, indices = s["indptr"], s["indices"]
    rows = np.repeat(np.arange(n), np.diff(indptr))
    br, seg = branch_and_segment(indptr, K, s["hot"].shape[2], s.get("bptr"))
    a_prev = s["act"]
    if mode == "bidirectional":
        g_ff, g_fb = 1.0 - bidirectional_weight, bidirectional_weight
    else:
        g_ff, g_fb = 1.0, 0.0
    gain = np.where(s["feedback"] == 1, g_fb, g_ff)
    gate = s.get("gate")
    if gate is not None and s["gate_val"].size:
        gain = gain * np.where(gate >= 0, s["gate_val"][np.maximum(gate, 0)], 1.0)
    cur = gain * s["polarity"] * s["w"] * a_prev[indices]
    ab = dt / prm.tau_branch
    eh = np.exp(-dt / prm.tau_hotspot)
    hot = s["hot"] * float(s["hot_gain"]) * eh  # true traces
    np.add.at(hot, (rows, br, seg), (1 - eh) * np.abs(cur))
    acc = np.zeros((n, K))
    np.add.at(acc, (rows, br), cur)
    pend = s["pending"]
    acc += pend.sum(axis=2)
    hot += (1 - eh) * np.abs(pend)
    vb = np.clip(s["vb"] * (1 - ab) + ab * prm.r_syn * acc, -prm.vb_max, prm.vb_max)
    spk = softsig((vb - prm.theta_dend) / prm.kappa_dend)
    idend = (vb + prm.a_dend * spk).sum(axis=1)
    # plasticity: previous-step activities and calcium
    eta = prm.eta * plasticity
    w = s["w"].copy()
    post = a_prev[rows]
    learn = (post > 0) & (eta > 0) & (gain > 0)  # gated-off synapses do not learn
    dw = (eta * s["cab"][rows, br] * a_prev[indices] * post * (post - s["theta"][rows])
          - eta * prm.oja_lambda * post * post * w)
    w = np.where(learn, np.clip(w + dw, 0.0, prm.w_max), w)
    cab = s["cab"] + dt / prm.tau_calcium * (spk - s["cab"])
    sens_rows = np.repeat(np.arange(n), np.diff(s["s_indptr"]))
    drive = np.zeros(n)
    np.add.at(drive, sens_rows, s["s_wsigned"] * x[s["s_indices"]])
    drive *= prm.r_in
    if mode == "random":
        drive += noise_scale * gauss_noise(seed, int(s["step"]), n)
    elif mode == "intentional":
        assert goal is not None
        drive += intent_gain * (goal - a_prev) * prm.v_scale
    drive = np.clip(np.nan_to_num(drive, nan=0.0, posinf=prm.i_max, neginf=-prm.i_max),
                    -prm.i_max, prm.i_max)
    v = s["v"]
    m = s["m_na"] + min(1, dt / prm.tau_na) * (softsig((v - prm.v_na) / prm.k_na) - s["m_na"])
    nk = s["n_k"] + min(1, dt / prm.tau_k) * (softsig((v - prm.v_k) / prm.k_k) - s["n_k"])
    c = s["c_ca"] + min(1, dt / prm.tau_ca_gate) * (softsig((v - prm.v_ca) / prm.k_ca) - s["c_ca"])
    dv = ((prm.e_leak - v) + prm.g_dend / K * idend + drive + prm.g_na * m * (prm.e_na - v)
          + prm.g_k * nk * (prm.e_k - v) - prm.g_adapt_v * s["adapt"])
    v = np.clip(v + dt / s["tau"] * dv, prm.v_min, prm.v_max)
    u = (v - prm.v_half) / prm.v_scale
    a = np.where(u > 0, np.tanh(np.maximum(u, 0)), 0.0) * (1 - prm.rho_ref * s["ref"]) / (
        1 + prm.g_adapt * s["adapt"])
    raw = np.minimum(a * (1 + prm.g_adapt * s["adapt"]), 1.0)
    er = np.exp(-dt / prm.tau_ref)
    ref = s["ref"] * er + (1 - er) * raw
    adapt = s["adapt"] + dt / prm.tau_adapt * (a + c - s["adapt"])
    theta = s["theta"] + dt / prm.tau_theta * (a * a - s["theta"])
    out = dict(s)
    out.update(v=v, m_na=m, n_k=nk, c_ca=c, vb=vb, cab=cab, hot=hot, ref=ref, adapt=adapt,
               theta=theta, act=a, w=w, pending=np.zeros_like(pend), step=s["step"] + 1,
               hot_gain=np.array(1.0))
    if gate is not None and s["gate_val"].size:
        rate = prm.eta_gate * plasticity
        if prm.gate_decay > 0:
            rate = min(rate, 1.0 / prm.gate_decay)
        if rate > 0:
            logit = s["gate_logit"].copy()
            for q in range(logit.shape[0]):
                sel = gate == q
                hebb = a[rows[sel]].mean() * a[indices[sel]].mean() if sel.any() else 0.0
                logit[q] += rate * (hebb - prm.gate_decay * (logit[q] - prm.gate_logit0))
            logit = np.clip(logit, -15.0, 15.0)
            out.update(gate_logit=logit, gate_val=1.0 / (1.0 + np.exp(-logit)))
    return out
