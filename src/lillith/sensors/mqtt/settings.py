"""Broker connection settings of the MQTT links, and the TLS context they imply."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MqttSettings(BaseModel):
    """Broker connection (one client per daemon)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = "lillith"
    protocol: Literal[5, 311] = 5
    qos: Literal[0, 1] = 1
    persistent_session: bool = True
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    """TLS with the system's trusted CAs (implied by any of the ``tls_*`` files)."""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    plaintext_credentials: Literal["warn", "refuse"] = "warn"
    """A password without TLS: logged as a warning, or refused at start."""
    keepalive: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    client: Literal["native", "paho"] = "native"
    """The link: lillith's own (``native``), or paho-mqtt's (``paho``, the fallback)."""
    receive_maximum: int = Field(64, ge=1, le=65535)

    @property
    def uses_tls(self) -> bool:
        """TLS is on: ``tls``, or any of ``tls_ca``, ``tls_cert``, ``tls_key``."""
        return self.tls or any(p is not None for p in (self.tls_ca, self.tls_cert,
                                                        self.tls_key))

    @model_validator(mode="after")
    def _no_refused_plaintext(self) -> MqttSettings:
        if self.plaintext_credentials == "refuse" and plaintext_credentials(self):
            raise ValueError("a password without TLS is refused (plaintext_credentials = "
                             "'refuse'): set tls = true or tls_ca")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert (the client certificate)")
        return self


def plaintext_credentials(s: MqttSettings) -> bool:
    """Would a password go over the network unencrypted?"""
    return s.password is not None and not s.uses_tls


def tls_context(s: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context of the settings, or None (plaintext).

    TLS is on when ``tls`` is set or any of ``tls_ca``, ``tls_cert``,
    ``tls_key`` is: the broker's certificate is verified against ``tls_ca``,
    or the system's trust store without it (a client certificate alone never
    means plaintext); ``tls_cert`` / ``tls_key`` are the client's own.
    """
    if not s.uses_tls:
        return None
    ctx = ssl.create_default_context(cafile=None if s.tls_ca is None else str(s.tls_ca))
    if s.tls_cert is not None:
        ctx.load_cert_chain(str(s.tls_cert), None if s.tls_key is None else str(s.tls_key))
    return ctx
