"""The MQTT broker as a frame source (paho-mqtt 2, MQTT v5), and the way back to its boards.

- A persistent session (clean start off, a session expiry): while the daemon is down the
  broker queues the boards' QoS 1 frames for it.
- Manual acknowledgement: paho's network thread only queues a message; its PUBACK is sent by
  the processor after the frame is committed. Receive Maximum bounds how many unacknowledged
  messages the broker sends us, so the queue cannot be flooded from here.
- A PUBACK goes out only on the connection the message came on: after a reconnect a packet id
  may name another message, and the broker re-sends the old one anyway (then a duplicate,
  acknowledged without being stored twice).
- Subscriptions use No Local, so the daemon never receives the alarm messages it publishes.

Topics are packsentry/<site>/<board_id>/<leaf>; `birth`, `data` and `status` carry frames, and
a bare "offline" on `status` is a board's last will.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import MqttConfig
from .pipeline import Inbound
from .storage import now_ms

log = logging.getLogger("packsentry.mqtt")

FRAME_LEAVES = ("birth", "data", "status")


class MqttSource:
    def __init__(self, cfg: MqttConfig, put: Callable[[Inbound], None]) -> None:
        self.cfg = cfg
        self.name = "mqtt"
        self.put = put
        self.connected = threading.Event()
        self.generation = 0  # counts connections: a PUBACK belongs to one
        self.received = 0
        self.on_connected: Callable[[], None] | None = None  # e.g. re-publish retained state
        u = urlsplit(cfg.url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(cfg.tls_insecure)
        password = cfg.password
        if cfg.password_file:
            password = Path(cfg.password_file).read_text().strip()
        if cfg.username or u.username:
            c.username_pw_set(cfg.username or u.username, password or u.password)
        c.reconnect_delay_set(0.5, 15)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(self.host, self.port, self.cfg.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.generation += 1
        opts = SubscribeOptions(qos=1, noLocal=True)
        client.subscribe([(t, opts) for t in self.cfg.topics])
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()
        log.info("connected to %s:%d (session %s)", self.host, self.port,
                 "resumed" if flags.session_present else "new")

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:
        if self.connected.is_set():
            log.warning("lost the broker %s:%d (%s); reconnecting", self.host, self.port, reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        rx = now_ms()
        parts = msg.topic.split("/")
        gen = self.generation
        mid, qos = msg.mid, msg.qos

        def puback() -> None:
            if qos and gen == self.generation:
                client.ack(mid, qos)

        if len(parts) != 4 or parts[3] not in FRAME_LEAVES:
            puback()  # not ours to store; the subscription filter let it through
            return
        site, board, leaf = parts[1], parts[2], parts[3]
        payload = bytes(msg.payload)
        if not payload:  # a retained message being cleared (the board's will, on connect)
            puback()
            return
        if leaf == "status" and payload == b"offline":
            if board.isdigit():
                self.put(Inbound(b"", rx, self.name, site, link=self, on_stored=puback,
                                 offline_board=int(board)))
            else:
                puback()
            return
        self.put(Inbound(payload, rx, self.name, site, link=self, on_stored=puback))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def send_command(self, board_id: int, site: str, frame: bytes) -> bool:
        info = self.client.publish(f"packsentry/{site}/{board_id}/cmd", frame, qos=1)
        return info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
