"""``lillith inspect STATE --lineage``: generations, dynasties and specialization of an
evolving agent, read from a snapshot's state dict (no agent is built).

docs/evolution.md says what is recorded; :func:`lineage_report` and
:func:`specialization_report` are what ``inspect`` prints of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.agents.agent import Agent
from lillith.state.snapshot import Arrays

#: Kinds of the rows of ``evo/births`` and ``evo/deaths`` (``Agent`` FABRIC, TILE).
KINDS = ("fabric", "tiles")
#: Example ids listed with each consistency problem.
_EXAMPLES = 5


@dataclass
class _Population:
    """The living members of one kind (fabric neurons or tile hidden units), flat.

    ``ids``, ``generation``, ``birth`` int64 (n,); ``parents`` int64 (n, 2);
    ``fitness`` float64 (n,) or None; ``n0``: size of the original population
    (ids ``0 .. n0-1``); ``next_id``: the next id to be issued, or None.
    """

    ids: npt.NDArray[np.int64]
    parents: npt.NDArray[np.int64]
    generation: npt.NDArray[np.int64]
    birth: npt.NDArray[np.int64]
    fitness: npt.NDArray[np.float64] | None
    fitness_name: str
    n0: int
    next_id: int | None


def _scalar(state: Arrays, key: str) -> int | None:
    if key not in state:
        return None
    v = np.asarray(state[key]).reshape(-1)
    return int(v[0]) if v.size else None


def _i64(a: Any, *shape: int) -> npt.NDArray[np.int64]:
    return np.asarray(a, dtype=np.int64).reshape(*shape)


def _populations(state: Arrays, meta: dict[str, Any]) -> dict[str, _Population]:
    """Living fabric neurons and tile hidden units of a state dict (those present)."""
    out: dict[str, _Population] = {}
    if "fabric/neuron_id" in state:
        ids = _i64(state["fabric/neuron_id"], -1)
        n = ids.size
        fit = (np.asarray(state["fabric/fitness"], dtype=np.float64).reshape(-1)
               if "fabric/fitness" in state else None)
        out["fabric"] = _Population(
            ids=ids,
            parents=(_i64(state["fabric/parent_ids"], n, 2) if "fabric/parent_ids" in state
                     else np.full((n, 2), -1, dtype=np.int64)),
            generation=(_i64(state["fabric/generation"], n) if "fabric/generation" in state
                        else np.zeros(n, dtype=np.int64)),
            birth=(_i64(state["fabric/birth_step"], n) if "fabric/birth_step" in state
                   else np.zeros(n, dtype=np.int64)),
            fitness=fit, fitness_name="instant fitness (fabric/fitness)", n0=n,
            next_id=_scalar(state, "fabric/next_id"))
    if "tiles/lineage_ids" in state:
        tid = np.asarray(state["tiles/lineage_ids"], dtype=np.int64)
        n = tid.size
        fit = None
        name = "none (tiles/unit_importance missing)"
        if "tiles/unit_importance" in state and tid.ndim == 2:
            imp = np.asarray(state["tiles/unit_importance"], dtype=np.float64)
            imp = np.clip(np.nan_to_num(imp, nan=0.0, posinf=0.0), 0.0, None)
            fit = (imp / np.maximum(imp.max(axis=1, keepdims=True), 1e-12)).reshape(-1)
            weights = meta.get("config", {}).get("evolution", {}).get("fitness_weights", {})
            only_imp = {k for k, w in weights.items() if w > 0} == {"importance"}
            name = ("instant fitness (tiles/unit_importance / its tile's maximum)" if only_imp
                    else "importance component of the unit fitness "
                         "(tiles/unit_importance / its tile's maximum)")
        out["tiles"] = _Population(
            ids=tid.reshape(-1),
            parents=_i64(state["tiles/lineage_parents"], n, 2),
            generation=_i64(state["tiles/lineage_generation"], n),
            birth=_i64(state["tiles/lineage_birth"], n),
            fitness=fit, fitness_name=name, n0=n,
            next_id=_scalar(state, "tiles/lineage_next"))
    return out


def _ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks 1..n of ``x`` (n,), ties sharing their average rank."""
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    r = np.empty(n, dtype=np.float64)
    r[order] = avg[np.cumsum(first) - 1]
    return r


