"""Crash-safe zarr v3 snapshots of a state: a flat dict of named numpy arrays.

Layout (see docs/snapshots.md)::

    STATE/
      LATEST                                  name of the newest complete snapshot
      snapshots/
        000000012345-20261123T191500123456Z/  one zarr v3 group per snapshot
          zarr.json                           attributes["lillith"]: schema, step,
                                              time, library versions, JSON metadata,
                                              and the index (dtype, shape, CRC-32
                                              of every array)
          packed/                             uint8: the small arrays, concatenated
          fabric.w/ ...                       each large array as its own zarr array
        .tmp-<name>-<pid>/                    a snapshot being written (never loaded)

A snapshot is written into a temporary group, every file and directory is
fsynced, the group is renamed to its final name, and ``LATEST`` is replaced
atomically (write, fsync, rename, fsync the directory). A crash at any
instant leaves ``LATEST`` naming a complete snapshot. Loading verifies the
CRC-32 of every array and falls back to the newest good snapshot.

No pickle anywhere: arrays are zarr arrays, metadata is JSON.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import re
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import structlog
import zarr
import zarr.api.asynchronous as za

from lillith.errors import StateError
from lillith.state.backends import Backend, FsspecBackend, LocalBackend

SCHEMA_VERSION = 2
"""Current snapshot schema. v1: one zarr array per key in nested groups, no
part-filled micro-batch; v2: small arrays packed, micro-batch saved."""

PACK_LIMIT = 64 * 1024
"""Arrays smaller than this many bytes go into the shared ``packed`` array."""

JSON_KEYS = ("agent/meta",)
"""State keys holding UTF-8 JSON bytes: stored as JSON attributes, not arrays."""

_NAME_RE = re.compile(r"^(\d{12})-(\d{8}T\d{12}Z)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_PACKED = "packed"

FREE_MARGIN = 1 << 20
"""Bytes a snapshot leaves free on a local disk: a write that would leave
less is refused before it starts."""

log = structlog.get_logger(component="snapshot")

Arrays = dict[str, npt.NDArray[Any]]
T = TypeVar("T")


@dataclass(frozen=True)
class SnapshotInfo:
    """What is known of one snapshot.

    Attributes
    ----------
    name : str
        Directory name, ``<step:012d>-<utc>``.
    step : int
        Agent step (frames processed) when the snapshot was taken.
    utc : str
        Time of the snapshot, ISO 8601, UTC.
    bytes : int
        Size on storage (all files of the group).
    ok : bool or None
        Integrity: ``True`` verified, ``False`` broken, ``None`` not checked.
    problems : list of str
        What is wrong when ``ok`` is ``False``.
    schema_version : int
        0 when the attributes could not be read.
    seq : int
        Sequence number of the snapshot in this state directory.
    """

    name: str
    step: int
    utc: str
    bytes: int
    ok: bool | None = None
    problems: list[str] = field(default_factory=list)
    schema_version: int = 0
    seq: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``lillith inspect --json`` entries)."""
        return {"name": self.name, "step": self.step, "utc": self.utc, "bytes": self.bytes,
                "ok": self.ok, "problems": list(self.problems),
                "schema_version": self.schema_version, "seq": self.seq}


@dataclass
class Loaded:
    """A loaded snapshot: the state dict, its info, and the snapshots skipped."""

    state: Arrays
    info: SnapshotInfo
    skipped: list[SnapshotInfo]


