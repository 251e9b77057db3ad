"""lillith.state (see ../shared/DESIGN.md)."""
