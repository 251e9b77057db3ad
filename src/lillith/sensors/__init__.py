"""lillith.sensors: where frames come from: the MQTT links (:mod:`.mqtt`), the payload
codec and its bounds, per-channel assembly, CSV streams and the synthetic signal."""
