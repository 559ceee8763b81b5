"""MQTT (paho): a message per decision and, optionally, ejection commands.

Topics under `topic`: /decisions (JSON per item), /eject (commands with a valid_until
time, if `commands`), /availability ("online", retained; the broker publishes the retained
Last Will "offline" when the daemon dies). Username/password (the password from its own
file) and TLS supported. While disconnected nothing is queued: messages are dropped and
counted, so nothing stale is delivered after a reconnect.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from edge.plant.base import Actuator
from edge.config import MqttActuatorConfig
from edge.deps import require
from edge.errors import ConfigError
from edge.secrets import read_secret

log = logging.getLogger(__name__)


class MqttActuator(Actuator):
    name = "mqtt"

    def __init__(self, cfg: MqttActuatorConfig, max_pulse_s: float):
        super().__init__(max_pulse_s)
        mqtt = require("paho.mqtt.client", "plant")
        self.cfg, self.dropped = cfg, 0
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scrapsort-{os.getpid()}",
                                  clean_session=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, read_secret(cfg.password_file, 'actuators: mqtt password_file') if cfg.password_file else None)
        if cfg.tls:
            if cfg.ca_file and not Path(cfg.ca_file).is_file():
                raise ConfigError(f"actuators: mqtt ca_file {cfg.ca_file} does not exist (the broker's CA "
                                  f"certificate, PEM; leave it empty to use the system's CAs)")
            self.client.tls_set(ca_certs=cfg.ca_file or None)
        self.availability = f"{cfg.topic}/availability"
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(cfg.host, cfg.port or (8883 if cfg.tls else 1883), keepalive=10)
        self.client.loop_start()
        self._connected.wait(cfg.timeout_s * 4)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("mqtt: broker %s refused the connection: %s", self.cfg.host, reason)
            return
        self._connected.set()
        client.publish(self.availability, "online", qos=1, retain=True)
        log.info("mqtt: connected to %s", self.cfg.host)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self._connected.is_set():
            log.warning("mqtt: disconnected from %s (%s); messages dropped until it is back", self.cfg.host, reason)
        self._connected.clear()

    @property
    def fires(self) -> bool:
        return self.cfg.commands

    def healthy(self) -> bool:
        return self._connected.is_set()

    def _publish(self, topic: str, payload: dict) -> bool:
        if not self._connected.is_set():
            self.dropped += 1
            return False
        self.client.publish(f"{self.cfg.topic}/{topic}", json.dumps(payload), qos=self.cfg.qos)
        return True

    def decision(self, row: dict) -> None:
        self._publish("decisions", {k: row[k] for k in ("item_id", "class", "confidence", "bin", "reason",
                                                        "t_wall", "latency_ms")})

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        started = time.monotonic()
        if self.cfg.commands:
            width = min(width_s, self.max_pulse_s)
            self._publish("eject", {"item_id": item_id, "output": output, "width_ms": round(width * 1000, 1),
                                    "t_wall": time.time(), "valid_until": time.time() + 0.05})
        return started

    def all_off(self) -> None:
        if self.cfg.commands:
            self._publish("eject", {"all_off": True, "t_wall": time.time()})

    def close(self) -> None:
        self.all_off()
        if self._connected.is_set():
            self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
