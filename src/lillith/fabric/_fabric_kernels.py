"""Private numba kernels of the neural fabric.

Pure functions over arrays: no Python objects, no logging, no raising. The
typed wrapper :class:`lillith.fabric.neural_fabric.NeuralFabric3D` validates
every input before calling them. Equations and constants: ``docs/model.md``.

The step kernel exists four times, compiled from the same Python source: a
serial build and a ``parallel=True`` build (``prange`` over chunks of
neurons), each without and with gated skip synapses (the module constant
``_GATED`` is frozen into each build, so the ungated builds carry no trace of
the gates). Each neuron's update reads only the previous step's activations
of other neurons and writes only its own state (and its own entries of the
scratch arrays), so the serial and parallel builds give the same result (no
cross-neuron reduction, no race).
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
from numba import njit, prange

# Indices into the float32 parameter vector ``p`` (see FabricParams.pack).
P_DT = 0
P_TAU_B = 1  # branch voltage time constant, ms
P_TAU_H = 2  # hotspot trace time constant, ms
P_TAU_CA = 3  # branch calcium time constant, ms
P_R_SYN = 4  # synaptic current -> branch voltage, mV per unit
P_THETA_D = 5  # dendritic spike threshold, mV
P_KAPPA_D = 6  # dendritic spike width, mV
P_A_D = 7  # dendritic spike amplitude, mV
P_G_DEND = 8  # dendrite -> soma coupling (dimensionless)
P_R_IN = 9  # sensory current -> soma, mV per unit
P_E_L = 10  # leak reversal (rest), mV
P_E_NA = 11
P_E_K = 12
P_G_NA = 13  # relative to leak
P_G_K = 14
P_V_NA = 15  # half-activation of Na gate, mV
P_K_NA = 16  # slope, mV
P_TAU_NA = 17  # ms
P_V_K = 18
P_K_K = 19
P_TAU_K = 20
P_V_CA = 21
P_K_CA = 22
P_TAU_CAG = 23
P_V_HALF = 24  # output nonlinearity threshold, mV
P_V_SCALE = 25  # output nonlinearity scale, mV
P_TAU_REF = 26  # refractory recovery, ms
P_RHO_REF = 27  # refractory depth in [0, 1]
P_TAU_ADAPT = 28  # adaptation time constant, ms
P_G_ADAPT = 29  # adaptation strength (output divisor)
P_G_ADAPT_V = 30  # adaptation hyperpolarising current, mV per unit
P_V_MIN = 31
P_V_MAX = 32
P_VB_MAX = 33
P_I_MAX = 34  # clip of the sensory + mode drive, mV
P_ETA = 35  # plasticity rate per step
P_LAMBDA = 36  # Oja normalisation strength
P_W_MAX = 37
P_TAU_THETA = 38  # BCM sliding threshold time constant, ms
N_PARAMS = 39

# skip-gate logits are clipped to this magnitude (sigmoid stays < 1 in float32)
GATE_LOGIT_MAX = 15.0

MODE_NORMAL = 0
MODE_RANDOM = 1
MODE_INTENTIONAL = 2
MODE_BIDIRECTIONAL = 3

# compile-time switch of the step kernel's gated-skip code (see _renamed)
_GATED = False

# neurons per chunk of the step kernel (its unit of parallel work)
CHUNK = 128

_U64_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64_M1 = np.uint64(0xBF58476D1CE4E5B9)
_U64_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True, inline="always")
def _clip(x: np.float32, lo: np.float32, hi: np.float32) -> np.float32:
    """``x`` clipped to ``[lo, hi]`` (scalars only: no array reference counting)."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@njit(cache=True, nogil=True, inline="always")
def _softsig(x: np.float32) -> np.float32:
    """Rational sigmoid ``0.5 * (1 + x / (1 + |x|))``, in (0, 1), monotone."""
    one = np.float32(1.0)
    return np.float32(0.5) * (one + x / (one + abs(x)))