def spearman(x: npt.ArrayLike, y: npt.ArrayLike) -> float | None:
    """Spearman rank correlation of two samples (ties get average ranks).

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Pairs with a non-finite member are left out.

    Returns
    -------
    float or None
        In [-1, 1]; None with fewer than 3 pairs or when either sample is
        constant (the correlation is undefined).
    """
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if den == 0.0:
        return None
    return max(-1.0, min(1.0, float(ra @ rb) / den))


def descendants(child: npt.ArrayLike, parent0: npt.ArrayLike, parent1: npt.ArrayLike
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                           npt.NDArray[np.int64]]:
    """Descendants of every id in a birth history (transitive, through both parents).

    Parameters
    ----------
    child, parent0, parent1 : array_like of int, shape (B,)
        One birth per entry: the newborn's id and its parents' ids (-1: none).

    Returns
    -------
    ids : ndarray of int64, shape (N,)
        Every id that occurs (sorted).
    count : ndarray of int64, shape (N,)
        Number of distinct births descending from each id (a child of two
        parents that share an ancestor counts once for that ancestor).
    children : ndarray of int64, shape (N,)
        Number of births with the id as a parent.

    Notes
    -----
    Exact when every parent id is smaller than its children's ids (ids are
    issued in increasing order). A pure tree (at most one parent per birth)
    is summed up in one pass; otherwise the descendants are gathered as bit
    sets, in decreasing id order, each set dropped once passed on.
    """
    c = np.asarray(child, dtype=np.int64).reshape(-1)
    p0 = np.asarray(parent0, dtype=np.int64).reshape(-1)
    p1 = np.asarray(parent1, dtype=np.int64).reshape(-1)
    p1 = np.where(p1 == p0, -1, p1)
    ids = np.unique(np.concatenate([c, p0[p0 >= 0], p1[p1 >= 0]]))
    count = np.zeros(ids.size, dtype=np.int64)
    ci = np.searchsorted(ids, c)
    i0 = np.where(p0 >= 0, np.searchsorted(ids, p0), -1)
    i1 = np.where(p1 >= 0, np.searchsorted(ids, p1), -1)
    children = (np.bincount(i0[i0 >= 0], minlength=ids.size)
                + np.bincount(i1[i1 >= 0], minlength=ids.size)).astype(np.int64)
    order = np.argsort(-c, kind="stable")
    if not np.any((i0 >= 0) & (i1 >= 0)):
        # a forest: descendants(p) = sum over children of 1 + descendants(child)
        par = np.where(i0 >= 0, i0, i1)
        acc = [0] * ids.size
        for k in order.tolist():
            p = int(par[k])
            if p >= 0:
                acc[p] += 1 + acc[int(ci[k])]
        count[:] = acc
        return ids, count, children
    masks: dict[int, int] = {}
    for pos, k in enumerate(order.tolist()):
        me = int(ci[k])
        m = masks.pop(me, 0)
        count[me] = max(int(count[me]), m.bit_count())
        m |= 1 << pos
        for p in (int(i0[k]), int(i1[k])):
            if p >= 0:
                masks[p] = masks.get(p, 0) | m
    for me, m in masks.items():
        count[me] = max(int(count[me]), m.bit_count())
    return ids, count, children


def _lookup(keys: npt.NDArray[np.int64], values: npt.NDArray[Any], query: npt.NDArray[np.int64],
            default: Any) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """``values`` at ``query`` in the sorted ``keys`` (``default`` where absent)."""
    if keys.size == 0:
        return (np.full(query.shape, default, dtype=values.dtype),
                np.zeros(query.shape, dtype=bool))
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    found = keys[pos] == query
    return np.where(found, values[pos], default), found


