"""Error hierarchy: one root, one class per domain, structured fields."""

from __future__ import annotations

from typing import Any


class LillithError(Exception):
    """Root of every error lillith raises on purpose.

    Parameters
    ----------
    message:
        Human-readable description.
    **fields:
        Structured context (shapes, names, limits) kept on ``self.fields`` so
        logs and replies can carry it as key-values.
    """

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.message} ({extra})"


class ConfigError(LillithError):
    """Invalid configuration (bad value, unknown key, inconsistent options).

    With a ``problems`` field (a list of ``{"field": ..., "error": ...}``) the
    message lists one problem per line, ``  field: error``, for people to read.
    """

    def __str__(self) -> str:
        problems = self.fields.get("problems")
        if not isinstance(problems, list) or not problems:
            return super().__str__()
        rest = {k: v for k, v in self.fields.items() if k != "problems"}
        head = LillithError(self.message, **rest).__str__()
        lines = [f"  {p.get('field') or '(top level)'}: {p.get('error')}" if isinstance(p, dict)
                 else f"  {p}" for p in problems]
        return "\n".join([f"{head}:", *lines])


class FabricError(LillithError):
    """Invalid fabric input, state or topology."""


class WiringError(FabricError):
    """Invalid wiring: neuron index out of range, bad polarity, unknown type."""


class AgentError(LillithError):
    """Invalid frame or agent operation."""


class StateError(LillithError):
    """A state dict or snapshot does not match what it is loaded into."""