@njit(cache=True, nogil=True, inline="always")
def _splitmix(z: np.uint64) -> np.uint64:
    z = z + _U64_GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _U64_M1
    z = (z ^ (z >> np.uint64(27))) * _U64_M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _gauss_noise(seed: np.uint64, step: np.uint64, idx: np.uint64) -> float:
    """Counter-based standard normal sample for (seed, step, neuron).

    Deterministic and independent of thread scheduling: a splitmix64 hash of
    the counter gives two uniforms, Box-Muller turns them into a normal.
    """
    h1 = _splitmix(seed ^ _splitmix(step ^ _splitmix(idx)))
    h2 = _splitmix(h1)
    u1 = (float(h1 >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)
    u2 = float(h2 >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True, nogil=True, inline="always")
def _bio_out(
    v: np.float32,
    ref: np.float32,
    adapt: np.float32,
    v_half: np.float32,
    inv_scale: np.float32,
    rho: np.float32,
    g_a: np.float32,
) -> np.float32:
    """Biological output nonlinearity: tanh above threshold, refractory, adapted.

    ``a = tanh(max(0, (v - V_half) / V_scale)) * (1 - rho * ref) / (1 + g_a * adapt)``
    in [0, 1]. Scalars only (array arguments cost reference counting per call).
    """
    one = np.float32(1.0)
    u = (v - v_half) * inv_scale
    if u <= np.float32(0.0):
        return np.float32(0.0)
    e2 = math.exp(np.float32(-2.0) * u)  # tanh(u) = (1 - e^-2u) / (1 + e^-2u), u > 0
    return (one - e2) / (one + e2) * (one - rho * ref) / (one + g_a * adapt)


def _step_impl(
    p: np.ndarray,
    mode: int,
    noise_scale: float,
    intent_gain: float,
    bidir_weight: float,
    plastic_rate: float,
    seed: np.uint64,
    step: np.uint64,
    inv_hot_gain: float,
    bptr: np.ndarray,
    indices: np.ndarray,
    polarity: np.ndarray,
    fb_start: np.ndarray,
    gate_idx: np.ndarray,
    gate_val: np.ndarray,
    s_indptr: np.ndarray,
    s_indices: np.ndarray,
    s_wsigned: np.ndarray,
    tau: np.ndarray,
    x: np.ndarray,
    goal: np.ndarray,
    pending: np.ndarray,
    has_pending: bool,
    w: np.ndarray,
    v: np.ndarray,
    m_na: np.ndarray,
    n_k: np.ndarray,
    c_ca: np.ndarray,
    vb: np.ndarray,
    cab: np.ndarray,
    hot: np.ndarray,
    ref: np.ndarray,
    adapt: np.ndarray,
    theta: np.ndarray,
    a_prev: np.ndarray,
    a_new: np.ndarray,
    branch_in: np.ndarray,
    soma_in: np.ndarray,
) -> None:
    """Advance every neuron by one time step ``dt`` (in place).

    Reads ``a_prev`` (activations of the previous step, shape (n,)) and
    writes ``a_new``; all other state arrays are updated in place. Plastic
    weights ``w`` of the synapses onto a neuron are updated with the
    previous step's pre/post activities (fused into the same pass).

    Branch ``k`` of neuron ``i`` is the CSR block ``[bptr[i*K + k],
    bptr[i*K + k + 1])`` (shape (n*K + 1,), int64; ``bptr[i*K]`` is the row
    start). In the gated builds a synapse with ``gate_idx[j] >= 0`` (int32,
    shape (nnz,)) transmits ``gate_val[gate_idx[j]]`` (float32, in (0, 1))
    times its current; the ungated builds never read either array.

    ``branch_in`` (float32, shape (n*K,)) and ``soma_in`` (float32, shape
    (n,)) are scratch: every entry is written before it is read, within the
    chunk of (at most ``CHUNK``) neurons it belongs to; their values on entry
    and exit carry no state.
    """
    n = v.shape[0]
    K = vb.shape[1]
    S = hot.shape[2]
    f32 = np.float32
    dt = p[P_DT]
    ab = dt / p[P_TAU_B]
    keep_b = f32(1.0) - ab
    ch = f32(1.0) - f32(math.exp(-dt / p[P_TAU_H]))
    aca = dt / p[P_TAU_CA]
    r_syn = ab * p[P_R_SYN]
    theta_d = p[P_THETA_D]
    kappa_d = p[P_KAPPA_D]
    a_d = p[P_A_D]
    g_dend = p[P_G_DEND] / f32(K)
    r_in = p[P_R_IN]
    e_l = p[P_E_L]
    e_na = p[P_E_NA]
    e_k = p[P_E_K]
    g_na = p[P_G_NA]
    g_k = p[P_G_K]
    a_na = min(f32(1.0), dt / p[P_TAU_NA])
    a_k = min(f32(1.0), dt / p[P_TAU_K])
    a_cg = min(f32(1.0), dt / p[P_TAU_CAG])
    er = f32(math.exp(-dt / p[P_TAU_REF]))
    a_ad = dt / p[P_TAU_ADAPT]
    g_adv = p[P_G_ADAPT_V]
    v_min = p[P_V_MIN]
    v_max = p[P_V_MAX]
    vb_max = p[P_VB_MAX]
    i_max = p[P_I_MAX]
    eta = p[P_ETA] * f32(plastic_rate)
    lam = p[P_LAMBDA]
    w_max = p[P_W_MAX]
    a_th = dt / p[P_TAU_THETA]
    zero = f32(0.0)
    one = f32(1.0)
    if mode == MODE_BIDIRECTIONAL:
        g_ff = f32(1.0 - bidir_weight)
        g_fb = f32(bidir_weight)
    else:
        g_ff = f32(1.0)
        g_fb = f32(0.0)
    plastic = eta > zero
    inv_kd = one / kappa_d
    inv_kna = one / p[P_K_NA]
    inv_kk = one / p[P_K_K]
    inv_kca = one / p[P_K_CA]
    v_na = p[P_V_NA]
    v_k = p[P_V_K]
    v_ca = p[P_V_CA]
    v_half = p[P_V_HALF]
    inv_vs = one / p[P_V_SCALE]
    rho = p[P_RHO_REF]
    g_a = p[P_G_ADAPT]
    # hotspot traces are stored divided by a global gain that carries their
    # common exponential decay (see NeuralFabric3D._advance_hot_gain): a new
    # contribution c is stored as c / gain, and nothing decays element-wise
    chg = ch * f32(inv_hot_gain)
    hot1 = hot.reshape(n * K * S)
    vb1 = vb.reshape(n * K)
    cab1 = cab.reshape(n * K)
    # Neurons go in chunks of at most CHUNK, four passes per chunk:
    # 1. per neuron, the synapses (short, branching loops) sum each branch's
    #    input into branch_in; the sensory and mode drive goes to soma_in;
    # 2. per branch and 4. per neuron, the dendrite and soma updates run as
    #    loops of independent iterations, which LLVM vectorises (done one
    #    neuron at a time between the synapse loops, their chains of
    #    divisions and exp made the step ~30% slower, docs/performance.md);
    # 3. sums each neuron's dendritic current into soma_in.
    n_chunks = (n + CHUNK - 1) // CHUNK
    for c in prange(n_chunks):
        lo = c * n // n_chunks  # equal chunks (+-1) of at most CHUNK neurons
        hi = (c + 1) * n // n_chunks
        # -- 1. synapses and drive, one neuron at a time
        for i in range(lo, hi):
            post = a_prev[i]
            learn = plastic and post > zero
            bcm = post * (post - theta[i])
            decay = eta * lam * post * post
            # -- synapses onto branch k are the k-th contiguous block of the row,
            #    bounded by the branch pointer (by default the first ``len % K``
            #    blocks are one longer; evolution may change the sizes)
            bi = i * K
            b1 = bptr[bi]
            for k in range(K):
                b0 = b1
                b1 = bptr[bi + k + 1]
                acc = zero
                hb = (i * K + k) * S
                if has_pending:
                    # one-shot inputs injected with add_synaptic_input, consumed here
                    for s in range(S):
                        cur = pending[i, k, s]
                        if cur != zero:
                            acc += cur
                            hot1[hb + s] += chg * abs(cur)
                            pending[i, k, s] = zero
                # forward / lateral synapses first, top-down feedback from fb_start[i];
                # a gated-off block (gain 0) neither transmits nor learns. (Written
                # out rather than as a helper: array arguments of a numba call cost
                # reference-count traffic per call in the serial build.)
                hebb = eta * cab[i, k] * bcm
                jf = fb_start[i]
                for blk in range(2):
                    if blk == 0:
                        g, j0, j1 = g_ff, b0, min(b1, jf)
                    else:
                        g, j0, j1 = g_fb, max(b0, jf), b1
                    if g == zero:
                        continue
                    # the synapse loops index with unsigned integers (uint64 j,
                    # uint32 presynaptic index): numba wraps a negative signed
                    # index around, a compare and select per array access that
                    # cost ~20% of the step (docs/performance.md)
                    u0 = np.uint64(j0)
                    u1 = np.uint64(j1)
                    hbu = np.uint64(hb)
                    b0u = np.uint64(b0)
                    # the m-th synapse of a branch lands on segment m mod S; blocks
                    # no longer than S (the usual case) need no modulo
                    if b1 - b0 <= S:
                        if learn:
                            # calcium-gated BCM + Oja on previous-step activities, fused
                            for j in range(u0, u1):
                                pre = a_prev[np.uint32(indices[j])]
                                wj = w[j]
                                gj = g
                                if _GATED:
                                    q = gate_idx[j]
                                    if q >= 0:
                                        gj = g * gate_val[q]
                                cur = gj * polarity[j] * wj * pre
                                acc += cur
                                hot1[hbu + (j - b0u)] += chg * abs(cur)
                                w[j] = _clip(wj + hebb * pre - decay * wj, zero, w_max)
                        else:
                            for j in range(u0, u1):
                                gj = g
                                if _GATED:
                                    q = gate_idx[j]
                                    if q >= 0:
                                        gj = g * gate_val[q]
                                cur = gj * polarity[j] * w[j] * a_prev[np.uint32(indices[j])]
                                acc += cur
                                hot1[hbu + (j - b0u)] += chg * abs(cur)
                    else:
                        su = np.uint64(S)
                        for j in range(u0, u1):
                            pre = a_prev[np.uint32(indices[j])]
                            wj = w[j]
                            gj = g
                            if _GATED:
                                q = gate_idx[j]
                                if q >= 0:
                                    gj = g * gate_val[q]
                            cur = gj * polarity[j] * wj * pre
                            acc += cur
                            hot1[hbu + (j - b0u) % su] += chg * abs(cur)
                            if learn:
                                w[j] = _clip(wj + hebb * pre - decay * wj, zero, w_max)
                branch_in[bi + k] = acc
            # soma drive: sensory projection + mode term
            drive = zero
            for j in range(s_indptr[i], s_indptr[i + 1]):
                drive += s_wsigned[j] * x[s_indices[j]]
            drive *= r_in
            if mode == MODE_RANDOM:
                drive += f32(noise_scale * _gauss_noise(seed, step, np.uint64(i)))
            elif mode == MODE_INTENTIONAL:
                drive += f32(intent_gain) * (goal[i] - post) * p[P_V_SCALE]
            if drive != drive:
                drive = zero  # inf - inf from absurd inputs: no defined drive
            elif drive > i_max:
                drive = i_max
            elif drive < -i_max:
                drive = -i_max
            soma_in[i] = drive
        # -- 2. branch voltage, dendritic spike and branch calcium of every
        #    branch ik = i*K + k; branch_in[ik] becomes the branch's current
        #    into the soma. (Unsigned loop indices here and in 4.: numba's
        #    wraparound of negative indices would keep LLVM from vectorising.)
        for ik in range(np.uint64(lo * K), np.uint64(hi * K)):
            vbk = min(max(vb1[ik] * keep_b + r_syn * branch_in[ik], -vb_max), vb_max)
            vb1[ik] = vbk
            spk = _softsig((vbk - theta_d) * inv_kd)
            branch_in[ik] = vbk + a_d * spk
            cab1[ik] += aca * (spk - cab1[ik])
        # -- 3. dendritic current into the soma
        for i in range(lo, hi):
            idend = zero
            for k in range(K):
                idend += branch_in[i * K + k]
            soma_in[i] += g_dend * idend
        # -- 4. soma: ion channel gates relax toward voltage-dependent steady
        #    states (using the voltage before this step), membrane, output
        #    nonlinearity, refractoriness, adaptation, BCM threshold
        for i in range(np.uint64(lo), np.uint64(hi)):
            vi = v[i]
            m_na[i] += a_na * (_softsig((vi - v_na) * inv_kna) - m_na[i])
            n_k[i] += a_k * (_softsig((vi - v_k) * inv_kk) - n_k[i])
            c_ca[i] += a_cg * (_softsig((vi - v_ca) * inv_kca) - c_ca[i])
            dv = (
                (e_l - vi)
                + soma_in[i]
                + g_na * m_na[i] * (e_na - vi)
                + g_k * n_k[i] * (e_k - vi)
                - g_adv * adapt[i]
            )
            vi = min(max(vi + dt / tau[i] * dv, v_min), v_max)
            v[i] = vi
            a = _bio_out(vi, ref[i], adapt[i], v_half, inv_vs, rho, g_a)
            a_new[i] = a
            raw = min(a * (one + g_a * adapt[i]), one)
            ref[i] = ref[i] * er + (one - er) * raw
            adapt[i] += a_ad * (a + c_ca[i] - adapt[i])
            theta[i] += a_th * (a * a - theta[i])


def _renamed(fn: Any, name: str, **constants: Any) -> Any:
    """Copy of ``fn`` under another name, optionally with some globals replaced.

    numba's on-disk cache is keyed by qualified name and line, so the serial
    and the parallel build of one Python function would overwrite (and load)
    each other's machine code; distinct names keep separate cache entries.
    ``constants`` override module globals for this copy only; numba freezes
    globals into the machine code, so they act as compile-time switches.
    """
    glb = {**fn.__globals__, **constants} if constants else fn.__globals__
    clone = types.FunctionType(fn.__code__.replace(co_name=name), glb, name,
                               fn.__defaults__, fn.__closure__)
    clone.__qualname__ = name
    clone.__doc__ = fn.__doc__
    return clone


# LLVM may use reciprocals, contract to FMA, reassociate and approximate
# functions; it may NOT assume the absence of NaN/Inf (the kernel's NaN guard
# on the drive must survive). Results stay within float tolerance of the
# numpy reference and deterministic for a given build.
_FASTMATH = {"arcp", "contract", "afn", "reassoc", "nsz"}
# error_model="numpy": no zero test (with a ZeroDivisionError path) per float
# division, which would keep the branch and soma loops from vectorising.
# Nothing else changes: every divisor is >= 1, tau >= dt > 0 or a constant
# that FabricParams.validate keeps > 0.
_step_serial = njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")(
    _renamed(_step_impl, "_step_serial_impl")
)
_step_parallel = njit(
    cache=True, nogil=True, parallel=True, fastmath=_FASTMATH, error_model="numpy"
)(_renamed(_step_impl, "_step_parallel_impl"))
# with gated skip synapses (compiled on first use only)
_step_serial_gated = njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")(
    _renamed(_step_impl, "_step_serial_gated_impl", _GATED=True)
)
_step_parallel_gated = njit(
    cache=True, nogil=True, parallel=True, fastmath=_FASTMATH, error_model="numpy"
)(_renamed(_step_impl, "_step_parallel_gated_impl", _GATED=True))


