"""A small non-blocking MQTT 3.1.1 client for asyncio, in the spirit of Peter Hinch's mqtt_as.

One task (`run`) owns the connection and walks one state machine, forever:

    DOWN -> WIFI (wlan up) -> CONNECTING (TCP + CONNECT/CONNACK) -> UP (serve) -> DOWN ...

Any error on the way (OSError, a timeout, a protocol violation) closes the socket and goes back
to DOWN after a backoff that doubles from `backoff_min_ms` to `backoff_max_ms` (with a little
jitter) and resets on a good CONNACK. Nothing raises out of `run`.

Publishing never blocks and never waits for the network: `publish` copies the message once,
into a preallocated slot where the whole PUBLISH packet is built, and returns False if no slot
is free. The task writes queued slots in order. A QoS 1 slot stays in flight until its PUBACK;
after a reconnect every slot still in flight is sent again with the DUP flag (MQTT 3.1.1
4.4). clean_session is False, so the broker keeps our subscription and what it owes us.

The last will (retained, on `will_topic`) is cleared on every connect by publishing an empty
retained message there, so a retained "offline" never outlives the outage it reports.

Sockets are usocket-style (non-blocking `write`/`readinto`); WiFi is `network.WLAN`. On the
board they are the real modules; in the HIL VM, stand-ins from hil/vboard.
"""

import asyncio
import socket
import time

import network

DOWN = 0
WIFI = 1
CONNECTING = 2
UP = 3

_FREE = 0
_QUEUED = 1  # waiting to be written
_INFLIGHT = 2  # QoS 1, written, waiting for its PUBACK

_BUSY = (11, 115, 119, 110)  # EAGAIN, EINPROGRESS (Linux, lwIP), ETIMEDOUT
_POLL_MS = 5


class MQTTError(OSError):
    pass


def _put_str(buf, i: int, s) -> int:
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2:i + 2 + n] = s
    return i + 2 + n


def _put_len(buf, i: int, n: int) -> int:
    while True:
        b = n & 0x7F
        n >>= 7
        buf[i] = b | (0x80 if n else 0)
        i += 1
        if not n:
            return i


