"""lillith.state: crash-safe zarr snapshots of agents (see docs/snapshots.md)."""

from lillith.state.snapshot import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Loaded,
    SnapshotInfo,
    SnapshotStore,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Loaded", "SnapshotInfo", "SnapshotStore"]