# ----------------------------------------------------------------------------- backends
def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code (any thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["e"] = e

    th = threading.Thread(target=target, name="lillith-snapshot-sync")
    th.start()
    th.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


def crc32(arr: npt.NDArray[Any]) -> int:
    """CRC-32 (zlib) of an array's bytes in C order."""
    a = np.asarray(arr)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    return zlib.crc32(a.reshape(-1).view(np.uint8).data) & 0xFFFFFFFF


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the state (recorded in every snapshot)."""
    out = {"python": sys.version.split()[0]}
    for lib in ("lillith", "numpy", "zarr", "torch", "numba"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "unknown"
    return out


def _array_name(key: str) -> str:
    return key.replace("/", ".")


def _utc_stamp(t: float) -> tuple[str, str]:
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y%m%dT%H%M%S%fZ"), dt.isoformat()


# ----------------------------------------------------------------------------- migrations
def _migrate_1_to_2(arrays: Arrays, attrs: dict[str, Any]) -> tuple[Arrays, dict[str, Any]]:
    """v1 snapshots were taken at micro-batch boundaries only: no pending batch."""
    meta = attrs.get("json", {}).get("agent/meta", {})
    feat_dim = int(arrays["agent/prev_feat"].shape[0]) if "agent/prev_feat" in arrays else 0
    if feat_dim == 0 and "predictor/proj.weight" in arrays:
        feat_dim = int(arrays["predictor/proj.weight"].shape[1])
    n_ch = int(meta.get("n_channels", arrays["agent/hist"].shape[1]))
    arrays["agent/pending_feats"] = np.zeros((0, feat_dim), dtype=np.float32)
    arrays["agent/pending_lasts"] = np.zeros((0, n_ch), dtype=np.float32)
    arrays["agent/pending_targets"] = np.zeros((0, n_ch), dtype=np.float32)
    arrays["agent/batch"] = np.array([1.0, 1.0], dtype=np.float64)
    attrs["schema_version"] = 2
    return arrays, attrs


MIGRATIONS: dict[int, Callable[[Arrays, dict[str, Any]], tuple[Arrays, dict[str, Any]]]] = {
    1: _migrate_1_to_2,
}
"""Migration hook: ``MIGRATIONS[v]`` turns a version-``v`` snapshot into ``v + 1``."""


# ----------------------------------------------------------------------------- the store
class SnapshotStore:
    """Snapshots of one agent under a state directory (local path or fsspec URL).

    Parameters
    ----------
    root : str
        ``STATE``: a local directory, or an fsspec URL such as
        ``memory://lillith`` or ``s3://bucket/prefix``.
    keep_last : int, default 5
        Retention: keep the newest ``keep_last`` snapshots (>= 1).
    keep_every : int, default 0
        Also keep every ``keep_every``-th snapshot (by sequence number); 0: none.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep_last: int = 5,
                 keep_every: int = 0, storage_options: dict[str, Any] | None = None) -> None:
        if keep_last < 1:
            raise StateError("keep_last must be >= 1", keep_last=keep_last)
        if keep_every < 0:
            raise StateError("keep_every must be >= 0", keep_every=keep_every)
        root_s = os.fspath(root)
        self.root = root_s
        self.keep_last = int(keep_last)
        self.keep_every = int(keep_every)
        self._backend: Backend
        if "://" in root_s and not root_s.startswith("file://"):
            self._backend = FsspecBackend(root_s, storage_options)
            self._root = self._backend.root
        else:
            self._backend = LocalBackend()
            self._root = root_s.removeprefix("file://")
        self._snapdir = self._backend.join(self._root, "snapshots")
        self._latest = self._backend.join(self._root, "LATEST")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ listing
    def latest_name(self) -> str | None:
        """Name in ``LATEST``, or None when there is none."""
        b = self._backend
        if not b.exists(self._latest):
            return None
        name = b.read_text(self._latest).strip()
        return name or None

    def latest_problem(self) -> str | None:
        """What is wrong with ``LATEST``, or None: empty, or naming a snapshot
        that is not there (a missing ``LATEST`` is not a problem: a crash
        between a first snapshot's rename and ``LATEST`` leaves none, and
        loading then takes the newest snapshot)."""
        b = self._backend
        if not b.exists(self._latest):
            return None
        try:
            name = b.read_text(self._latest).strip()
        except (OSError, UnicodeDecodeError) as e:
            return f"LATEST unreadable: {e}"
        if not name:
            return "LATEST is empty"
        if name not in self.names():
            return f"LATEST names {name!r}, which is not a snapshot here"
        return None

    def names(self) -> list[str]:
        """Complete snapshot names, oldest first by time taken (temporaries excluded).

        Time, not step, orders them: after ``--fresh`` a new agent's early
        snapshots are newer than the old agent's late ones.
        """
        names = [n for n in self._backend.listdir(self._snapdir) if _NAME_RE.match(n)]
        return sorted(names, key=lambda n: (n[13:], n[:12]))

    def info(self, name: str) -> SnapshotInfo:
        """Info read from the attributes only (``ok`` is None: not verified)."""
        step, utc = _parse_name(name)
        path = self._backend.join(self._snapdir, name)
        size = self._backend.size(path)
        try:
            attrs = self._read_attrs(path)
        except StateError as e:
            return SnapshotInfo(name, step, utc, size, ok=False, problems=[str(e)])
        return SnapshotInfo(name, int(attrs.get("step", step)), str(attrs.get("utc", utc)),
                            size, schema_version=int(attrs.get("schema_version", 0)),
                            seq=int(attrs.get("seq", 0)))

    def snapshots(self, *, verify: bool = False) -> list[SnapshotInfo]:
        """Every complete snapshot, oldest first; with ``verify`` checks every array."""
        return [self.verify(n) if verify else self.info(n) for n in self.names()]

    # ------------------------------------------------------------------ housekeeping
    def clean_temporaries(self) -> list[str]:
        """Remove what a crash left behind (snapshots half-written, snapshots
        half-deleted by retention, ``LATEST`` temporaries); returns the names
        removed. What cannot be removed is logged (``leftover_remove_failed``)
        and tried again at the next start."""
        b = self._backend
        removed = []
        for n in b.listdir(self._snapdir):
            if n.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                failed = b.remove_tree(b.join(self._snapdir, n))
                if failed:
                    log.warning("leftover_remove_failed", root=self.root, name=n,
                                errors=failed[:5])
                else:
                    removed.append(n)
        for n in b.listdir(self._root):
            if n.startswith("LATEST.tmp"):
                b.remove_tree(b.join(self._root, n))
        return removed

    def apply_retention(self) -> list[str]:
        """Delete snapshots beyond the retention policy; never the one LATEST names.

        Each goes in two steps: an atomic rename to a ``.trash-`` name (it is
        no longer a snapshot from that instant), then the removal of the
        files. A crash or an error in between leaves a ``.trash-`` directory
        (never a half snapshot), logged as ``retention_delete_failed`` and
        removed at the next start (:meth:`clean_temporaries`).
        """
        names = self.names()
        latest = self.latest_name()
        keep = set(names[-self.keep_last:])
        if latest is not None:
            keep.add(latest)
        if self.keep_every:
            for n in names:
                if n not in keep and self.info(n).seq % self.keep_every == 0:
                    keep.add(n)
        removed = [n for n in names if n not in keep]
        b = self._backend
        for n in removed:
            trash = b.join(self._snapdir, f"{_TRASH_PREFIX}{n}")
            try:
                b.rename(b.join(self._snapdir, n), trash)
            except OSError as e:
                log.warning("retention_delete_failed", root=self.root, snapshot=n,
                            errors=[f"rename: {e}"])
                continue
            failed = b.remove_tree(trash)
            if failed:
                log.warning("retention_delete_failed", root=self.root, snapshot=n,
                            leftover=trash, errors=failed[:5])
        return removed

    # ------------------------------------------------------------------ write
    def write(self, state: Arrays, *, step: int) -> SnapshotInfo:
        """Synchronous :meth:`awrite` (for scripts; the daemon awaits ``awrite``)."""
        return _run(self.awrite(state, step=step))

    async def awrite(self, state: Arrays, *, step: int,
                     offload: Callable[..., Awaitable[Any]] | None = None) -> SnapshotInfo:
        """Write ``state`` as a new snapshot, commit it atomically, apply retention.

        The state must not change while this runs (pass a copy taken at a step
        boundary). Checksums, encoding and fsync run in threads, so the
        calling event loop stays responsive.

        Parameters
        ----------
        state : dict of str to ndarray
            The agent's state (``Agent.get_state()``).
        step : int
            Step the state was taken at (frames processed).
        offload : callable, optional
            ``await offload(fn, *args)`` runs blocking work; default
            :func:`asyncio.to_thread`.

        Raises
        ------
        StateError
            The write failed (for instance a full disk); the previous
            snapshot and ``LATEST`` are untouched and the partial one removed.
        """
        run = offload or asyncio.to_thread
        b = self._backend
        now = time.time()
        stamp, iso = _utc_stamp(now)
        name = f"{int(step):012d}-{stamp}"
        tmp = b.join(self._snapdir, f"{_TMP_PREFIX}{name}-{os.getpid()}")
        final = b.join(self._snapdir, name)
        json_attrs: dict[str, Any] = {}
        arrays: Arrays = {}
        for k, v in state.items():
            if k in JSON_KEYS:
                json_attrs[k] = json.loads(bytes(np.asarray(v, dtype=np.uint8)).decode("utf-8"))
            else:
                a = np.asarray(v)
                arrays[k] = a if a.flags.c_contiguous else a.copy(order="C")
        total = sum(a.nbytes for a in arrays.values())
        await run(b.makedirs, self._root)
        await run(b.makedirs, self._snapdir)
        free = await run(b.free_bytes, self._snapdir)
        if free is not None and free < total + FREE_MARGIN:
            raise StateError("not enough free space for a snapshot (its data and a margin)",
                             path=self._snapdir, needed_bytes=total + FREE_MARGIN,
                             data_bytes=total, margin_bytes=FREE_MARGIN, free_bytes=free)
        seq = await run(self._next_seq)
        try:
            # zarr's async API encodes chunks (copies) on the loop that awaits it:
            # give the group its own loop in a thread, so the caller's stays free
            index = await run(self._write_group_sync, tmp, arrays)
            attrs = {"schema_version": SCHEMA_VERSION, "step": int(step), "utc": iso,
                     "created": now, "seq": seq, "libraries": dict(library_versions()),
                     "json": json_attrs, "index": index}
            await run(_run, self._write_attrs(tmp, attrs))
            await run(b.sync_tree, tmp)
            await run(b.rename, tmp, final)
        except OSError as e:
            await run(b.remove_tree, tmp)
            reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise StateError("snapshot write failed", reason=reason, errno=e.errno,
                             path=tmp) from e
        except BaseException:
            await run(b.remove_tree, tmp)
            raise
        try:
            await run(b.write_text_atomic, self._latest, name + "\n")
        except OSError as e:
            # the snapshot is complete; LATEST still names the previous one
            raise StateError("could not update LATEST", reason=e.strerror, errno=e.errno,
                             snapshot=name) from e
        await run(self.apply_retention)
        size = await run(b.size, final)
        return SnapshotInfo(name, int(step), iso, size, ok=True, schema_version=SCHEMA_VERSION,
                            seq=seq)

    def _next_seq(self) -> int:
        names = self.names()
        if not names:
            return 1
        return max(max(self.info(n).seq for n in names), len(names)) + 1

    def _write_group_sync(self, path: str, arrays: Arrays) -> dict[str, Any]:
        return _run(self._write_group(path, arrays, asyncio.to_thread))

    async def _write_group(self, path: str, arrays: Arrays,
                           run: Callable[..., Awaitable[Any]]) -> dict[str, Any]:
        store = self._backend.zarr_store(path, read_only=False)
        group = await za.open_group(store=store, mode="w",
                                    attributes={"lillith": {"complete": False}})
        index: dict[str, Any] = {}
        small = [(k, a) for k, a in arrays.items() if a.nbytes < PACK_LIMIT]
        large = [(k, a) for k, a in arrays.items() if a.nbytes >= PACK_LIMIT]
        names = {_array_name(k) for k, _ in large}
        if len(names) != len(large) or _PACKED in names:
            raise StateError("state keys collide as array names", keys=[k for k, _ in large])

        def pack() -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
            offs: dict[str, Any] = {}
            for k, a in large:
                offs[k] = {"array": _array_name(k), "offset": None, "nbytes": a.nbytes,
                           "dtype": a.dtype.str, "shape": list(a.shape), "crc32": crc32(a)}
            pos = 0
            starts: dict[str, int] = {}
            for k, a in small:
                starts[k] = pos
                pos += (a.nbytes + 7) // 8 * 8
            buf = np.zeros(pos, dtype=np.uint8)
            for k, a in small:
                o = starts[k]
                buf[o:o + a.nbytes] = a.reshape(-1).view(np.uint8)
                offs[k] = {"array": _PACKED, "offset": o, "nbytes": a.nbytes,
                           "dtype": a.dtype.str, "shape": list(a.shape), "crc32": crc32(a)}
            return buf, offs

        packed, entries = await run(pack)
        index.update(entries)

        async def put(name: str, a: npt.NDArray[Any]) -> None:
            arr = await group.create_array(name, shape=a.shape, dtype=a.dtype,
                                           chunks=tuple(max(s, 1) for s in a.shape),
                                           compressors=None, fill_value=0,
                                           config={"write_empty_chunks": True})
            if a.size:
                await arr.setitem(slice(None) if a.ndim else (), a)

        await asyncio.gather(put(_PACKED, packed), *(put(_array_name(k), a) for k, a in large))
        return index

    async def _write_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        store = self._backend.zarr_store(path, read_only=False)
        group = await za.open_group(store=store, mode="r+")
        await group.update_attributes({"lillith": attrs})

    # ------------------------------------------------------------------ read
    def _read_attrs(self, path: str) -> dict[str, Any]:
        try:
            group = zarr.open_group(store=self._backend.zarr_store(path, read_only=True),
                                    mode="r")
            attrs = dict(group.attrs).get("lillith")
        except Exception as e:  # any store/JSON failure means: not a readable snapshot
            raise StateError("snapshot metadata unreadable", path=path,
                             reason=f"{type(e).__name__}: {e}") from e
        if not isinstance(attrs, dict) or "schema_version" not in attrs:
            raise StateError("snapshot metadata incomplete", path=path)
        return attrs

    def _read(self, name: str) -> tuple[Arrays, dict[str, Any], list[str]]:
        """Arrays, attributes and integrity problems of one snapshot (no migration)."""
        path = self._backend.join(self._snapdir, name)
        attrs = self._read_attrs(path)
        group = zarr.open_group(store=self._backend.zarr_store(path, read_only=True), mode="r")
        problems: list[str] = []
        arrays: Arrays = {}
        version = int(attrs["schema_version"])
        if version == 1:
            entries = {k: {"array": k, "offset": None, "crc32": c}
                       for k, c in attrs.get("checksums", {}).items()}
        else:
            entries = attrs.get("index", {})
        packed: npt.NDArray[np.uint8] | None = None
        if any(ent.get("offset") is not None for ent in entries.values()):
            try:
                packed = np.asarray(_array(group, _PACKED), dtype=np.uint8)
            except Exception as e:
                problems.append(f"array {_PACKED!r} unreadable: {type(e).__name__}: {e}")
        for key, ent in entries.items():
            try:
                if ent.get("offset") is not None:
                    if packed is None:
                        continue
                    o, n = int(ent["offset"]), int(ent["nbytes"])
                    if o + n > packed.size:
                        problems.append(f"array {key!r} truncated")
                        continue
                    a = packed[o:o + n].view(np.dtype(ent["dtype"])).reshape(ent["shape"]).copy()
                else:
                    a = _array(group, ent["array"])
                    want = (ent.get("dtype", a.dtype.str), ent.get("shape", list(a.shape)))
                    if (a.dtype.str, list(a.shape)) != want:
                        problems.append(f"array {key!r} has dtype/shape {a.dtype.str}"
                                        f"{list(a.shape)}, expected {ent['dtype']}{ent['shape']}")
                        continue
            except Exception as ex:
                problems.append(f"array {key!r} unreadable: {type(ex).__name__}: {ex}")
                continue
            if crc32(a) != int(ent["crc32"]):
                problems.append(f"array {key!r} checksum mismatch")
                continue
            arrays[key] = a
        return arrays, attrs, problems

    def verify(self, name: str) -> SnapshotInfo:
        """Read every array of a snapshot and check its checksum."""
        base = self.info(name)
        if base.ok is False:
            return base
        try:
            _, _, problems = self._read(name)
        except StateError as e:
            problems = [str(e)]
        return SnapshotInfo(base.name, base.step, base.utc, base.bytes, ok=not problems,
                            problems=problems, schema_version=base.schema_version,
                            seq=base.seq)

    def load(self, name: str | None = None, *, fallback: bool = True) -> Loaded:
        """Load a snapshot, verified and migrated to the current schema.

        Parameters
        ----------
        name : str, optional
            Snapshot to load; default the one ``LATEST`` names (or the newest).
        fallback : bool, default True
            When the snapshot is broken, try the next newest ones.

        Raises
        ------
        StateError
            No snapshot, none intact, or a schema newer than this library's.
        """
        names = self.names()
        first = name or self.latest_name() or (names[-1] if names else None)
        if first is None:
            raise StateError("no snapshot to load", root=self.root)
        order = [first]
        if fallback:
            order += [n for n in reversed(names) if n != first]
        skipped: list[SnapshotInfo] = []
        for n in order:
            info = self.info(n) if n in names else SnapshotInfo(
                n, 0, "", 0, ok=False, problems=["snapshot directory missing"])
            if info.ok is False:
                skipped.append(info)
                continue
            if info.schema_version > SCHEMA_VERSION:
                raise StateError("snapshot schema is newer than this version of lillith",
                                 snapshot=n, found=info.schema_version, supported=SCHEMA_VERSION)
            try:
                arrays, attrs, problems = self._read(n)
            except StateError as e:
                problems, arrays, attrs = [str(e)], {}, {}
            if problems:
                skipped.append(SnapshotInfo(info.name, info.step, info.utc, info.bytes, ok=False,
                                            problems=problems,
                                            schema_version=info.schema_version, seq=info.seq))
                continue
            version = int(attrs["schema_version"])
            while version < SCHEMA_VERSION:
                if version not in MIGRATIONS:
                    raise StateError("no migration for this snapshot schema", snapshot=n,
                                     found=version, supported=SCHEMA_VERSION)
                arrays, attrs = MIGRATIONS[version](arrays, attrs)
                version = int(attrs["schema_version"])
            for k, v in attrs.get("json", {}).items():
                arrays[k] = np.frombuffer(json.dumps(v).encode("utf-8"), dtype=np.uint8).copy()
            ok = SnapshotInfo(info.name, info.step, info.utc, info.bytes, ok=True,
                              schema_version=info.schema_version, seq=info.seq)
            return Loaded(arrays, ok, skipped)
        raise StateError("no intact snapshot", root=self.root,
                         problems={s.name: s.problems for s in skipped})


def _array(group: Any, name: str) -> npt.NDArray[Any]:
    """Whole zarr array ``name`` of ``group`` as numpy."""
    return np.asarray(group[name][...])


def _parse_name(name: str) -> tuple[int, str]:
    m = _NAME_RE.match(name)
    if not m:
        return 0, ""
    dt = datetime.strptime(m.group(2), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    return int(m.group(1)), dt.isoformat()
