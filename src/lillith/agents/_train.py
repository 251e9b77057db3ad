"""numba kernels of the tile predictor's training step (forward, backward, Adam).

The agent trains its :class:`~lillith.agents.agent.TilePredictor` once per
micro-batch of a few frames. Written as torch autograd, that step is about a
hundred small operations whose dispatch costs milliseconds and holds the GIL
(the daemon's event loop waits behind it); these kernels compute the same
loss, its exact gradient (the equations of
:meth:`lillith.agents.tiles.SparseLookupFFNv2.forward` with ``router_grad =
"mixture"``, input norm and calibration, and of its auxiliary losses) and
Adam's update, in one call each with the GIL released. The tests check the
gradient against torch autograd and the update against ``torch.optim.Adam``.
Pure functions over float32 arrays; the typed wrapper is
:meth:`lillith.agents.agent.TilePredictor.fit_batch`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@njit(cache=True, nogil=True)
def _fit_rows(feats: np.ndarray, last: np.ndarray, target: np.ndarray,
              pw: np.ndarray, pb: np.ndarray, nw: np.ndarray, nb: np.ndarray,
              cw1: np.ndarray, cb1: np.ndarray, cw2: np.ndarray, cb2: np.ndarray,
              sig: np.ndarray, frozen: np.ndarray, w1: np.ndarray, b1: np.ndarray,
              w2: np.ndarray, b2: np.ndarray, logits: np.ndarray, hw: np.ndarray,
              hb: np.ndarray, ss: float, K: int, use_cal: bool, x_min: float, inv_h: float,
              aux_w: float, bal_w: float, ter_w: float, spa_w: float, div_w: float,
              gpw: np.ndarray, gpb: np.ndarray, gnw: np.ndarray, gnb: np.ndarray,
              gcw1: np.ndarray, gcb1: np.ndarray, gcw2: np.ndarray, gcb2: np.ndarray,
              gsig: np.ndarray, gw1: np.ndarray, gb1: np.ndarray, gw2: np.ndarray,
              gb2: np.ndarray, glog: np.ndarray, ghw: np.ndarray, ghb: np.ndarray,
              idx: np.ndarray) -> float:
    """Loss of one micro-batch and its gradient with respect to every parameter.

    Shapes (float32 unless said): ``feats`` (N, F), ``last`` and ``target``
    (N, C); projection ``pw`` (d, F), ``pb`` (d,); layer norm ``nw``, ``nb``
    (d,); routing net ``cw1`` (Hc, d), ``cb1`` (Hc,), ``cw2`` (d, Hc), ``cb2``
    (d,); effective signatures ``sig`` (T, d) and ``frozen`` (T,) bool
    (a frozen row takes no gradient); experts ``w1`` (T, d, H), ``b1`` (T, H),
    ``w2`` (T, H, d), ``b2`` (T, d); calibration ``logits`` (G + 1,) (used
    when ``use_cal``, segments from ``x_min``, ``inv_h`` per unit); head
    ``hw`` (C, d), ``hb`` (C,). ``ss`` routing score scale, ``K`` tiles per
    cluster; the loss is the Huber loss (delta 1, mean) plus ``aux_w`` times
    the weighted balance, ternary, sparsity and diversity losses. Gradients
    are added to the ``g*`` arrays (zeros on entry) of the parameters' shapes
    (``gsig`` is the raw signatures' gradient); ``idx`` (N,) int64 receives
    each row's tile. Returns the loss (float64).
    """
    N, F = feats.shape
    C = last.shape[1]
    d = pw.shape[0]
    Hc = cw1.shape[0]
    T = sig.shape[0]
    H = w1.shape[2]
    NC = T // K
    G = logits.shape[0] - 1  # knots
    # ---- shared by all rows: signature norms, calibration knots
    sn = np.empty(T)
    for t in range(T):
        s = 0.0
        for j in range(d):
            s += float(sig[t, j]) * float(sig[t, j])
        sn[t] = math.sqrt(s)
    pi = np.empty(G + 1)
    ycum = np.empty(G + 1)
    mx = -np.inf
    for i in range(G + 1):
        mx = max(mx, float(logits[i]))
    tot = 0.0
    for i in range(G + 1):
        pi[i] = math.exp(float(logits[i]) - mx)
        tot += pi[i]
    acc = 0.0
    for i in range(G + 1):
        pi[i] /= tot
        acc += pi[i]
        ycum[i] = acc
    # ---- forward, row by row, keeping what the backward pass reads
    h = np.empty((N, d))
    xhat = np.empty((N, d))
    inv = np.empty(N)
    xn = np.empty((N, d))
    c1 = np.empty((N, Hc))
    code = np.empty((N, d))
    cn = np.empty(N)
    dots = np.empty((N, T))
    P = np.empty((N, NC))
    Q = np.empty((N, T))
    a1 = np.empty((N, H))
    hid = np.empty((N, H))
    y = np.empty((N, d))
    yall = np.empty((N, T, d))
    gate = np.empty(N)
    uc = np.zeros(N)  # the spline's argument, clamped to its domain
    inside = np.zeros(N, dtype=np.bool_)  # not clamped: the gate has a gradient to it
    seg = np.zeros(N, dtype=np.int64)
    out = np.empty((N, d))
    dpred = np.empty((N, C))
    counts = np.zeros(T)
    s1 = np.empty(Hc)
    zc = np.empty(NC)
    hh = np.empty(H)
    loss = 0.0
    for n in range(N):
        for k in range(d):
            a = float(pb[k])
            for i in range(F):
                a += float(pw[k, i]) * float(feats[n, i])
            h[n, k] = math.tanh(a)
        mu = 0.0
        for j in range(d):
            mu += h[n, j]
        mu /= d
        var = 0.0
        for j in range(d):
            var += (h[n, j] - mu) ** 2
        var /= d
        inv[n] = 1.0 / math.sqrt(var + 1e-5)
        for j in range(d):
            xhat[n, j] = (h[n, j] - mu) * inv[n]
            xn[n, j] = xhat[n, j] * nw[j] + nb[j]
        for k in range(Hc):
            a = float(cb1[k])
            for j in range(d):
                a += float(cw1[k, j]) * xn[n, j]
            c1[n, k] = a
            s1[k] = a * _sigmoid(a)
        s = 0.0
        for j in range(d):
            a = float(cb2[j])
            for k in range(Hc):
                a += float(cw2[j, k]) * s1[k]
            code[n, j] = a
            s += a * a
        cn[n] = math.sqrt(s)
        for t in range(T):
            a = 0.0
            for j in range(d):
                a += code[n, j] * float(sig[t, j])
            dots[n, t] = a
        # joint route probabilities: softmax over clusters (mean score) x within
        best_c, best_m = 0, -np.inf
        m = -np.inf
        for c in range(NC):
            z = 0.0
            for k in range(K):
                z += dots[n, c * K + k] * ss
            zc[c] = z / K
            m = max(m, zc[c])
            if zc[c] > best_m:
                best_m, best_c = zc[c], c
        tot = 0.0
        for c in range(NC):
            P[n, c] = math.exp(zc[c] - m)
            tot += P[n, c]
        for c in range(NC):
            P[n, c] /= tot
            mk = -np.inf
            for k in range(K):
                mk = max(mk, dots[n, c * K + k] * ss)
            tk = 0.0
            for k in range(K):
                Q[n, c * K + k] = math.exp(dots[n, c * K + k] * ss - mk)
                tk += Q[n, c * K + k]
            for k in range(K):
                Q[n, c * K + k] /= tk
        tb = best_c * K
        for k in range(1, K):
            if dots[n, best_c * K + k] > dots[n, tb]:
                tb = best_c * K + k
        idx[n] = tb
        counts[tb] += 1.0
        # every expert's output (the mixture's gradient to the route); the chosen one's
        for t in range(T):
            for q in range(H):
                a = float(b1[t, q])
                for j in range(d):
                    a += xn[n, j] * float(w1[t, j, q])
                if t == tb:
                    a1[n, q] = a
                hh[q] = a * _sigmoid(a)
                if t == tb:
                    hid[n, q] = hh[q]
            for j in range(d):
                a = float(b2[t, j])
                for q in range(H):
                    a += hh[q] * float(w2[t, q, j])
                yall[n, t, j] = a
        for j in range(d):
            y[n, j] = yall[n, tb, j]
        den = cn[n] * sn[tb]
        cos = dots[n, tb] / max(den, 1e-8)
        g = 1.0
        if use_cal:
            ur = (cos - x_min) * inv_h
            inside[n] = 0.0 <= ur <= G - 1
            ur = min(max(ur, 0.0), float(G - 1))
            sgi = min(int(ur), G - 2)  # ur >= 0: truncation is the floor
            seg[n] = sgi
            uc[n] = ur
            g = min(ycum[sgi] + (ur - sgi) * (ycum[sgi + 1] - ycum[sgi]), ycum[sgi + 1])
        gate[n] = g
        for j in range(d):
            out[n, j] = h[n, j] + g * y[n, j]
        for c in range(C):
            a = float(hb[c])
            for j in range(d):
                a += float(hw[c, j]) * out[n, j]
            r = float(last[n, c]) + a - float(target[n, c])
            if abs(r) <= 1.0:
                loss += 0.5 * r * r
                dpred[n, c] = r
            else:
                loss += abs(r) - 0.5
                dpred[n, c] = 1.0 if r > 0 else -1.0
    loss /= N * C
    for n in range(N):
        for c in range(C):
            dpred[n, c] /= N * C
    # ---- auxiliary losses on the effective signatures (and their gradients)
    dsig = np.zeros((T, d))
    dnorm = np.zeros(T)  # gradient to the signature norms (cosine, diversity)
    aux = 0.0
    if bal_w > 0.0:
        for t in range(T):
            jm = 0.0
            for n in range(N):
                jm += P[n, t // K] * Q[n, t]
            aux += bal_w * T * (counts[t] / N) * (jm / N)
    if ter_w > 0.0 or spa_w > 0.0:
        for t in range(T):
            for j in range(d):
                v = float(sig[t, j])
                r = np.rint(min(max(v, -1.0), 1.0))
                aux += (ter_w * (v - r) ** 2 + spa_w * abs(v)) / (T * d)
                sg = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
                dsig[t, j] += aux_w * (ter_w * 2.0 * (v - r) + spa_w * sg) / (T * d)
    if div_w > 0.0 and T >= 2:
        snrm = np.empty((T, d))
        for t in range(T):
            q = max(sn[t], 1e-8)
            for j in range(d):
                snrm[t, j] = sig[t, j] / q
        scale = aux_w * div_w * 4.0 / (T * (T - 1))
        dsn = np.zeros((T, d))
        for t in range(T):
            for o in range(T):
                if o == t:
                    continue
                gm = 0.0
                for j in range(d):
                    gm += snrm[t, j] * snrm[o, j]
                aux += div_w * gm * gm / (T * (T - 1))
                for j in range(d):
                    dsn[t, j] += scale * gm * snrm[o, j]
        for t in range(T):
            if sn[t] > 1e-8:
                pr = 0.0
                for j in range(d):
                    pr += snrm[t, j] * dsn[t, j]
                for j in range(d):
                    dsig[t, j] += (dsn[t, j] - snrm[t, j] * pr) / sn[t]
            else:
                for j in range(d):
                    dsig[t, j] += dsn[t, j] / 1e-8
    loss += aux_w * aux
    # ---- backward, row by row
    dpi = np.zeros(G + 1)
    dxn = np.empty(d)
    dcode = np.empty(d)
    dout = np.empty(d)
    gy = np.empty(d)
    dJ = np.empty(T)
    dz = np.empty(T)
    dP = np.empty(NC)
    for n in range(N):
        for j in range(d):
            a = 0.0
            for c in range(C):
                a += float(hw[c, j]) * dpred[n, c]
            dout[j] = a
        for c in range(C):
            ghb[c] += dpred[n, c]
            for j in range(d):
                ghw[c, j] += dpred[n, c] * out[n, j]
        tb = idx[n]
        dgate = 0.0
        for j in range(d):
            gy[j] = gate[n] * dout[j]
            dgate += dout[j] * y[n, j]
        dcos = 0.0
        if use_cal:
            # gate = (1 - fr) y[s] + fr y[s + 1] with fr = u - s, y = cumsum(softmax)
            sgi = seg[n]
            fr = uc[n] - sgi
            if inside[n]:
                dcos = dgate * (ycum[sgi + 1] - ycum[sgi]) * inv_h
            for i in range(sgi + 1):
                dpi[i] += dgate
            dpi[sgi + 1] += dgate * fr
        # chosen expert
        for j in range(d):
            gb2[tb, j] += gy[j]
        for j in range(d):
            dxn[j] = 0.0
        for q in range(H):
            dh_q = 0.0
            for j in range(d):
                gw2[tb, q, j] += hid[n, q] * gy[j]
                dh_q += float(w2[tb, q, j]) * gy[j]
            sg = _sigmoid(a1[n, q])
            da = dh_q * sg * (1.0 + a1[n, q] * (1.0 - sg))
            gb1[tb, q] += da
            for j in range(d):
                gw1[tb, j, q] += xn[n, j] * da
                dxn[j] += float(w1[tb, j, q]) * da
        # route: the mixture's gradient and the balance loss
        for t in range(T):
            a = 0.0
            for j in range(d):
                a += gy[j] * yall[n, t, j]
            dJ[t] = a + aux_w * bal_w * T * (counts[t] / N) / N
        sp = 0.0
        for c in range(NC):
            a = 0.0
            for k in range(K):
                a += dJ[c * K + k] * Q[n, c * K + k]
            dP[c] = a
            sp += P[n, c] * a
        for c in range(NC):
            dzc = P[n, c] * (dP[c] - sp)
            sq = 0.0
            for k in range(K):
                sq += Q[n, c * K + k] * dJ[c * K + k] * P[n, c]
            for k in range(K):
                t = c * K + k
                dz[t] = Q[n, t] * (dJ[t] * P[n, c] - sq) + dzc / K
        # cosine of the chosen route (calibration input)
        den = cn[n] * sn[tb]
        ddots_tb = 0.0
        dcn = 0.0
        if den > 1e-8:
            ddots_tb = dcos / den
            dden = -dcos * dots[n, tb] / (den * den)
            dcn = dden * sn[tb]
            dnorm[tb] += dden * cn[n]
        for j in range(d):
            dcode[j] = (dcn * code[n, j] / cn[n]) if cn[n] > 0 else 0.0
        for t in range(T):
            dd = dz[t] * ss + (ddots_tb if t == tb else 0.0)
            for j in range(d):
                dcode[j] += dd * float(sig[t, j])
                dsig[t, j] += dd * code[n, j]
        # routing net
        for k in range(Hc):
            s1[k] = c1[n, k] * _sigmoid(c1[n, k])
        for j in range(d):
            gcb2[j] += dcode[j]
            for k in range(Hc):
                gcw2[j, k] += dcode[j] * s1[k]
        for k in range(Hc):
            ds = 0.0
            for j in range(d):
                ds += float(cw2[j, k]) * dcode[j]
            sg = _sigmoid(c1[n, k])
            dc = ds * sg * (1.0 + c1[n, k] * (1.0 - sg))
            gcb1[k] += dc
            for j in range(d):
                gcw1[k, j] += dc * xn[n, j]
                dxn[j] += float(cw1[k, j]) * dc
        # layer norm, tanh, projection
        m1 = 0.0
        m2 = 0.0
        for j in range(d):
            gnw[j] += dxn[j] * xhat[n, j]
            gnb[j] += dxn[j]
            dx = dxn[j] * nw[j]
            m1 += dx
            m2 += dx * xhat[n, j]
        m1 /= d
        m2 /= d
        for j in range(d):
            dh = dout[j] + inv[n] * (dxn[j] * nw[j] - m1 - xhat[n, j] * m2)
            da = dh * (1.0 - h[n, j] * h[n, j])
            gpb[j] += da
            for i in range(F):
                gpw[j, i] += da * feats[n, i]
    # signature norms -> signatures; frozen rows take nothing
    for t in range(T):
        if frozen[t]:
            continue
        for j in range(d):
            v = dsig[t, j]
            if sn[t] > 0:
                v += dnorm[t] * sig[t, j] / sn[t]
            gsig[t, j] = v
    # calibration: cumulative sum, then softmax
    if use_cal:
        acc = 0.0
        for i in range(G + 1):
            acc += pi[i] * dpi[i]
        for i in range(G + 1):
            glog[i] = pi[i] * (dpi[i] - acc)
    return float(loss)


@njit(cache=True, nogil=True)
def _adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: float,
          lr: float, beta1: float, beta2: float, eps: float, wd: float, scale: float) -> None:
    """One Adam update of ``p`` in place (torch.optim.Adam's equations, not AdamW).

    ``p``, ``g`` (gradient, multiplied by ``scale`` first: gradient clipping),
    ``m``, ``v`` (the moments, updated in place): float32, shape (n,);
    ``step``: the step number after this update (1 for the first).
    """
    bc1 = 1.0 - beta1 ** step
    bc2s = math.sqrt(1.0 - beta2 ** step)
    step_size = lr / bc1
    for i in range(p.shape[0]):
        gi = g[i] * scale
        if wd != 0.0:
            gi += wd * p[i]
        mi = m[i] + (1.0 - beta1) * (gi - m[i])
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / bc2s + eps)
