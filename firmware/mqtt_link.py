"""The board's link over MQTT: one frame per message on packsentry/<site>/<board_id>/<leaf>.

    birth   births, retained (a subscriber arriving later still learns what the board is)
    data    samples, batches and alarm frames, QoS 1 (all stored and acknowledged alike)
    status  status frames and command acks, QoS 1; the last will "offline" (retained) lands
            here when the board vanishes, and is cleared again on every connect
    cmd     host -> board: bare frames, handed to Board.handle_command by poll()

What is guaranteed: a frame sent while the link is UP is queued (copied once) and published
with QoS 1; if the connection breaks before its PUBACK, it is sent again with DUP after the
reconnect, so the broker gets it at least once. A frame sent while the link is down, or while
every slot is in use, is dropped and counted (`dropped`): the store (store.py) keeps samples,
batches and alarms until the host acknowledges them, and re-sends them when the host syncs the
clock again, so nothing the host must see is lost for good.

`on_connect` is called after every (re)connect, once the cmd subscription stands: set it to
the board's send_birth.
"""

import wire
from mqtt import MQTTClient

_LEAF = {wire.MSG_BIRTH: b"birth", wire.MSG_SAMPLE: b"data", wire.MSG_BATCH: b"data",
         wire.MSG_ALARM: b"data", wire.MSG_STATUS: b"status", wire.MSG_CMD_ACK: b"status"}


class MqttLink:
    kind = wire.LINK_MQTT

    def __init__(self, cfg, board_id: int, frame_max: int = 2048, slots: int = 8,
                 inbox: int = 2, **client_kw) -> None:
        base = ("packsentry/%s/%d/" % (cfg["site"], board_id)).encode()
        self.topics = {t: base + leaf for t, leaf in _LEAF.items()}
        self.cmd_topic = base + b"cmd"
        self.on_connect = None
        self.client = MQTTClient(
            ("packsentry-%08x" % board_id).encode(), cfg["link.broker"], cfg["link.port"],
            cfg["link.keepalive_s"], cfg["link.wifi_ssid"], cfg["link.wifi_password"],
            will_topic=self.topics[wire.MSG_STATUS], will_msg=b"offline",
            sub_topic=self.cmd_topic, on_msg=self._on_msg, on_connect=self._connected,
            slots=slots, slot_payload_max=frame_max, topic_max=len(base) + 8,
            rx_max=2 * frame_max + 8 + len(base), **client_kw)
        # commands received, waiting for poll(): preallocated, copied once from the rx buffer
        self.inbox = [bytearray(2 * frame_max) for _ in range(inbox)]
        self.inbox_len = [0] * inbox
        self.inbox_head = 0
        self.inbox_count = 0
        self.sent = 0
        self.dropped = 0  # frames not queued: link down or every slot busy
        self.cmd_dropped = 0  # commands not taken: inbox full or too long

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def run(self) -> None:
        """Keep the connection (WiFi and broker) up; never returns while running, never raises."""
        await self.client.run()

    async def stop(self) -> None:
        await self.client.stop()

    def send(self, buf, n: int) -> bool:
        """Publish one frame; False (and counted) if the link is down or every slot is busy."""
        t = buf[wire.HEADER_OFF_MSG_TYPE]
        topic = self.topics.get(t)
        if topic is None or not self.client.connected or \
                not self.client.publish(topic, buf, n, 1, t == wire.MSG_BIRTH):
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def poll(self, handle) -> None:
        """Hand each command received since the last poll to handle(memoryview of the frame)."""
        while self.inbox_count:
            i = self.inbox_head
            self.inbox_head = (i + 1) % len(self.inbox)
            self.inbox_count -= 1
            handle(memoryview(self.inbox[i])[:self.inbox_len[i]])

    def _on_msg(self, topic, payload, retained) -> None:
        n = len(payload)
        if self.inbox_count == len(self.inbox) or n > len(self.inbox[0]) or \
                bytes(topic) != self.cmd_topic:
            self.cmd_dropped += 1
            return
        i = (self.inbox_head + self.inbox_count) % len(self.inbox)
        self.inbox[i][:n] = payload
        self.inbox_len[i] = n
        self.inbox_count += 1

    def _connected(self) -> None:
        if self.on_connect is not None:
            self.on_connect()
