"""The fabric's connectivity after an apoptosis round: the topology arrays, their
invariants (:func:`check_topology`) and the rewiring of the newborns' rows
(:func:`rewire`) for the plan :func:`lillith.fabric.evolution.plan_apoptosis` made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError
from lillith.fabric.evolution import (
    CROSSOVER,
    CROSSOVER_NOISE,
    PRESERVATION,
    Plan,
)

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def default_branch_ptr(indptr: I64, n_branches: int) -> I64:
    """Branch pointer of the default layout, shape (n * K + 1,), int64.

    Branch ``k`` of row ``i`` is the k-th of ``K`` contiguous blocks of the row;
    the first ``len % K`` blocks hold ``len // K + 1`` synapses, the others
    ``len // K``. ``bptr[i * K] == indptr[i]``.
    """
    K = int(n_branches)
    n = indptr.shape[0] - 1
    ln = np.diff(indptr)
    base, extra = ln // K, ln % K
    sizes = base[:, None] + (np.arange(K)[None, :] < extra[:, None])
    out = np.empty(n * K + 1, dtype=np.int64)
    out[0] = 0
    np.cumsum(sizes.reshape(-1), out=out[1:])
    return out


def synapse_branch(bptr: I64, n_branches: int, nnz: int) -> tuple[I64, I64]:
    """Postsynaptic row and branch of every synapse, each shape (nnz,), int64."""
    flat = np.searchsorted(bptr, np.arange(nnz, dtype=np.int64), side="right") - 1
    rows, br = np.divmod(flat.astype(np.int64), int(n_branches))
    return rows, br


def gate_lists(indptr: I64, indices: I32, gate: I32, n_gates: int) -> tuple[I64, I64, I64]:
    """Synapses of each gate, for the gate learning rule.

    Returns
    -------
    gate_ptr : ndarray, shape (n_gates + 1,), int64
    gate_pre, gate_post : ndarray, shape (n_gated,), int64
        Pre- and postsynaptic neuron of each gated synapse, grouped by gate.
    """
    n = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    sel = np.nonzero(gate >= 0)[0]
    order = sel[np.argsort(gate[sel], kind="stable")]
    ptr = np.zeros(n_gates + 1, dtype=np.int64)
    np.cumsum(np.bincount(gate[sel], minlength=n_gates)[:n_gates], out=ptr[1:])
    return ptr, indices[order].astype(np.int64), rows[order]


@dataclass
class Topology:
    """The fabric's connectivity arrays (what apoptosis rewires).

    Attributes
    ----------
    indptr : (n + 1,) int64
        Row pointer, rows = postsynaptic neurons.
    bptr : (n * K + 1,) int64
        Branch pointer: branch k of row i is ``[bptr[i*K + k], bptr[i*K + k + 1])``.
    indices : (nnz,) int32
        Presynaptic neurons.
    w : (nnz,) float32
        Plastic weight magnitudes.
    polarity : (nnz,) int8
    feedback : (nnz,) uint8
    gate : (nnz,) int32
        Skip gate of each synapse, -1 ungated.
    s_indptr : (n + 1,) int64
    s_indices : (s_nnz,) int32
    s_wsigned : (s_nnz,) float32
        Sensory synapses (signed weights).
    """

    indptr: I64
    bptr: I64
    indices: I32
    w: F32
    polarity: npt.NDArray[np.int8]
    feedback: npt.NDArray[np.uint8]
    gate: I32
    s_indptr: I64
    s_indices: I32
    s_wsigned: F32


def check_topology(t: Topology, n: int, n_branches: int, n_inputs: int, n_gates: int) -> None:
    """Check every CSR invariant the step kernel relies on.

    Rows monotone and complete; branch pointer consistent with rows
    (``bptr[i*K] == indptr[i]``, monotone); indices in range; per row
    forward synapses before feedback ones; gates in ``[-1, n_gates)``;
    sensory CSR consistent; weights finite and >= 0; array lengths agree.

    Raises
    ------
    FabricError
        Naming the first invariant that fails.
    """
    K = int(n_branches)
    nnz = int(t.indices.shape[0])
    if t.indptr.shape != (n + 1,) or t.bptr.shape != (n * K + 1,):
        raise FabricError("row or branch pointer has the wrong length",
                          indptr=t.indptr.shape, bptr=t.bptr.shape, n=n, n_branches=K)
    for name, arr in (("w", t.w), ("polarity", t.polarity), ("feedback", t.feedback),
                      ("gate", t.gate)):
        if arr.shape != (nnz,):
            raise FabricError("synapse array length differs from nnz", array=name,
                              shape=arr.shape, nnz=nnz)
    if t.indptr[0] != 0 or t.indptr[-1] != nnz or np.any(np.diff(t.indptr) < 0):
        raise FabricError("CSR row pointer is not monotone from 0 to nnz")
    if np.any(np.diff(t.bptr) < 0) or not np.array_equal(t.bptr[::K], t.indptr):
        raise FabricError("branch pointer is not monotone within the rows")
    if nnz and (int(t.indices.min()) < 0 or int(t.indices.max()) >= n):
        raise FabricError("presynaptic index out of range", n=n)
    rows = np.repeat(np.arange(n), np.diff(t.indptr))
    fb = t.feedback.astype(bool)
    if fb.size and np.any(fb[:-1] & ~fb[1:] & (rows[:-1] == rows[1:])):
        raise FabricError("rows must list forward synapses before feedback synapses")
    if nnz and (int(t.gate.min()) < -1 or int(t.gate.max()) >= n_gates):
        raise FabricError("gate index out of range", n_gates=n_gates)
    if nnz and (not np.all(np.isfinite(t.w)) or float(t.w.min()) < 0.0):
        raise FabricError("weights must be finite and >= 0")
    s_nnz = int(t.s_indices.shape[0])
    if (t.s_indptr.shape != (n + 1,) or t.s_indptr[0] != 0 or t.s_indptr[-1] != s_nnz
            or np.any(np.diff(t.s_indptr) < 0) or t.s_wsigned.shape != (s_nnz,)):
        raise FabricError("sensory CSR is inconsistent")
    if s_nnz and (int(t.s_indices.min()) < 0 or int(t.s_indices.max()) >= n_inputs):
        raise FabricError("sensory channel out of range", n_inputs=n_inputs)
    if s_nnz and not np.all(np.isfinite(t.s_wsigned)):
        raise FabricError("sensory weights must be finite")


# ---------------------------------------------------------------------------
# planning: who dies, who parents
# ---------------------------------------------------------------------------
def _ranges(starts: I64, lengths: I64) -> I64:
    """Concatenation of ``arange(s, s + l)`` for each pair, int64."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: I64 = np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - offs)
    return out