def _problem(kind: str, what: str, bad_ids: npt.ArrayLike) -> str:
    ids = np.unique(np.asarray(bad_ids, dtype=np.int64))
    ex = ", ".join(str(int(i)) for i in ids[:_EXAMPLES])
    more = ", ..." if ids.size > _EXAMPLES else ""
    return f"{kind}: {ids.size} {what} (ids {ex}{more})"


def _consistency(kind: str, pop: _Population, births: npt.NDArray[np.int64],
                 deaths: npt.NDArray[np.int64]) -> list[str]:
    """Problems of one kind's lineage (empty when consistent); see :func:`lineage_report`."""
    problems: list[str] = []
    uid, cnt = np.unique(pop.ids, return_counts=True)
    if np.any(cnt > 1):
        problems.append(_problem(kind, "living ids are not unique", uid[cnt > 1]))
    bid, bcnt = np.unique(births[:, 1], return_counts=True)
    if np.any(bcnt > 1):
        problems.append(_problem(kind, "ids are recorded as born more than once", bid[bcnt > 1]))
    did, dcnt = np.unique(deaths[:, 1], return_counts=True)
    if np.any(dcnt > 1):
        problems.append(_problem(kind, "ids are recorded as dead more than once", did[dcnt > 1]))
    dead_alive = np.intersect1d(did, uid)
    if dead_alive.size:
        problems.append(_problem(kind, "ids are recorded as dead but alive", dead_alive))
    orig_born = bid[bid < pop.n0]
    if orig_born.size:
        problems.append(_problem(kind, "birth records carry an id of the original population",
                                 orig_born))
    # every neuron we know of: the living, then the recorded births not alive
    rec = births[~np.isin(births[:, 1], pop.ids)]
    ids = np.concatenate([pop.ids, rec[:, 1]])
    par = np.concatenate([pop.parents, rec[:, 2:4]])
    gen = np.concatenate([pop.generation, rec[:, 4]])
    if pop.next_id is not None and np.any(ids >= pop.next_id):
        problems.append(_problem(kind, f"ids are not below the next id {pop.next_id}",
                                 ids[ids >= pop.next_id]))
    late = np.any((par >= ids[:, None]) | (par < -1), axis=1)
    if np.any(late):
        problems.append(_problem(kind, "have a parent id not issued before their own id",
                                 ids[late]))
    # a living neuron with a birth record must agree with it
    if births.shape[0] and pop.ids.size:
        order = np.argsort(births[:, 1], kind="stable")
        keys = births[order, 1]
        pos = np.minimum(np.searchsorted(keys, pop.ids), keys.size - 1)
        has = keys[pos] == pop.ids
        row = births[order[pos]]
        differs = has & (np.any(row[:, 2:4] != pop.parents, axis=1)
                         | (row[:, 4] != pop.generation) | (row[:, 5] != pop.birth))
        if np.any(differs):
            problems.append(_problem(kind, "living neurons differ from their birth record",
                                     pop.ids[differs]))
    # generation = 1 + max(parent generations) where every parent's generation is known
    known_ids = np.concatenate([ids, np.arange(pop.n0, dtype=np.int64)])
    known_gen = np.concatenate([gen, np.zeros(pop.n0, dtype=np.int64)])
    kid, first = np.unique(known_ids, return_index=True)
    kgen = known_gen[first]
    has_parent = np.any(par >= 0, axis=1)
    if np.any(~has_parent & (gen != 0)):
        problems.append(_problem(kind, "have a generation > 0 but no parent",
                                 ids[~has_parent & (gen != 0)]))
    pg, found = _lookup(kid, kgen, par, -1)
    all_known = has_parent & np.all(found | (par < 0), axis=1)
    expected = np.max(np.where(par >= 0, pg, -1), axis=1) + 1
    wrong = all_known & (gen != expected)
    if np.any(wrong):
        problems.append(_problem(kind, "have generation != 1 + max(parent generations)",
                                 ids[wrong]))
    return problems


