"""The board's wall clock: epoch milliseconds as 8 little-endian bytes, never a big int.

Until the host's time sync (or NTP) arrives, time counts from 0 at boot and frames go out
without the time_synced flag. now_into() adds the ticks elapsed since the last anchor to the
anchor's epoch bytes with byte carries; the anchor is moved forward every hour, well inside
the ~12 days after which ticks_diff() wraps.
"""

import time

_REANCHOR_MS = 3_600_000


def add_ms(dst, src, ms: int) -> None:
    """dst = src + ms over 8 little-endian bytes (0 <= ms < 2**30)."""
    carry = ms
    for i in range(8):
        v = src[i] + (carry & 0xFF)
        carry = (carry >> 8) + (v >> 8)
        dst[i] = v & 0xFF


class Clock:
    def __init__(self, ticks_ms=time.ticks_ms, ticks_diff=time.ticks_diff) -> None:
        self._ticks_ms = ticks_ms
        self._ticks_diff = ticks_diff
        self.anchor = bytearray(8)  # epoch ms at anchor_ticks (0 until synchronised)
        self.anchor_ticks = ticks_ms()
        self.synced = False

    def sync(self, unix_ms: int) -> None:
        """Set the time (from a time_sync command or NTP); allocates, but only here."""
        for i in range(8):
            self.anchor[i] = (unix_ms >> (8 * i)) & 0xFF
        self.anchor_ticks = self._ticks_ms()
        self.synced = True

    def now_into(self, out) -> None:
        """Write the current epoch ms into out[0:8]."""
        now = self._ticks_ms()
        elapsed = self._ticks_diff(now, self.anchor_ticks)
        if elapsed >= _REANCHOR_MS:
            add_ms(self.anchor, self.anchor, elapsed)
            self.anchor_ticks = now
            elapsed = 0
        add_ms(out, self.anchor, elapsed)


_UNIX_TO_2000_S = 946_684_800  # seconds from 1970-01-01 to 2000-01-01


def ntp_unix_ms(ntp=None, gmtime=time.gmtime):
    """Unix time in ms from NTP (MicroPython's `ntptime`), or None when it cannot be had.

    Used when WiFi is up and no host has synchronised the clock yet. ntptime.time() counts
    from the port's epoch, 1970 or 2000 depending on the port, hence the check. It blocks up to
    ntptime.timeout (1 s): acceptable once per connection, well inside the watchdog's time.
    """
    if ntp is None:
        try:
            import ntptime as ntp
        except ImportError:
            return None
    try:
        seconds = ntp.time()
    except Exception:  # no route, no answer, DNS failure: the host's time sync will come
        return None
    if gmtime(0)[0] == 2000:
        seconds += _UNIX_TO_2000_S
    return seconds * 1000
