"""lillith.runtime: configuration, logging, CLI and (later) the asyncio daemon."""