@njit(cache=True, nogil=True)
def _scale_inplace(a: np.ndarray, factor: float) -> None:
    """``a *= factor`` over a contiguous array of any shape, no temporary."""
    flat = a.reshape(a.size)
    f = np.float32(factor)
    for i in range(flat.shape[0]):
        flat[i] *= f


@njit(cache=True, nogil=True)
def _pool(a: np.ndarray, n_out: int, out: np.ndarray) -> None:
    """Mean of ``a`` (shape (n,)) over ``n_out`` contiguous groups into ``out``.

    Group ``g`` covers indices ``[g * n // n_out, (g + 1) * n // n_out)``;
    with the layer-major layout these are slabs of consecutive z-layers.
    """
    n = a.shape[0]
    for g in range(n_out):
        lo = g * n // n_out
        hi = (g + 1) * n // n_out
        acc = 0.0
        for i in range(lo, hi):
            acc += a[i]
        out[g] = acc / max(hi - lo, 1)


@njit(cache=True, nogil=True)
def _pool_weighted(a: np.ndarray, readout: np.ndarray, n_out: int, out: np.ndarray) -> None:
    """Readout-weighted mean of ``a`` over ``n_out`` contiguous groups into ``out``.

    ``out[g] = sum_{i in g} readout[i] * a[i] / |g|`` with the groups of
    :func:`_pool`; with ``readout`` all 1 the result equals :func:`_pool`'s
    bit for bit (``1 * a`` is exact and the sum runs in the same order).
    """
    n = a.shape[0]
    for g in range(n_out):
        lo = g * n // n_out
        hi = (g + 1) * n // n_out
        acc = 0.0
        for i in range(lo, hi):
            acc += readout[i] * a[i]
        out[g] = acc / max(hi - lo, 1)


