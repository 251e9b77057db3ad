"""lillith.state: crash-safe zarr snapshots of flat array dicts, and the state
directory's lock (see docs/snapshots.md). Knows nothing of agents."""

from lillith.state.snapshot import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Loaded,
    SnapshotInfo,
    SnapshotStore,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Loaded", "SnapshotInfo", "SnapshotStore"]
