"""MQTT (paho, MQTT v5): a message per decision and, optionally, ejection commands.

Topics under `topic`: /decisions (JSON per item), /eject (commands, if `commands`),
/availability ("online", retained; the broker publishes the retained Last Will "offline"
when the daemon dies). Username/password (the password from its own file) and TLS.

An eject command is only worth its validity window (`command_valid_ms`), so:
- it carries `valid_until` and an MQTT v5 message expiry (whole seconds, at least 1), so a
  broker never hands it to a subscriber later than that;
- nothing is queued while disconnected: messages are dropped and counted;
- every command must be acknowledged by the broker within `command_ack_ms`. If one is not
  (a link that went silent: a cable, a switch, a NAT table), the driver reports unhealthy at
  once and throws the whole session away (socket reset, in-flight messages dropped) and
  connects afresh, so paho can never re-send a stale command after the link comes back.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict

from edge.config import MqttActuatorConfig
from edge.deps import require
from edge.errors import ConfigError
from edge.plant.base import Actuator
from edge.secrets import read_secret

log = logging.getLogger(__name__)
WATCH_S = 0.02   # how often unacknowledged commands are checked


class MqttActuator(Actuator):
    name = "mqtt"

    def __init__(self, cfg: MqttActuatorConfig, max_pulse_s: float):
        super().__init__(max_pulse_s)
        self.mqtt = require("paho.mqtt.client", "plant")
        self.cfg, self.dropped, self.unacknowledged = cfg, 0, 0
        self.password = read_secret(cfg.password_file, "actuators: mqtt password_file") if cfg.password_file else None
        if cfg.tls and cfg.ca_file and not Path(cfg.ca_file).is_file():
            raise ConfigError(f"actuators: mqtt ca_file {cfg.ca_file} does not exist (the broker's CA "
                              f"certificate, PEM; leave it empty to use the system's CAs)")
        self.availability = f"{cfg.topic}/availability"
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._awaiting: Dict[int, float] = {}   # mid of an eject command -> monotonic deadline for its PUBACK
        self._early_acks: "OrderedDict[int, bool]" = OrderedDict()
        self._stop = threading.Event()
        self.client = None
        self._open_session()
        self._connected.wait(cfg.timeout_s * 4)
        self._watch = threading.Thread(target=self._watch_acks, name="mqtt-acks", daemon=True)
        self._watch.start()

    # -- session ---------------------------------------------------------------------------
    def _open_session(self) -> None:
        """A new client as self.client, set before it connects: its callbacks run on paho's
        thread and may come before connect_async returns."""
        mqtt, cfg = self.mqtt, self.cfg
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scrapsort-{os.getpid()}",
                             protocol=mqtt.MQTTv5)
        if cfg.username:
            client.username_pw_set(cfg.username, self.password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_file or None)
        client.will_set(self.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect, client.on_disconnect, client.on_publish = self._on_connect, self._on_disconnect, self._on_ack
        self.client = client
        client.connect_async(cfg.host, cfg.port or (8883 if cfg.tls else 1883), keepalive=cfg.keepalive_s,
                             clean_start=True)
        client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if client is not self.client:
            return
        if reason.is_failure:
            log.error("mqtt: broker %s refused the connection: %s", self.cfg.host, reason)
            return
        self._connected.set()
        client.publish(self.availability, "online", qos=1, retain=True)
        log.info("mqtt: connected to %s", self.cfg.host)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if client is not self.client:
            return
        if self._connected.is_set():
            log.warning("mqtt: disconnected from %s (%s); messages dropped until it is back", self.cfg.host, reason)
        self._connected.clear()

    def _on_ack(self, client, userdata, mid, reason, properties) -> None:
        # paho calls this holding its own lock: never call into paho while holding self._lock.
        with self._lock:
            if self._awaiting.pop(mid, None) is None:  # acknowledged before _command registered it
                self._early_acks[mid] = True
                while len(self._early_acks) > 256:
                    self._early_acks.popitem(last=False)

    def _watch_acks(self) -> None:
        while not self._stop.wait(WATCH_S):
            now = time.monotonic()
            with self._lock:
                late = [mid for mid, deadline in self._awaiting.items() if deadline < now]
            if late:
                self.unacknowledged += len(late)
                log.error("mqtt: %d eject command(s) not acknowledged within %.0f ms: link to %s presumed dead; "
                          "session dropped, nothing will be re-sent", len(late), self.cfg.command_ack_ms, self.cfg.host)
                self._replace_session()

    def _replace_session(self) -> None:
        """Forget the session and everything in flight in it; connect afresh."""
        self._connected.clear()
        old = self.client
        with self._lock:
            self._awaiting.clear()
            self._early_acks.clear()
        self._open_session()
        _reset(old)

    @property
    def fires(self) -> bool:
        return self.cfg.commands

    def healthy(self) -> bool:
        return self._connected.is_set()

    # -- messages --------------------------------------------------------------------------
    def _publish(self, topic: str, payload: dict, expiry_s: int = 0):
        if not self._connected.is_set():
            self.dropped += 1
            return None
        properties = None
        if expiry_s:
            properties = self.mqtt.Properties(self.mqtt.PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = expiry_s
        return self.client.publish(f"{self.cfg.topic}/{topic}", json.dumps(payload), qos=self.cfg.qos,
                                   properties=properties)

    def decision(self, row: dict) -> None:
        self._publish("decisions", {k: row[k] for k in ("item_id", "class", "confidence", "bin", "reason",
                                                        "t_wall", "latency_ms")})

    def pulse(self, output: int, width_s: float, item_id: str = "") -> float:
        started = time.monotonic()
        if self.cfg.commands:
            width = min(width_s, self.max_pulse_s)
            self._command({"item_id": item_id, "output": output, "width_ms": round(width * 1000, 1)})
        return started

    def pulse_valves(self, outputs, width_s: float, item_id: str = "") -> float:
        """One command listing every valve of the bank: the receiver opens them together."""
        if len(outputs) == 1:
            return self.pulse(outputs[0], width_s, item_id)
        started = time.monotonic()
        if self.cfg.commands:
            width = min(width_s, self.max_pulse_s)
            self._command({"item_id": item_id, "outputs": list(outputs), "width_ms": round(width * 1000, 1)})
        return started

    def _command(self, command: dict) -> None:
        valid_s = self.cfg.command_valid_ms / 1000
        now = time.time()
        info = self._publish("eject", {**command, "t_wall": now, "valid_until": now + valid_s},
                             expiry_s=max(1, math.ceil(valid_s)))
        if info is None:
            raise IOError(f"mqtt: eject command for output {command.get('output', command.get('outputs'))} not sent "
                          "(broker link down)")
        if self.cfg.qos > 0:
            with self._lock:
                if self._early_acks.pop(info.mid, None) is None:
                    self._awaiting[info.mid] = time.monotonic() + self.cfg.command_ack_ms / 1000

    def all_off(self) -> None:
        if self.cfg.commands:
            self._command({"all_off": True})

    def close(self) -> None:
        self._stop.set()
        self._watch.join(timeout=1)
        super().close()
        if self._connected.is_set():
            self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


def _reset(client) -> None:
    """Close a session's socket with a reset, so the kernel does not keep delivering its unsent bytes."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    client.loop_stop()
    try:
        if isinstance(sock, socket.socket):
            sock.close()
    except OSError:
        pass