def _len_size(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


class MQTTClient:
    def __init__(self, client_id, server: str, port: int = 1883, keepalive_s: int = 60,
                 ssid: str = "", password: str = "", will_topic=None, will_msg=b"offline",
                 sub_topic=None, on_msg=None, on_connect=None, slots: int = 8,
                 slot_payload_max: int = 2048, topic_max: int = 64, rx_max: int = 4096,
                 response_ms: int = 10_000, backoff_min_ms: int = 250,
                 backoff_max_ms: int = 30_000, wifi_ms: int = 20_000) -> None:
        self.client_id = client_id
        self.server = server
        self.port = port
        self.keepalive_ms = keepalive_s * 1000
        self.ssid = ssid
        self.password = password
        self.will_topic = will_topic
        self.will_msg = will_msg
        self.sub_topic = sub_topic
        self.on_msg = on_msg  # on_msg(topic memoryview, payload memoryview, retained)
        self.on_connect = on_connect  # on_connect(): after CONNACK, resends and SUBSCRIBE
        self.response_ms = response_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.wifi_ms = wifi_ms
        self.state = DOWN
        self.running = True
        self.wlan = None
        self.sock = None
        # outgoing: one PUBLISH packet per slot, built in place
        self.slot_max = 5 + 2 + topic_max + 2 + slot_payload_max
        self.slot_buf = [bytearray(self.slot_max) for _ in range(slots)]
        self.slot_len = [0] * slots
        self.slot_state = bytearray(slots)
        self.slot_order = [0] * slots  # enqueue counter: written oldest first
        self.slot_pid = [0] * slots
        self.order = 0
        self.pid = 0
        self.ctl = bytearray(4)  # PUBACK, PINGREQ, DISCONNECT
        self.acks = [0] * 8  # PUBACKs owed to the broker
        self.n_acks = 0
        self.acks_dropped = 0
        # incoming: one packet at a time
        self.rx = bytearray(rx_max)
        self.rx_mv = memoryview(self.rx)
        self.rx_len = 0
        self.skip = 0  # bytes left of a packet too long for rx, being discarded
        self.last_tx_ms = 0
        self.last_rx_ms = 0
        self.ping_out = False
        self.connack = -1
        self.suback = False
        # counters
        self.connects = 0
        self.conn_failures = 0
        self.retransmits = 0
        self.pings = 0
        self.oversize = 0
        self.last_error = None
        self.backoff_ms = backoff_min_ms

    # -- publishing (any task) -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == UP

    def free_slots(self) -> int:
        return sum(1 for s in self.slot_state if s == _FREE)

    def pending(self) -> int:
        return len(self.slot_state) - self.free_slots()

    def publish(self, topic, buf, n: int = -1, qos: int = 1, retain: bool = False) -> bool:
        """Queue buf[:n] on topic (bytes). False if no slot is free or it is too long."""
        if n < 0:
            n = len(buf)
        states = self.slot_state
        i = 0
        while i < len(states) and states[i] != _FREE:
            i += 1
        rem = 2 + len(topic) + (2 if qos else 0) + n
        if i == len(states) or 1 + _len_size(rem) + rem > self.slot_max:
            return False
        b = self.slot_buf[i]
        b[0] = 0x30 | (qos << 1) | (1 if retain else 0)
        j = _put_str(b, _put_len(b, 1, rem), topic)
        if qos:
            pid = self._next_pid()
            self.slot_pid[i] = pid
            b[j] = pid >> 8
            b[j + 1] = pid & 0xFF
            j += 2
        else:
            self.slot_pid[i] = 0
        if n:
            b[j:j + n] = memoryview(buf)[:n]  # the one copy of the payload
        self.slot_len[i] = j + n
        self.order += 1
        self.slot_order[i] = self.order
        states[i] = _QUEUED
        return True

    def _next_pid(self) -> int:
        while True:
            self.pid = self.pid % 65535 + 1
            for k in range(len(self.slot_state)):
                if self.slot_state[k] != _FREE and self.slot_pid[k] == self.pid:
                    break
            else:
                return self.pid

    # -- the connection task ---------------------------------------------------------------

    async def run(self) -> None:
        while self.running:
            try:
                await self._wifi_up()
                await self._connect()
                self.backoff_ms = self.backoff_min_ms
                await self._serve()
            except Exception as e:  # never raise out of the run loop
                self.last_error = e
            self._close()
            self.state = DOWN
            if not self.running:
                break
            self.conn_failures += 1
            await asyncio.sleep_ms(self.backoff_ms + (time.ticks_ms() & 0x3F))
            self.backoff_ms = min(2 * self.backoff_ms, self.backoff_max_ms)

    async def stop(self) -> None:
        """Disconnect cleanly (no last will) and end run()."""
        self.running = False
        if self.state == UP:
            try:
                self.ctl[0] = 0xE0
                self.ctl[1] = 0
                await self._write(self.ctl, 2)
            except Exception:
                pass
        self._close()
        self.state = DOWN

    async def _wifi_up(self) -> None:
        self.state = WIFI
        if self.wlan is None:
            self.wlan = network.WLAN(network.STA_IF)
        wlan = self.wlan
        if wlan.isconnected():
            return
        wlan.active(True)
        wlan.connect(self.ssid, self.password)
        t0 = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) > self.wifi_ms:
                wlan.disconnect()
                raise MQTTError(116)  # ETIMEDOUT-ish: no WiFi
            await asyncio.sleep_ms(100)

    async def _connect(self) -> None:
        self.state = CONNECTING
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        s = socket.socket()
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError as e:
            if e.args[0] not in _BUSY:
                raise
        self.rx_len = 0
        self.skip = 0
        self.n_acks = 0
        self.connack = -1
        self.suback = False
        self.ping_out = False
        await self._send_connect()
        self.last_rx_ms = time.ticks_ms()
        t0 = self.last_rx_ms
        while self.connack < 0:
            if not self._read_some():
                await asyncio.sleep_ms(_POLL_MS)
            if time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                raise MQTTError(110)
        if self.connack:
            raise MQTTError(self.connack + 1000)  # refused: 1001..1005
        for i in range(len(self.slot_state)):  # MQTT-4.4.0-1: resend unacknowledged
            if self.slot_state[i] == _INFLIGHT:
                self.slot_buf[i][0] |= 0x08  # DUP
                self.slot_state[i] = _QUEUED
                self.retransmits += 1
        if self.will_topic is not None:
            self.publish(self.will_topic, b"", 0, 1, True)  # clear the retained will
        if self.sub_topic is not None:
            await self._subscribe(self.sub_topic)
        self.state = UP  # only now: the birth (on_connect) goes before anything else
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect()

    async def _send_connect(self) -> None:
        cid = self.client_id
        wt = self.will_topic
        rem = 10 + 2 + len(cid)
        flags = 0x00  # clean session False
        if wt is not None:
            rem += 2 + len(wt) + 2 + len(self.will_msg)
            flags |= 0x04 | (1 << 3) | 0x20  # will, QoS 1, retained
        b = bytearray(1 + _len_size(rem) + rem)
        b[0] = 0x10
        i = _put_str(b, _put_len(b, 1, rem), b"MQTT")
        b[i] = 4  # protocol level 3.1.1
        b[i + 1] = flags
        ka = self.keepalive_ms // 1000
        b[i + 2] = ka >> 8
        b[i + 3] = ka & 0xFF
        i = _put_str(b, i + 4, cid)
        if wt is not None:
            i = _put_str(b, _put_str(b, i, wt), self.will_msg)
        await self._write(b, i)

    async def _subscribe(self, topic) -> None:
        rem = 2 + 2 + len(topic) + 1
        b = bytearray(1 + _len_size(rem) + rem)
        b[0] = 0x82
        i = _put_len(b, 1, rem)
        pid = self._next_pid()
        b[i] = pid >> 8
        b[i + 1] = pid & 0xFF
        i = _put_str(b, i + 2, topic)
        b[i] = 1  # QoS 1
        await self._write(b, i + 1)
        t0 = time.ticks_ms()
        while not self.suback:
            if not self._read_some():
                await asyncio.sleep_ms(_POLL_MS)
            if time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                raise MQTTError(110)

    async def _serve(self) -> None:
        wlan = self.wlan
        while self.running:
            if wlan is not None and not wlan.isconnected():
                raise MQTTError(113)  # EHOSTUNREACH: WiFi lost
            await self._flush()
            got = self._read_some()
            now = time.ticks_ms()
            if self.ping_out and time.ticks_diff(now, self.last_rx_ms) > self.response_ms:
                raise MQTTError(110)  # no PINGRESP: the broker or the path is gone
            if not self.ping_out and time.ticks_diff(now, self.last_tx_ms) >= \
                    self.keepalive_ms // 2:
                self.ctl[0] = 0xC0
                self.ctl[1] = 0
                await self._write(self.ctl, 2)
                self.pings += 1
                self.ping_out = True
                self.last_rx_ms = now  # the PINGRESP clock starts now
            if not got:
                await asyncio.sleep_ms(_POLL_MS)

    async def _flush(self) -> None:
        """Write owed PUBACKs, then queued slots, oldest first."""
        c = self.ctl
        while self.n_acks:
            pid = self.acks[0]
            c[0] = 0x40
            c[1] = 2
            c[2] = pid >> 8
            c[3] = pid & 0xFF
            await self._write(c, 4)
            self.n_acks -= 1
            for k in range(self.n_acks):
                self.acks[k] = self.acks[k + 1]
        states = self.slot_state
        while self.state == UP:
            best = -1
            for i in range(len(states)):
                if states[i] == _QUEUED and (best < 0 or
                                             self.slot_order[i] < self.slot_order[best]):
                    best = i
            if best < 0:
                return
            await self._write(self.slot_buf[best], self.slot_len[best])
            states[best] = _INFLIGHT if self.slot_pid[best] else _FREE

    # -- socket I/O --------------------------------------------------------------------------

    async def _write(self, buf, n: int) -> None:
        mv = memoryview(buf)
        off = 0
        t0 = time.ticks_ms()
        while off < n:
            sock = self.sock
            if sock is None:
                raise MQTTError(9)  # EBADF: closed under us
            try:
                m = sock.write(mv[off:n])
            except OSError as e:
                if e.args[0] not in _BUSY:
                    raise
                m = None
            if m:
                off += m
                t0 = time.ticks_ms()
            elif time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                raise MQTTError(110)
            else:
                await asyncio.sleep_ms(_POLL_MS)
        self.last_tx_ms = time.ticks_ms()

    def _read_some(self) -> bool:
        """Read what has arrived and handle each complete packet. True if anything came."""
        sock = self.sock
        if sock is None:
            raise MQTTError(9)
        got = False
        while True:
            if self.skip:
                free = self.rx_mv[:min(self.skip, len(self.rx))]
            else:
                free = self.rx_mv[self.rx_len:]
            try:
                m = sock.readinto(free)
            except OSError as e:
                if e.args[0] not in _BUSY:
                    raise
                m = None
            if m is None:
                break
            if m == 0:
                raise MQTTError(104)  # ECONNRESET: the broker closed the connection
            got = True
            self.last_rx_ms = time.ticks_ms()
            if self.skip:
                self.skip -= m
                continue
            self.rx_len += m
            self._parse()
        return got

    def _parse(self) -> None:
        rx = self.rx
        while self.rx_len >= 2:
            rem = 0
            shift = 0
            i = 1
            while True:
                if i >= self.rx_len:
                    return  # length not complete yet
                b = rx[i]
                rem |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
                if i > 4:
                    raise MQTTError(71)  # EPROTO: bad remaining length
            total = i + rem
            if total > len(rx):  # longer than anything we accept: drop it
                self.oversize += 1
                self.skip = total - self.rx_len
                self.rx_len = 0
                return
            if self.rx_len < total:
                return
            self._handle(rx[0], i, rem)
            left = self.rx_len - total
            if left:
                rx[0:left] = self.rx_mv[total:self.rx_len]
            self.rx_len = left

    def _handle(self, h: int, i: int, rem: int) -> None:
        rx = self.rx
        kind = h & 0xF0
        if kind == 0x30:  # PUBLISH
            tl = (rx[i] << 8) | rx[i + 1]
            topic = self.rx_mv[i + 2:i + 2 + tl]
            j = i + 2 + tl
            qos = (h >> 1) & 3
            pid = 0
            if qos:
                pid = (rx[j] << 8) | rx[j + 1]
                j += 2
            if self.on_msg is not None:
                self.on_msg(topic, self.rx_mv[j:i + rem], h & 1)
            if qos:  # PUBACK, written by _flush; QoS 2 never comes: we subscribe at QoS 1
                if self.n_acks < len(self.acks):
                    self.acks[self.n_acks] = pid
                    self.n_acks += 1
                else:
                    self.acks_dropped += 1  # unacknowledged: the broker sends it again
        elif kind == 0x40:  # PUBACK
            pid = (rx[i] << 8) | rx[i + 1]
            for k in range(len(self.slot_state)):
                if self.slot_state[k] == _INFLIGHT and self.slot_pid[k] == pid:
                    self.slot_state[k] = _FREE
        elif kind == 0x20:  # CONNACK
            self.connack = rx[i + 1]
        elif kind == 0x90:  # SUBACK
            if rx[i + 2] == 0x80:
                raise MQTTError(1080)  # subscription refused
            self.suback = True
        elif kind == 0xD0:  # PINGRESP
            self.ping_out = False

    def _close(self) -> None:
        s = self.sock
        self.sock = None
        if s is not None:
            try:
                s.close()
            except Exception:
                pass
