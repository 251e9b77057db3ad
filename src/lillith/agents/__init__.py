"""lillith.agents (see ../shared/DESIGN.md)."""
