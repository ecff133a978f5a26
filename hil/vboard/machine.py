"""`machine` for the virtual board: the MicroPython VM has no hardware, so this module stands in
for ESP32 peripherals. Sensor values are set by the rig (the pack simulator) through
`inputs`; what the firmware drives (pins, UART bytes, watchdog feeds) is recorded for it.

It runs inside the VM, next to the unchanged firmware. Only what the firmware uses is here.
"""

import sys
import time

# ADC pin -> uV; I2C address -> register-map device; ADC pin -> (select pins, uV per channel)
# for an analog multiplexer (or anything switched by output pins, such as the insulation
# bridge) in front of that pin; input pin -> level (an input with PULL_UP reads 1 otherwise)
inputs = {"adc_uv": {}, "i2c": {}, "mux": {}, "pins": {}}
# wdt_late: feeds that came after the watchdog's timeout (on a board: a reset), and the longest
# stretch without a feed (ms)
outputs = {"pins": {}, "wdt_feeds": 0, "reset": False, "wdt_late": 0, "wdt_max_gap_ms": 0}


class Pin:
    IN = 1
    OUT = 2
    PULL_UP = 1

    def __init__(self, pin_id, mode=IN, pull=None, value=None) -> None:
        self.id = pin_id
        self.pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            level = outputs["pins"].get(self.id)
            if level is None:  # not driven: what is wired to it, or its pull-up
                level = inputs["pins"].get(self.id, 1 if self.pull == Pin.PULL_UP else 0)
            return level
        outputs["pins"][self.id] = 1 if v else 0
        return None

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=ATTN_11DB) -> None:
        self.pin_id = pin.id if isinstance(pin, Pin) else pin

    def read_uv(self) -> int:
        mux = inputs["mux"].get(self.pin_id)
        if mux is not None:
            select, channels_uv = mux
            ch = 0
            pins = outputs["pins"]
            for bit in range(len(select)):  # no enumerate: the stand-in must not allocate
                ch |= pins.get(select[bit], 0) << bit
            return channels_uv[ch] if ch < len(channels_uv) else 0
        return inputs["adc_uv"].get(self.pin_id, 0)


class I2C:
    def __init__(self, bus_id=0, scl=None, sda=None, freq=400_000) -> None:
        pass

    def _dev(self, addr):
        dev = inputs["i2c"].get(addr)
        if dev is None:
            raise OSError(19)  # ENODEV, as a real bus reports a missing chip
        return dev

    def readfrom_mem_into(self, addr, reg, buf) -> None:
        regs = self._dev(addr)
        for i in range(len(buf)):
            buf[i] = regs.get(reg + i, 0)

    def writeto_mem(self, addr, reg, data) -> None:
        regs = self._dev(addr)
        for i in range(len(data)):
            regs[reg + i] = data[i]


class UART:
    """Bytes the firmware writes collect in `tx`; the rig feeds `rx`. Or, with `UART.wire` set
    to a connected (non-blocking) socket, the line runs over it: the virtual board's launcher
    connects it to the rig, which carries it to a pseudo-terminal. No baud rate is modelled."""

    wire = None

    def __init__(self, uart_id=0, baudrate=115_200, **kw) -> None:
        self.tx = bytearray()
        self.rx = bytearray()
        self.sock = UART.wire
        self.chunk = bytearray(256) if self.sock is not None else None
        UART.last = self

    def write(self, buf, off=0, sz=None) -> int:
        end = len(buf) if sz is None else off + sz
        if self.sock is not None:
            try:
                self.sock.write(memoryview(buf)[off:end])  # takes all of it (Node buffers)
            except OSError:
                pass  # the rig's end is gone: bytes into nothing, as on an unplugged line
        else:
            self.tx += buf[off:end]
        return end - off

    def any(self) -> int:
        if self.sock is not None and not self.rx:
            try:
                n = self.sock.readinto(self.chunk)
            except OSError:
                n = 0
            if n:
                self.rx = bytearray(self.chunk[:n])
        return len(self.rx)

    def readinto(self, buf, nbytes=None) -> int:
        n = min(len(buf) if nbytes is None else nbytes, len(self.rx))
        for i in range(n):
            buf[i] = self.rx[i]
        self.rx = self.rx[n:]
        return n


class WDT:
    """Counts feeds; a feed later than `timeout` after the previous one (or the start) is
    counted in outputs["wdt_late"]: on a board the watchdog would have reset it by then."""

    last = None

    def __init__(self, id=0, timeout=5000) -> None:
        self.timeout = timeout
        self.fed_ms = time.ticks_ms()
        WDT.last = self

    def feed(self) -> None:
        self._gap(time.ticks_ms())
        outputs["wdt_feeds"] += 1

    def _gap(self, now) -> int:
        """Record the stretch since the last feed (ends it at `now` too)."""
        gap = time.ticks_diff(now, self.fed_ms)
        self.fed_ms = now
        if gap > outputs["wdt_max_gap_ms"]:
            outputs["wdt_max_gap_ms"] = gap
        if gap > self.timeout:
            outputs["wdt_late"] += 1
        return gap

    def starving_ms(self) -> int:
        """How long since the last feed, now (for the rig: a watchdog about to expire)."""
        return time.ticks_diff(time.ticks_ms(), self.fed_ms)


def reset() -> None:
    outputs["reset"] = True
    raise SystemExit("machine.reset()")


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


sys.modules.setdefault("machine", sys.modules[__name__])