def _last_round_step(counters: npt.NDArray[np.int64], every: int) -> int | None:
    """Step of the newest evolution round (``next_due - every``), None before the first."""
    return int(counters[0]) - every if int(counters[1]) > 0 and every > 0 else None


def _kind_report(kind: str, pop: _Population, births: npt.NDArray[np.int64],
                 deaths: npt.NDArray[np.int64], death_fit: npt.NDArray[np.float64],
                 steps: int, last_round: int | None, top: int) -> dict[str, Any]:
    nodes, count, children = descendants(births[:, 1], births[:, 2], births[:, 3])
    living_desc, _ = _lookup(nodes, count, pop.ids, 0)
    n = int(pop.ids.size)
    gen = pop.generation
    hist = np.bincount(np.clip(gen, 0, None)).tolist() if n else []
    out: dict[str, Any] = {
        "population": n,
        "generations": {"histogram": [int(h) for h in hist],
                        "max": int(gen.max()) if n else 0,
                        "mean": float(gen.mean()) if n else 0.0},
        "births": int(births.shape[0]),
        "deaths": int(deaths.shape[0]),
        "turnover": float(births.shape[0] / n) if n else None,
        "births_per_1000_steps": float(1000.0 * births.shape[0] / steps) if steps else None,
        "originals_replaced": (float(1.0 - np.count_nonzero(pop.ids < pop.n0) / pop.n0)
                               if pop.n0 else None),
    }
    # dynasties: most descendants (ties: older id first)
    rank = np.lexsort((nodes, -count))[:top]
    rank = rank[count[rank] > 0]
    bkeys = np.sort(births[:, 1])
    border = np.argsort(births[:, 1], kind="stable")
    living_order = np.argsort(pop.ids, kind="stable")
    living_keys = pop.ids[living_order]
    dyn: list[dict[str, Any]] = []
    for i in rank.tolist():
        nid = int(nodes[i])
        lpos = int(np.searchsorted(living_keys, nid))
        alive = lpos < living_keys.size and int(living_keys[lpos]) == nid
        bpos = int(np.searchsorted(bkeys, nid))
        g: int | None = None
        born: int | None = None
        if alive:
            g = int(gen[living_order[lpos]])
            born = int(pop.birth[living_order[lpos]])
        elif bpos < bkeys.size and int(bkeys[bpos]) == nid:
            g = int(births[border[bpos], 4])
            born = int(births[border[bpos], 5])
        elif nid < pop.n0:
            g, born = 0, 0
        dyn.append({"id": nid, "descendants": int(count[i]), "children": int(children[i]),
                    "generation": g, "birth_step": born, "alive": alive})
    out["dynasties"] = dyn
    # evolutionary fitness (descendants) against instant fitness
    living: dict[str, Any] = {
        "compared": f"descendants vs {pop.fitness_name} of the living that lived through "
                    "at least one evolution round (born before the newest round)",
        "n": 0, "spearman": None}
    if pop.fitness is not None and last_round is not None:
        at_last = births[births[:, 5] == last_round, 1]
        first_new = int(at_last.min()) if at_last.size else None
        eligible = pop.birth < last_round
        if first_new is not None:
            eligible |= (pop.birth == last_round) & (pop.ids < first_new)
        else:
            eligible |= pop.birth == last_round
        living["n"] = int(np.count_nonzero(eligible))
        living["spearman"] = spearman(living_desc[eligible], pop.fitness[eligible])
    dead_desc, _ = _lookup(nodes, count, deaths[:, 1], 0)
    out["fitness_vs_descendants"] = {
        "living": living,
        "dead": {"compared": "descendants vs fitness at death (evo/death_fitness) of the dead",
                 "n": int(deaths.shape[0]),
                 "spearman": (spearman(dead_desc, death_fit)
                              if death_fit.size == deaths.shape[0] else None)},
    }
    return out


