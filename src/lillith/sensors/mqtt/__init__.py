"""lillith.sensors.mqtt: the daemon's MQTT links (docs/mqtt.md).

- :mod:`.settings` the broker connection (:class:`MqttSettings`) and TLS
- :mod:`.messages` :class:`Incoming` messages, the :class:`LastWill`, :class:`MqttError`
- :mod:`.wire` the MQTT 3.1.1 / 5 packets the native link sends and reads
- :mod:`.native_link` lillith's own asyncio client, the default
- :mod:`.paho_link` paho-mqtt's client, the full-protocol fallback
- :mod:`.connect` :func:`open_link`, the configured one
- :mod:`.topics` :func:`topic_matches`, subscription filters
"""

from lillith.sensors.mqtt.connect import Link, open_link
from lillith.sensors.mqtt.messages import Incoming, LastWill, LinkError, MqttError
from lillith.sensors.mqtt.native_link import NativeLink
from lillith.sensors.mqtt.paho_link import PahoLink
from lillith.sensors.mqtt.settings import MqttSettings, plaintext_credentials
from lillith.sensors.mqtt.topics import topic_matches

__all__ = ["Incoming", "LastWill", "Link", "LinkError", "MqttError", "MqttSettings",
           "NativeLink", "PahoLink", "open_link", "plaintext_credentials", "topic_matches"]
