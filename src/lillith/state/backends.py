"""Where snapshots are written: a local directory (fsync, private modes, free
space) or an fsspec store (object stores: no rename, no fsync), behind one
small interface the snapshot store uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from typing import Any

from zarr.storage import FsspecStore, LocalStore

DIR_MODE = 0o700
FILE_MODE = 0o600
"""Snapshots are private to the daemon's user whatever its umask (local stores)."""


class Backend:
    """Directory operations of a store root (local paths or an fsspec URL)."""

    durable = False

    def join(self, *parts: str) -> str:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def read_text(self, path: str) -> str:
        raise NotImplementedError

    def write_text_atomic(self, path: str, text: str) -> None:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def remove_tree(self, path: str) -> list[str]:
        """Remove ``path`` and everything under it; return what could not be
        removed (``"path: error"``), nothing when all went."""
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def zarr_store(self, path: str, *, read_only: bool) -> Any:
        raise NotImplementedError

    def sync_tree(self, path: str) -> None:
        """Make the files under ``path`` durable (no-op where meaningless)."""

    def free_bytes(self, path: str) -> int | None:
        """Free space at ``path``, or None when unknown."""
        return None


class LocalBackend(Backend):
    durable = True

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def write_text_atomic(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, FILE_MODE)  # (an older file of that name kept its mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)
        fsync_dir(os.path.dirname(dst) or ".")

    def remove_tree(self, path: str) -> list[str]:
        failed: list[str] = []

        def onerror(fn: Any, p: str, exc: Any) -> None:
            if not isinstance(exc[1], FileNotFoundError):
                failed.append(f"{p}: {exc[1]}")

        if os.path.lexists(path):
            shutil.rmtree(path, onerror=onerror)
        return failed

    def size(self, path: str) -> int:
        total = 0
        for dirpath, _, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(dirpath, f))
        return total

    def makedirs(self, path: str) -> None:
        if not os.path.isdir(path):
            os.makedirs(path, mode=DIR_MODE, exist_ok=True)
            os.chmod(path, DIR_MODE)  # (the mode given to makedirs is masked by the umask)

    def zarr_store(self, path: str, *, read_only: bool) -> Any:
        return LocalStore(path, read_only=read_only)

    def sync_tree(self, path: str) -> None:
        """fsync every file and directory, making them private (0600 / 0700) on
        the way: zarr creates them by the process's umask."""
        for dirpath, _, files in os.walk(path, topdown=False):
            for f in files:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fchmod(fd, FILE_MODE)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(dirpath, DIR_MODE)
            fsync_dir(dirpath)

    def free_bytes(self, path: str) -> int | None:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None


class FsspecBackend(Backend):
    """Any fsspec filesystem. Object stores have no atomic rename: there the
    commit point is ``LATEST`` (written last) and the checksums."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.protocol = url.split("://", 1)[0]
        self.storage_options = storage_options or {}

    def join(self, *parts: str) -> str:
        return "/".join(p.rstrip("/") for p in parts)

    def listdir(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def read_text(self, path: str) -> str:
        data = self.fs.cat_file(path)
        return bytes(data).decode("utf-8")

    def write_text_atomic(self, path: str, text: str) -> None:
        self.fs.pipe_file(path, text.encode("utf-8"))

    def rename(self, src: str, dst: str) -> None:
        self.fs.mv(src, dst, recursive=True)

    def remove_tree(self, path: str) -> list[str]:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            return [f"{path}: {e}"]
        return []

    def size(self, path: str) -> int:
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def zarr_store(self, path: str, *, read_only: bool) -> Any:
        if self.protocol == "file":
            return LocalStore(path, read_only=read_only)
        return FsspecStore.from_url(f"{self.protocol}://{path.lstrip('/')}",
                                    storage_options=self.storage_options, read_only=read_only)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