def lineage_report(state: Arrays, *, top: int = 10) -> dict[str, Any]:
    """Lineage of an agent's fabric neurons and tile hidden units (no agent is built).

    Parameters
    ----------
    state : dict of str to ndarray
        An agent state dict (:meth:`lillith.agents.agent.Agent.get_state`);
        reads ``evo/births`` int64 (B, 6) ``[kind, id, parent0, parent1,
        generation, step]``, ``evo/deaths`` int64 (D, 3) ``[kind, id, step]``,
        ``evo/death_fitness`` float32 (D,), ``evo/counters`` int64 (4,), the
        living fabric neurons' ``fabric/neuron_id``, ``parent_ids`` (n, 2),
        ``generation``, ``birth_step``, ``fitness``, ``next_id`` and the tile
        units' ``tiles/lineage_*`` (T, H[, 2]) and ``tiles/unit_importance``.
    top : int
        Dynasties listed per kind.

    Returns
    -------
    dict
        ``available`` False and a ``reason`` when the state has no evolution
        data; else ``step``, ``rounds``, ``every``, ``next_due``,
        ``last_round_step`` (None before the first round), ``problems`` (all
        kinds' consistency problems, empty when fine) and per kind
        (``fabric``, ``tiles``; those present): ``population``,
        ``generations`` (``histogram`` of the living by generation, ``max``,
        ``mean``), ``births``, ``deaths``, ``turnover`` (births / population),
        ``births_per_1000_steps``, ``originals_replaced`` (fraction of the
        original ids no longer alive), ``dynasties`` (``id``, ``descendants``,
        ``children``, ``generation``, ``birth_step``, ``alive``; most
        descendants first), ``fitness_vs_descendants`` (``living`` and
        ``dead``: ``compared``, ``n``, ``spearman``) and ``problems``.
        JSON-serialisable.

    Notes
    -----
    Descendants count every recorded birth reachable through either parent
    (see :func:`descendants`). Tile units have no stored fitness: their
    fitness is derived from ``unit_importance`` normalised by its tile's
    maximum, which equals the unit fitness with the default fitness weights
    (importance only) and is comparable within a tile only. The checks: ids
    unique among the living, recorded at most once as born and as dead, the
    dead not alive; every id below the next id to be issued; every parent id
    (of a living or recorded neuron) issued before the child (smaller id);
    the living agreeing with their birth records; generation 0 without
    parents and ``1 + max(parent generations)`` where every parent's
    generation is known (living, recorded, or original: generation 0).
    """
    if "evo/births" not in state or "evo/counters" not in state:
        return {"available": False,
                "reason": "no evolution data in this snapshot (evolution.every was 0)"}
    meta = Agent.meta_of(state)
    every = int(meta.get("config", {}).get("evolution", {}).get("every", 0))
    births = _i64(state["evo/births"], -1, 6)
    deaths = _i64(state["evo/deaths"], -1, 3)
    dfit = np.asarray(state.get("evo/death_fitness", np.zeros(0)), dtype=np.float64).reshape(-1)
    counters = _i64(state["evo/counters"], -1)
    steps = int(np.asarray(state["agent/counters"]).reshape(-1)[0])
    last = _last_round_step(counters, every)
    out: dict[str, Any] = {"available": True, "step": steps, "rounds": int(counters[1]),
                           "every": every, "next_due": int(counters[0]),
                           "last_round_step": last, "problems": []}
    if dfit.size != deaths.shape[0]:
        out["problems"].append(f"evo/death_fitness has {dfit.size} entries for "
                               f"{deaths.shape[0]} deaths")
    for kind, pop in _populations(state, meta).items():
        code = KINDS.index(kind)
        b, dsel = births[births[:, 0] == code], deaths[:, 0] == code
        d = deaths[dsel]
        df = dfit[dsel] if dfit.size == deaths.shape[0] else np.zeros(0)
        rep = _kind_report(kind, pop, b, d, df, steps, last, top)
        rep["problems"] = _consistency(kind, pop, b, d)
        out["problems"].extend(rep["problems"])
        out[kind] = rep
    unknown = np.setdiff1d(np.concatenate([births[:, 0], deaths[:, 0]]),
                           np.arange(len(KINDS)))
    if unknown.size:
        out["problems"].append(f"unknown kinds in evo/births or evo/deaths: {unknown.tolist()}")
    return out


