"""`network` for the virtual board: a WLAN station whose radio the rig switches.

`set_wifi(False)` takes the access point away: isconnected() turns False at once and new TCP
connections (hil/vboard/socket.py) fail with EHOSTUNREACH until `set_wifi(True)`. A station
that was told to connect() associates `associate_ms` after the later of its connect() and the
AP's return (ESP-IDF keeps retrying in the background too). Open connections are not cut,
just as a real TCP connection outlives a short WiFi drop: the firmware has to notice
isconnected() itself.
"""

import sys
import time

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 1010

_ap = {"up": True, "associate_ms": 50, "since": 0}
log = []  # (event, ssid) the firmware caused: "connect", "disconnect"


def set_wifi(up: bool, associate_ms: int = 50) -> None:
    if up and not _ap["up"]:
        _ap["since"] = time.ticks_ms()
    _ap["up"] = bool(up)
    _ap["associate_ms"] = associate_ms


def wifi_up() -> bool:
    """What socket.connect needs: the AP, and an associated station if there is one."""
    return _ap["up"] and (not WLAN._all or any(w.isconnected() for w in WLAN._all))


class WLAN:
    _all = []  # noqa: RUF012 - every station made, for wifi_up()

    def __init__(self, interface_id=STA_IF) -> None:
        self._active = False
        self._since = None  # ticks_ms of connect(), until disconnect()
        self.ssid = None
        WLAN._all.append(self)

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not is_active:
            self._since = None
        return None

    def connect(self, ssid=None, key=None, **kw) -> None:
        if not self._active:
            raise OSError("STA must be active")
        self.ssid = ssid
        log.append(("connect", ssid))
        self._since = time.ticks_ms()

    def disconnect(self) -> None:
        log.append(("disconnect", self.ssid))
        self._since = None

    def isconnected(self) -> bool:
        if not (_ap["up"] and self._active and self._since is not None):
            return False
        now = time.ticks_ms()
        wait = _ap["associate_ms"]
        return time.ticks_diff(now, self._since) >= wait and \
            time.ticks_diff(now, _ap["since"]) >= wait

    def status(self, param=None):
        if param is not None:
            return None
        if self.isconnected():
            return STAT_GOT_IP
        return STAT_CONNECTING if self._since is not None else STAT_IDLE

    def ifconfig(self, *args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")


sys.modules.setdefault("network", sys.modules[__name__])
