"""lillith.sensors (see ../shared/DESIGN.md)."""