def _row_spread(values: F64, row_of: I64, n_rows: int) -> F64:
    """Per row: std of ``values`` over the row's entries, or their mean when the std is 0."""
    cnt = np.bincount(row_of, minlength=n_rows).astype(np.float64)
    s1 = np.bincount(row_of, weights=values, minlength=n_rows)
    s2 = np.bincount(row_of, weights=values * values, minlength=n_rows)
    safe = np.maximum(cnt, 1.0)
    mean = s1 / safe
    std = np.sqrt(np.maximum(s2 / safe - mean * mean, 0.0))
    out: F64 = np.where(std > 0.0, std, mean)
    return out


def _lookup(keys_sorted: I64, key: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Position of each ``key`` in ``keys_sorted`` and whether it is present."""
    pos = np.searchsorted(keys_sorted, key)
    pos_c = np.minimum(pos, max(keys_sorted.shape[0] - 1, 0))
    found = (pos < keys_sorted.shape[0]) & (keys_sorted[pos_c] == key) if keys_sorted.size else (
        np.zeros(key.shape[0], dtype=bool))
    return pos_c.astype(np.int64), found


def rewire(
    t: Topology, plan: Plan, n_branches: int, w_max: float, rng: np.random.Generator
) -> Topology:
    """Connectivity after the planned deaths and regrowths (new arrays).

    Parameters
    ----------
    t : Topology
        Current connectivity (not modified).
    plan : Plan
        From :func:`plan_apoptosis`; parents are never slots.
    n_branches : int
        K, branches per neuron.
    w_max : float
        Upper clip of regrown weights.
    rng : numpy.random.Generator
        Source of the mutation / crossover noise.

    Returns
    -------
    Topology

    Notes
    -----
    1. The incoming rows of all slots are dropped, and for preserving slots
       also the dead neuron's outgoing synapses.
    2. Preserving split: every outgoing synapse of a parent with ``c``
       preserving children keeps ``1 / (c + 1)`` of its weight, and each child
       gets a synapse of that weight onto the same target, right after the
       parent's in the same branch block (same polarity, feedback flag, gate).
    3. Each slot's incoming row becomes a copy of its parent's row as it is
       after step 2 (order, branch layout, polarity, flags, gates), with
       self-loops dropped; mutation adds ``N(0, (s * spread)^2)`` to the
       weights (``spread`` = std of the parent row's weights, their mean when
       the std is 0), crossover blends ``alpha * w1 + (1 - alpha) * w2`` over
       the first parent's layout (``w2`` matched by presynaptic neuron,
       0 when the second parent has no such synapse) plus
       ``CROSSOVER_NOISE`` times the mutation noise; weights clipped to
       ``[0, w_max]``. Sensory rows are treated alike (signed weights, no clip).
    4. Mutation and crossover slots keep the dead neuron's outgoing synapses.
    """
    K = int(n_branches)
    n = t.indptr.shape[0] - 1
    nnz = int(t.indices.shape[0])
    m = plan.size
    slots, p1, p2, kind = plan.slots, plan.parent1, plan.parent2, plan.kind
    rows, br = synapse_branch(t.bptr, K, nnz)
    pre = t.indices.astype(np.int64)

    is_slot = np.zeros(n, dtype=bool)
    is_slot[slots] = True
    pres = kind == PRESERVATION
    pres_slot = np.zeros(n, dtype=bool)
    pres_slot[slots[pres]] = True
    pc_parent, pc_child = p1[pres], slots[pres]
    n_child = np.bincount(pc_parent, minlength=n).astype(np.int64)
    c_order = np.argsort(pc_parent, kind="stable")
    sorted_child = pc_child[c_order]
    child_start = np.concatenate([[0], np.cumsum(n_child)[:-1]]).astype(np.int64)
    stride = int(n_child.max()) + 1 if n_child.size else 1

    # -- 1, 2: kept synapses, parents' outgoing split with their children
    keep = np.nonzero(~is_slot[rows] & ~pres_slot[pre])[0]
    k_pre = pre[keep]
    div = n_child[k_pre]
    k_w = t.w[keep].copy()
    split = div > 0
    k_w[split] = k_w[split] / (div[split] + 1).astype(np.float32)
    rep = np.repeat(np.arange(keep.shape[0], dtype=np.int64), div)
    sub = np.arange(rep.shape[0], dtype=np.int64) - np.repeat(np.cumsum(div) - div, div)
    c_src = keep[rep]
    c_pre = sorted_child[child_start[k_pre[rep]] + sub]

    t1_row = np.concatenate([rows[keep], rows[c_src]])
    t1_br = np.concatenate([br[keep], br[c_src]])
    t1_key = np.concatenate([keep * stride, c_src * stride + sub + 1])
    t1_pre = np.concatenate([k_pre, c_pre])
    t1_w = np.concatenate([k_w, k_w[rep]]).astype(np.float32)
    t1_pol = np.concatenate([t.polarity[keep], t.polarity[c_src]])
    t1_fb = np.concatenate([t.feedback[keep], t.feedback[c_src]])
    t1_gate = np.concatenate([t.gate[keep], t.gate[c_src]])
    o1 = np.lexsort((t1_key, t1_br, t1_row))
    t1_row, t1_br, t1_key, t1_pre = t1_row[o1], t1_br[o1], t1_key[o1], t1_pre[o1]
    t1_w, t1_pol, t1_fb, t1_gate = t1_w[o1], t1_pol[o1], t1_fb[o1], t1_gate[o1]
    t1_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(t1_row, minlength=n), out=t1_ptr[1:])

    # -- 3: the slots' incoming rows, copied from their (first) parents
    lens = np.diff(t1_ptr)[p1]
    src = _ranges(t1_ptr[p1], lens)
    slot_of = np.repeat(np.arange(m, dtype=np.int64), lens)
    r_row = slots[slot_of]
    r_pre = t1_pre[src]
    ok = r_pre != r_row
    src, slot_of, r_row, r_pre = src[ok], slot_of[ok], r_row[ok], r_pre[ok]
    r_w = t1_w[src].astype(np.float64)
    r_kind = kind[slot_of]
    noisy = r_kind != PRESERVATION
    if np.any(noisy):
        spread = _row_spread(np.abs(t1_w).astype(np.float64), t1_row, n)
        sigma = plan.strength[slot_of] * spread[p1[slot_of]]
        sigma = np.where(r_kind == CROSSOVER, CROSSOVER_NOISE * sigma, sigma)
        cross = (r_kind == CROSSOVER) & (p2[slot_of] >= 0)
        if np.any(cross):
            code = t1_row * n + t1_pre  # sorted: rows ascending, unique (row, pre)
            c_sorted = np.argsort(code, kind="stable")
            pos, found = _lookup(code[c_sorted], p2[slot_of] * n + r_pre)
            w2 = np.where(found, t1_w[c_sorted[pos]].astype(np.float64), 0.0)
            a = plan.alpha[slot_of]
            r_w = np.where(cross, a * r_w + (1.0 - a) * w2, r_w)
        noise = rng.standard_normal(r_w.shape[0]) * sigma
        r_w = np.where(noisy, np.clip(r_w + noise, 0.0, w_max), r_w)

    # -- assemble: kept + copies + regrown rows, ordered by (row, branch, key)
    a_row = np.concatenate([t1_row, r_row])
    a_br = np.concatenate([t1_br, t1_br[src]])
    a_key = np.concatenate([t1_key, t1_key[src]])
    order = np.lexsort((a_key, a_br, a_row))
    a_row, a_br = a_row[order], a_br[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row, minlength=n), out=indptr[1:])
    bptr = np.zeros(n * K + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row * K + a_br, minlength=n * K), out=bptr[1:])
    new = Topology(
        indptr=indptr,
        bptr=bptr,
        indices=np.concatenate([t1_pre, r_pre])[order].astype(np.int32),
        w=np.concatenate([t1_w, r_w.astype(np.float32)])[order].astype(np.float32),
        polarity=np.concatenate([t1_pol, t1_pol[src]])[order].astype(np.int8),
        feedback=np.concatenate([t1_fb, t1_fb[src]])[order].astype(np.uint8),
        gate=np.concatenate([t1_gate, t1_gate[src]])[order].astype(np.int32),
        s_indptr=t.s_indptr, s_indices=t.s_indices, s_wsigned=t.s_wsigned,
    )
    _rewire_sensory(t, new, plan, rng)
    return new


def _rewire_sensory(old: Topology, new: Topology, plan: Plan, rng: np.random.Generator) -> None:
    """Sensory rows of the slots: copies of their parents' (step 3 of :func:`rewire`)."""
    n = old.s_indptr.shape[0] - 1
    m = plan.size
    slots, p1, p2, kind = plan.slots, plan.parent1, plan.parent2, plan.kind
    s_len = np.diff(old.s_indptr)
    s_rows = np.repeat(np.arange(n, dtype=np.int64), s_len)
    is_slot = np.zeros(n, dtype=bool)
    is_slot[slots] = True
    keep = np.nonzero(~is_slot[s_rows])[0]
    lens = s_len[p1]
    src = _ranges(old.s_indptr[p1], lens)
    slot_of = np.repeat(np.arange(m, dtype=np.int64), lens)
    r_ch = old.s_indices[src].astype(np.int64)
    r_w = old.s_wsigned[src].astype(np.float64)
    r_kind = kind[slot_of]
    noisy = r_kind != PRESERVATION
    if np.any(noisy):
        spread = _row_spread(np.abs(old.s_wsigned).astype(np.float64), s_rows, n)
        sigma = plan.strength[slot_of] * spread[p1[slot_of]]
        sigma = np.where(r_kind == CROSSOVER, CROSSOVER_NOISE * sigma, sigma)
        cross = (r_kind == CROSSOVER) & (p2[slot_of] >= 0)
        if np.any(cross):
            n_in = int(old.s_indices.max()) + 1 if old.s_indices.size else 1
            code = s_rows * n_in + old.s_indices.astype(np.int64)
            c_sorted = np.argsort(code, kind="stable")
            pos, found = _lookup(code[c_sorted], p2[slot_of] * n_in + r_ch)
            w2 = np.where(found, old.s_wsigned[c_sorted[pos]].astype(np.float64), 0.0)
            a = plan.alpha[slot_of]
            r_w = np.where(cross, a * r_w + (1.0 - a) * w2, r_w)
        noise = rng.standard_normal(r_w.shape[0]) * sigma
        r_w = np.where(noisy, r_w + noise, r_w)
    a_row = np.concatenate([s_rows[keep], slots[slot_of]])
    a_key = np.concatenate([keep, src])
    order = np.lexsort((a_key, a_row))
    s_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row, minlength=n), out=s_indptr[1:])
    new.s_indptr = s_indptr
    new.s_indices = np.concatenate([old.s_indices[keep], r_ch])[order].astype(np.int32)
    new.s_wsigned = np.concatenate([old.s_wsigned[keep], r_w.astype(np.float32)]
                                   )[order].astype(np.float32)