@njit(cache=True, nogil=True)
def _sigmoid32(x: np.float32) -> np.float32:
    """Logistic ``1 / (1 + exp(-x))`` of a float32 logit, as float32."""
    return np.float32(1.0 / (1.0 + math.exp(-float(x))))


@njit(cache=True, nogil=True)
def _gate_values(logit: np.ndarray, val: np.ndarray) -> None:
    """``val = sigmoid(logit)`` element-wise (float32 in, float32 out)."""
    for q in range(logit.shape[0]):
        val[q] = _sigmoid32(logit[q])


@njit(cache=True, nogil=True)
def _gate_update(
    gate_ptr: np.ndarray,
    gate_pre: np.ndarray,
    gate_post: np.ndarray,
    act: np.ndarray,
    rate: float,
    decay: float,
    logit0: float,
    logit: np.ndarray,
    val: np.ndarray,
) -> None:
    """Local learning rule of the skip gates (in place).

    For gate ``q`` with skip synapses ``t`` in ``[gate_ptr[q], gate_ptr[q+1])``
    (presynaptic neurons ``gate_pre[t]``, postsynaptic ``gate_post[t]``)::

        logit[q] += rate * (mean_t act[post] * mean_t act[pre] - decay * (logit[q] - logit0))
        val[q]    = 1 / (1 + exp(-logit[q]))

    ``rate`` is the plasticity multiplier times the gate learning rate.
    """
    for q in range(logit.shape[0]):
        t0 = gate_ptr[q]
        t1 = gate_ptr[q + 1]
        hebb = 0.0
        if t1 > t0:
            s_pre = 0.0
            s_post = 0.0
            for t in range(t0, t1):
                s_pre += act[gate_pre[t]]
                s_post += act[gate_post[t]]
            m = float(t1 - t0)
            hebb = (s_post / m) * (s_pre / m)
        lg = logit[q] + rate * (hebb - decay * (logit[q] - logit0))
        if lg > GATE_LOGIT_MAX:
            lg = GATE_LOGIT_MAX
        elif lg < -GATE_LOGIT_MAX:
            lg = -GATE_LOGIT_MAX
        logit[q] = lg
        val[q] = _sigmoid32(logit[q])


@njit(cache=True, nogil=True)
def _bio_nonlinearity(
    v: np.ndarray, ref: np.ndarray, adapt: np.ndarray, p: np.ndarray, out: np.ndarray
) -> None:
    """Vectorised :func:`_bio_out` plus refractory/adaptation update."""
    dt = p[P_DT]
    er = math.exp(-dt / p[P_TAU_REF])
    a_ad = dt / p[P_TAU_ADAPT]
    for i in range(v.shape[0]):
        a = _bio_out(v[i], ref[i], adapt[i], p[P_V_HALF], np.float32(1.0) / p[P_V_SCALE],
                     p[P_RHO_REF], p[P_G_ADAPT])
        out[i] = a
        raw = min(a * (1.0 + p[P_G_ADAPT] * adapt[i]), 1.0)
        ref[i] = ref[i] * er + (1.0 - er) * raw
        adapt[i] += a_ad * (a - adapt[i])