# ---------------------------------------------------------------- specialization
def _cosine_pairs(units: npt.NDArray[np.float64], threshold: float, top: int,
                  block_elems: int = 1 << 22
                  ) -> tuple[int, npt.NDArray[np.bool_], list[tuple[float, int, int]]]:
    """Pairs ``i < j`` of unit rows with ``units[i] @ units[j] >= threshold``, blockwise.

    Parameters
    ----------
    units : ndarray of float64, shape (m, d)
        Unit-norm rows.
    threshold : float
    top : int
        Best pairs returned.
    block_elems : int
        Similarities computed at once (a block of rows times all later rows).

    Returns
    -------
    count : int
        Number of pairs at or above the threshold.
    in_pair : ndarray of bool, shape (m,)
        Rows in at least one such pair.
    best : list of (cosine, i, j)
        The ``top`` most similar such pairs, most similar first.
    """
    m = units.shape[0]
    in_pair = np.zeros(m, dtype=bool)
    best: list[tuple[float, int, int]] = []
    count = 0
    bs = max(1, block_elems // max(m, 1))
    for s in range(0, m, bs):
        e = min(m, s + bs)
        sim = units[s:e] @ units[s:].T  # (e - s, m - s); column jj is row s + jj
        r = np.arange(e - s)
        sim[np.arange(m - s)[None, :] <= r[:, None]] = -np.inf  # keep j > i only
        hit = sim >= threshold
        k = int(np.count_nonzero(hit))
        if not k:
            continue
        count += k
        in_pair[s:e] |= hit.any(axis=1)
        in_pair[s:] |= hit.any(axis=0)
        flat = sim.reshape(-1)
        kk = min(top, k)
        if kk <= 0:
            continue
        idx = np.argpartition(-flat, kk - 1)[:kk]
        for f in idx.tolist():
            i, jj = divmod(f, m - s)
            best.append((float(flat[f]), s + i, s + jj))
        best = sorted(best, key=lambda t: (-t[0], t[1], t[2]))[:top]
    return count, in_pair, best


def specialization_report(state: Arrays, threshold: float = 0.98, top: int = 20, *,
                          per_neuron: bool = False) -> dict[str, Any]:
    """What drives each fabric neuron, and which neurons are near-duplicates.

    Parameters
    ----------
    state : dict of str to ndarray
        An agent state dict; reads ``evo/profile`` float32 (R + C, n): rows
        0..R-1 the EMA of each neuron's activation while the SOM's
        best-matching unit lies in map region r, rows R.. the EMA of
        activation x normalised input c (C = ``n_channels`` of the metadata);
        and the living neurons' ``fabric/neuron_id`` (n,) and lineage.
    threshold : float
        Cosine similarity from which two profiles count as redundant.
    top : int
        Most similar pairs listed.
    per_neuron : bool
        Add ``neurons``: one entry per living neuron.

    Returns
    -------
    dict
        ``available`` False and a ``reason`` without a profile; else
        ``regions`` (R), ``channels`` (C), ``neurons_total``, ``measured``
        (neurons with a non-zero profile; all-zero ones are unmeasured and
        left out below), ``region_preference`` (R,) and
        ``channel_preference`` (C,): how many neurons prefer each map region
        (argmax over the region rows) and each channel (argmax of
        ``|profile|`` over the channel rows), ``preferred_counts``: label
        (``"region:r"`` / ``"channel:c"``, the argmax of ``|profile|`` over
        all rows) to count, and ``redundancy``: ``threshold``, ``pairs``
        (pairs of living neurons with cosine >= threshold), ``neurons_in_pairs``,
        ``fraction`` (of the measured neurons in at least one pair) and
        ``top_pairs`` (``a``, ``b`` ids, ``cosine``, ``kin``: ``"parent-child"``,
        ``"siblings"`` or None). With ``per_neuron``: ``neurons``, each ``id``,
        ``generation``, ``parents``, ``birth_step``, ``fitness``, ``preferred``,
        ``preferred_region``, ``preferred_channel`` (None when unmeasured).
        JSON-serialisable.

    Notes
    -----
    The similarities are computed in blocks of rows, never as an n x n
    matrix. A preserving split copies its parent's profile, so a parent and
    a child born in the newest round are exact duplicates until their
    activity diverges; ``kin`` marks such pairs.
    """
    if "evo/profile" not in state or "fabric/neuron_id" not in state:
        return {"available": False,
                "reason": "no specialization profile in this snapshot "
                          "(evolution off or no fabric)"}
    meta = Agent.meta_of(state)
    prof = np.asarray(state["evo/profile"], dtype=np.float64)
    C = int(meta["n_channels"])
    R = prof.shape[0] - C
    pop = _populations(state, meta)["fabric"]
    n = prof.shape[1]
    if n == 0 or n != pop.ids.size or R < 0:
        return {"available": False,
                "reason": f"profile shape {list(prof.shape)} does not match "
                          f"{pop.ids.size} neurons and {C} channels"}
    P = np.ascontiguousarray(prof.T)  # (n, R + C)
    measured = np.any(P != 0.0, axis=1)
    pref = np.where(measured, np.argmax(np.abs(P), axis=1), -1)
    pref_region = (np.where(measured, np.argmax(P[:, :R], axis=1), -1) if R
                   else np.full(n, -1))
    pref_channel = (np.where(measured, np.argmax(np.abs(P[:, R:]), axis=1), -1) if C
                    else np.full(n, -1))

    def label(k: int) -> str | None:
        if k < 0:
            return None
        return f"region:{k}" if k < R else f"channel:{k - R}"

    labels, counts = np.unique(pref[measured], return_counts=True)
    out: dict[str, Any] = {
        "available": True, "regions": R, "channels": C, "neurons_total": n,
        "measured": int(measured.sum()),
        "region_preference": np.bincount(pref_region[measured & (pref_region >= 0)],
                                         minlength=R).astype(int).tolist(),
        "channel_preference": np.bincount(pref_channel[measured & (pref_channel >= 0)],
                                          minlength=C).astype(int).tolist(),
        "preferred_counts": {label(int(k)): int(c) for k, c in zip(labels, counts,
                                                                   strict=True)},
    }
    rows = np.flatnonzero(measured)
    U = P[rows]
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    n_pairs, in_pair, best = _cosine_pairs(U, float(threshold), int(top))
    parents = {int(i): (int(a), int(b)) for i, (a, b) in zip(pop.ids, pop.parents, strict=True)}

    def kin(a: int, b: int) -> str | None:
        pa, pb = parents.get(a, (-1, -1)), parents.get(b, (-1, -1))
        if a in pb or b in pa:
            return "parent-child"
        if {p for p in pa if p >= 0} & {p for p in pb if p >= 0}:
            return "siblings"
        return None

    pairs = []
    for cos, i, j in best:
        a, b = int(pop.ids[rows[i]]), int(pop.ids[rows[j]])
        pairs.append({"a": a, "b": b, "cosine": min(cos, 1.0), "kin": kin(a, b)})
    m = int(rows.size)
    out["redundancy"] = {"threshold": float(threshold), "pairs": int(n_pairs),
                         "neurons_in_pairs": int(in_pair.sum()),
                         "fraction": float(in_pair.sum() / m) if m else 0.0,
                         "top_pairs": pairs}
    if per_neuron:
        fit = pop.fitness
        out["neurons"] = [
            {"id": int(pop.ids[s]), "generation": int(pop.generation[s]),
             "parents": [int(p) for p in pop.parents[s]], "birth_step": int(pop.birth[s]),
             "fitness": (float(fit[s]) if fit is not None and math.isfinite(fit[s]) else None),
             "preferred": label(int(pref[s])),
             "preferred_region": int(pref_region[s]) if pref_region[s] >= 0 else None,
             "preferred_channel": int(pref_channel[s]) if pref_channel[s] >= 0 else None}
            for s in range(n)]
    return out


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def render_lineage(lineage: dict[str, Any] | None,
                   specialization: dict[str, Any] | None = None) -> str:
    """Human-readable form of :func:`lineage_report` and :func:`specialization_report`."""
    if lineage is None:
        return "lineage: no intact snapshot to read"
    if not lineage.get("available"):
        return f"lineage: {lineage.get('reason', 'not available')}"
    newest = ("none yet" if lineage["last_round_step"] is None
              else f"newest at step {lineage['last_round_step']}")
    lines = [f"lineage at step {lineage['step']}: {lineage['rounds']} evolution rounds "
             f"(every {lineage['every']}, {newest}, next due {lineage['next_due']})"]
    for kind in KINDS:
        k = lineage.get(kind)
        if k is None:
            continue
        g = k["generations"]
        lines.append(f"  {kind}: {k['population']} living, generations max {g['max']} "
                     f"mean {g['mean']:.2f}, histogram {g['histogram']}")
        lines.append(f"    births {k['births']}, deaths {k['deaths']}, turnover "
                     f"{_fmt(k['turnover'])} of the population, "
                     f"{_fmt(k['births_per_1000_steps'], '.2f')} births / 1000 steps, "
                     f"originals replaced {_fmt(k['originals_replaced'])}")
        if k["dynasties"]:
            lines.append("    dynasties (most descendants):")
            for d in k["dynasties"]:
                lines.append(f"      id {d['id']:>8}  descendants {d['descendants']:>6}  "
                             f"children {d['children']:>4}  generation {d['generation']}  "
                             f"{'alive' if d['alive'] else 'dead'}")
        for which in ("living", "dead"):
            c = k["fitness_vs_descendants"][which]
            lines.append(f"    Spearman {_fmt(c['spearman'], '+.3f')} over {c['n']}: "
                         f"{c['compared']}")
    problems = lineage.get("problems", [])
    lines.append("  consistency: " + ("ok" if not problems else f"{len(problems)} problems"))
    lines.extend(f"    {p}" for p in problems)
    s = specialization
    if s is None:
        return "\n".join(lines)
    if not s.get("available"):
        lines.append(f"specialization: {s.get('reason', 'not available')}")
        return "\n".join(lines)
    lines.append(f"specialization: {s['measured']} of {s['neurons_total']} neurons measured, "
                 f"{s['regions']} SOM regions, {s['channels']} channels")
    lines.append(f"  preferred region (neurons): {s['region_preference']}")
    lines.append(f"  preferred channel (neurons): {s['channel_preference']}")
    r = s["redundancy"]
    lines.append(f"  redundancy (cosine >= {r['threshold']}): {r['pairs']} pairs, "
                 f"{r['neurons_in_pairs']} neurons ({r['fraction']:.1%} of the measured)")
    for p in r["top_pairs"]:
        lines.append(f"    {p['a']:>8} ~ {p['b']:<8} cosine {p['cosine']:.4f}"
                     + (f"  ({p['kin']})" if p["kin"] else ""))
    if "neurons" in s:
        lines.append(f"  {'id':>8} {'gen':>4} {'parents':>17} {'born':>8} {'fitness':>10}"
                     "  preferred")
        for nr in s["neurons"]:
            par = "/".join(str(p) for p in nr["parents"])
            lines.append(f"  {nr['id']:>8} {nr['generation']:>4} {par:>17} "
                         f"{nr['birth_step']:>8} {_fmt(nr['fitness'], '10.3g')}  "
                         f"{nr['preferred']}")
    return "\n".join(lines)
