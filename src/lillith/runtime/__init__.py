"""lillith.runtime: what runs agents: the CLI, the MQTT daemon, local runs and replays,
their configuration, resume, snapshots' cadence, inspection, logging and metrics."""
