"""`socket` for the virtual board: usocket's client side over a real TCP connection.

The VM has no sockets, so each socket here is a handle on a Node `net.Socket` that
hil/mpvm.mjs keeps for us (`globalThis.mpvmNet`, reached through `import js`). Bytes cross the
JS boundary as hex strings: the port converts str both ways but hands bytes over only as
proxies. Node does the I/O between our sleeps, so as on the board nothing moves unless the
program returns to the event loop (`await asyncio.sleep_ms(>=1)`).

Behaves like lwIP's non-blocking sockets on the ESP32: connect() raises EINPROGRESS, write()
returns None (or raises EAGAIN) until the connection is up, readinto() returns None when
nothing has arrived and 0 at end of stream, and a refused or reset connection raises OSError
with its errno on the next call. Blocking mode waits in a busy loop, which Node cannot serve:
use non-blocking sockets.

`network.WLAN` (hil/vboard/network.py) gates new connections: with WiFi down, connect fails
with EHOSTUNREACH.

In a time-compressed VM, connections to a port listed in `time_sync` (port -> "mqtt" or
"cobs") get host time syncs rewritten to the VM's clock (hil/mpvm.mjs, timeSync), with the
frame layout in `time_sync_spec` (JSON); on ports in `round_trips` an MQTT request holds the
compressed clock until the answer comes (mpvmNet.roundTrips). The virtual board's launcher
sets all three.
"""

import binascii
import sys

import js

AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 4

EAGAIN = 11
EINPROGRESS = 115
ENOTCONN = 128
EBADF = 9
EHOSTUNREACH = 113
ECONNRESET = 104

_net = js.mpvmNet
time_sync = {}  # port -> framing, for mpvmNet.timeSync
time_sync_spec = None
round_trips = set()  # ports whose MQTT requests hold a compressed clock (mpvmNet.roundTrips)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (host, port))]


class socket:  # usocket's name
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=IPPROTO_TCP) -> None:
        self.id = 0
        self.blocking = True

    def setblocking(self, flag) -> None:
        self.blocking = bool(flag)

    def settimeout(self, t) -> None:
        self.blocking = t is None or t > 0

    def setsockopt(self, level, opt, value) -> None:
        pass

    def connect(self, addr) -> None:
        import network

        if self.id:
            raise OSError(EBADF)
        if not network.wifi_up():
            raise OSError(EHOSTUNREACH)
        self.id = _net.connect(addr[0], addr[1])
        framing = time_sync.get(addr[1])
        if framing is not None and time_sync_spec is not None:
            _net.timeSync(self.id, framing, time_sync_spec)
        if addr[1] in round_trips:
            _net.roundTrips(self.id)
        if not self.blocking:
            raise OSError(EINPROGRESS)
        raise OSError(EINPROGRESS)  # no blocking connect here: see the module docstring

    def _check(self) -> int:
        """0 while connecting, 1 when open; raises once the connection has failed."""
        if not self.id:
            raise OSError(ENOTCONN)
        err = _net.error(self.id)
        if err:
            raise OSError(err)
        return _net.state(self.id)

    def write(self, buf, n=None):
        state = self._check()
        if state == 2:  # the peer closed: lwIP reports ECONNRESET here, not "try again"
            raise OSError(ECONNRESET)
        if state != 1:
            return None
        mv = memoryview(buf)
        if n is not None:
            mv = mv[:n]
        if not len(mv):
            return 0
        return _net.write(self.id, binascii.hexlify(mv).decode())

    send = write

    def readinto(self, buf, nbytes=None):
        max_n = len(buf) if nbytes is None else min(nbytes, len(buf))
        state = self._check()
        if state == 0:
            return None
        got = _net.read(self.id, max_n)
        if got is None:
            return 0 if state == 2 else None  # 2: closed, everything read
        data = binascii.unhexlify(got)
        n = len(data)
        buf[:n] = data
        return n

    def recv(self, n):
        buf = bytearray(n)
        got = self.readinto(buf)
        if got is None:
            raise OSError(EAGAIN)
        return bytes(buf[:got])

    def close(self) -> None:
        if self.id:
            _net.close(self.id)
            self.id = 0

    def abort(self) -> None:
        """Test hook: drop the connection with a TCP reset, as a board losing power would
        leave the broker to find out by itself (here, at once)."""
        if self.id:
            _net.reset(self.id)
            self.id = 0


sys.modules.setdefault("socket", sys.modules[__name__])
sys.modules.setdefault("usocket", sys.modules[__name__])
