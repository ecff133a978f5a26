"""The MQTT broker as a frame source (paho-mqtt 2, MQTT v5), and the way back to its boards.

- A persistent session (clean start off, a session expiry): while the daemon is down the
  broker queues the boards' QoS 1 frames for it.
- Manual acknowledgement: paho only queues a message; its PUBACK is sent by the processor
  after the frame is committed. Receive Maximum bounds how many unacknowledged messages the
  broker sends us, so the queue cannot be flooded from here.
- A PUBACK goes out only on the connection the message came on: after a reconnect a packet id
  may name another message, and the broker re-sends the old one anyway (then a duplicate,
  acknowledged without being stored twice).
- Subscriptions use No Local, so the daemon never receives the alarm messages it publishes.
- paho runs in a process of its own (`receiver = "process"`, the default): its per-message
  Python work (~45 us) then takes the other core instead of the processor's GIL. Messages
  cross in batches over a pipe, acknowledgements and publishes come back over another; if
  that process dies it is started again (a new connection: the broker re-sends what was not
  acknowledged). `receiver = "thread"` keeps paho in the daemon's process.

Topics are packsentry/<site>/<board_id>/<leaf>; `birth`, `data` and `status` carry frames, and
a bare "offline" on `status` is a board's last will.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import ssl
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import MqttConfig
from .pipeline import Inbound
from .storage import now_ms

log = logging.getLogger("packsentry.mqtt")

FRAME_LEAVES = ("birth", "data", "status")
FLUSH_S = 0.002  # a receiver process hands its messages over at least this often
FLUSH_N = 500  # ... or at this many
RECEIVER_SWITCH_S = 0.0005  # the receiver process's GIL switch interval (see _receiver_main)


# (generation, mid, qos, topic, payload, rx_ms): one received message, as it crosses over
Message = tuple[int, int, int, str, bytes, int]


class _Client:
    """The paho client and its callbacks, wherever it runs. `emit(msg)` gets each message,
    `on_state(connected, generation, session_present)` each connection change."""

    def __init__(self, cfg: MqttConfig, emit: Callable[[Message], None],
                 on_state: Callable[[bool, int, bool], None]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.cfg = cfg
        self.emit = emit
        self.on_state = on_state
        self.generation = 0  # counts connections: a PUBACK belongs to one
        self.connected = False
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
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(self.host, self.port, self.cfg.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, generation: int, mid: int, qos: int) -> None:
        if qos and generation == self.generation:
            self.client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        from paho.mqtt.enums import MQTTErrorCode

        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

    def _on_connect(self, client: Any, _ud: Any, flags: Any, reason: Any, _props: Any) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.generation += 1
        opts = SubscribeOptions(qos=1, noLocal=True)
        client.subscribe([(t, opts) for t in self.cfg.topics])
        self.connected = True
        log.info("connected to %s:%d (session %s)", self.host, self.port,
                 "resumed" if flags.session_present else "new")
        self.on_state(True, self.generation, bool(flags.session_present))

    def _on_disconnect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connected:
            log.warning("lost the broker %s:%d (%s); reconnecting", self.host, self.port, reason)
        self.connected = False
        self.on_state(False, self.generation, False)

    def _on_message(self, _c: Any, _ud: Any, msg: Any) -> None:
        self.emit((self.generation, msg.mid, msg.qos, msg.topic, bytes(msg.payload), now_ms()))


class MqttSource:
    def __init__(self, cfg: MqttConfig, put: Callable[[list[Inbound]], None]) -> None:
        self.cfg = cfg
        self.name = "mqtt"
        self.put = put  # a batch at a time, in order
        self.connected = threading.Event()
        self.generation = 0
        self.received = 0
        self.on_connected: Callable[[], None] | None = None  # e.g. re-publish retained state
        self._client: _Client | None = None  # paho here (receiver "thread")
        self._proc: Any = None  # or in this process (receiver "process")
        self._to_child: Connection | None = None
        self._send_lock = threading.Lock()
        self._acks: list[tuple[int, int, int]] = []
        self._acks_ready = threading.Event()
        self._stopping = threading.Event()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.receiver == "thread":
            self._client = _Client(self.cfg, self._deliver, self._state)
            self._client.start()
            return
        self._spawn()
        threading.Thread(target=self._ack_loop, daemon=True, name="mqtt-acks").start()

    def stop(self) -> None:
        self._stopping.set()
        if self._client is not None:
            self._client.stop()
            return
        self._send(("stop",))
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.terminate()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")  # the daemon has threads: no fork
        from_child, child_out = ctx.Pipe(duplex=False)
        child_in, to_child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_receiver_main,
                                 args=(self.cfg, child_out, child_in,
                                       logging.getLogger().getEffectiveLevel()),
                                 name="packsentry-mqtt", daemon=True)
        self._proc.start()
        child_out.close()
        child_in.close()
        with self._send_lock:
            self._to_child = to_child
        threading.Thread(target=self._read_loop, args=(from_child,), daemon=True,
                         name="mqtt-receiver").start()

    def _read_loop(self, conn: Connection) -> None:
        """Messages and connection news from the receiver process, until it ends."""
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                break
            if item[0] == "msgs":
                self.put([x for msg in item[1] if (x := self._inbound(msg)) is not None])
            elif item[0] == "state":
                self._state(*item[1:])
        conn.close()
        self.connected.clear()
        if not self._stopping.is_set():  # it died: a new one, a new connection
            log.error("the MQTT receiver process ended (exit code %s); starting another",
                      self._proc.exitcode if self._proc is not None else None)
            time.sleep(1.0)
            if not self._stopping.is_set():
                self._spawn()

    def _ack_loop(self) -> None:
        """PUBACKs go to the receiver in batches: the processor commits thousands at once."""
        while not self._stopping.is_set():
            self._acks_ready.wait(0.5)
            self._acks_ready.clear()
            with self._send_lock:
                acks, self._acks = self._acks, []
            if acks:
                self._send(("acks", acks))

    def _send(self, item: tuple[Any, ...]) -> None:
        with self._send_lock:
            if self._to_child is None:
                return
            try:
                self._to_child.send(item)
            except (BrokenPipeError, OSError):
                pass  # the receiver is gone; _read_loop starts another

    # -- messages ------------------------------------------------------------------------------

    def _state(self, connected: bool, generation: int, _session_present: bool) -> None:
        self.generation = generation
        if not connected:
            self.connected.clear()
            return
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _deliver(self, msg: Message) -> None:
        """One message (paho in a thread of this process)."""
        if (item := self._inbound(msg)) is not None:
            self.put([item])

    def _inbound(self, msg: Message) -> Inbound | None:
        """The frame a message carries, to queue (None: nothing to store, acknowledged)."""
        gen, mid, qos, topic, payload, rx = msg
        self.received += 1
        parts = topic.split("/")

        def puback() -> None:
            if not qos:
                return
            if self._client is not None:
                self._client.ack(gen, mid, qos)
            else:
                with self._send_lock:
                    self._acks.append((gen, mid, qos))
                if not self._acks_ready.is_set():  # once per batch: set() takes a lock
                    self._acks_ready.set()

        if len(parts) != 4 or parts[3] not in FRAME_LEAVES:
            puback()  # not ours to store; the subscription filter let it through
            return None
        site, board, leaf = parts[1], parts[2], parts[3]
        if not payload:  # a retained message being cleared (the board's will, on connect)
            puback()
            return None
        if leaf == "status" and payload == b"offline":
            if board.isdigit():
                return Inbound(b"", rx, self.name, site, link=self, on_stored=puback,
                               offline_board=int(board))
            puback()
            return None
        return Inbound(payload, rx, self.name, site, link=self, on_stored=puback)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos, retain)
        else:
            self._send(("publish", topic, payload, qos, retain))

    def send_command(self, board_id: int, site: str, frame: bytes) -> bool:
        topic = f"packsentry/{site}/{board_id}/cmd"
        if self._client is not None:
            return self._client.publish(topic, frame, 1, False)
        self._send(("publish", topic, frame, 1, False))
        return True  # queued for the receiver (as paho queues while disconnected)


def _receiver_main(cfg: MqttConfig, out: Connection, inbox: Connection, log_level: int) -> None:
    """The receiver process: paho, a flusher handing messages over in batches, and the
    parent's acks and publishes. Ends when the parent says stop or goes away."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # its three threads hand the GIL to one another thousands of times a second; at
    # Python's default 5 ms an alarm's publish could wait behind paho's network thread for
    # several intervals (latency bench, alarm p99 in three alternating pairs of runs:
    # 107 / 97 / 136 ms at 5 ms, 97 / 53 / 94 at 0.5 ms)
    sys.setswitchinterval(RECEIVER_SWITCH_S)
    lock = threading.Lock()
    pending: list[Message] = []
    ready = threading.Event()

    def emit(msg: Message) -> None:
        with lock:
            pending.append(msg)
            if len(pending) >= FLUSH_N:
                ready.set()

    def on_state(connected: bool, generation: int, session_present: bool) -> None:
        flush()  # what came on the old connection goes first
        with lock:
            out.send(("state", connected, generation, session_present))

    def flush() -> None:
        nonlocal pending
        with lock:
            batch, pending = pending, []
            if batch:
                out.send(("msgs", batch))

    client = _Client(cfg, emit, on_state)
    stop = threading.Event()

    def flusher() -> None:
        try:
            while not stop.is_set():
                ready.wait(FLUSH_S)
                ready.clear()
                flush()
        except (BrokenPipeError, OSError):
            stop.set()

    threading.Thread(target=flusher, daemon=True).start()
    client.start()
    try:
        while not stop.is_set():
            try:
                item = inbox.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if item[0] == "acks":
                for gen, mid, qos in item[1]:
                    client.ack(gen, mid, qos)
            elif item[0] == "publish":
                client.publish(*item[1:])
            elif item[0] == "stop":
                break
    finally:
        stop.set()
        try:
            flush()
        except (BrokenPipeError, OSError):
            pass
        client.stop()
