"""`machine` for the virtual board: the MicroPython VM has no hardware, so this module stands in
for ESP32 peripherals. Sensor values are set by the rig (the pack simulator) through
`inputs`; what the firmware drives (pins, UART bytes, watchdog feeds) is recorded for it.

It runs inside the VM, next to the unchanged firmware. Only what the firmware uses is here.
"""

import sys

# ADC pin -> uV; I2C address -> register-map device; ADC pin -> (select pins, uV per channel)
# for an analog multiplexer in front of that pin
inputs = {"adc_uv": {}, "i2c": {}, "mux": {}}
outputs = {"pins": {}, "wdt_feeds": 0, "reset": False}


class Pin:
    IN = 1
    OUT = 2
    PULL_UP = 1

    def __init__(self, pin_id, mode=IN, pull=None, value=None) -> None:
        self.id = pin_id
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return outputs["pins"].get(self.id, 0)
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
    """Bytes the firmware writes collect in `tx`; the rig feeds `rx`."""

    def __init__(self, uart_id=0, baudrate=115_200, **kw) -> None:
        self.tx = bytearray()
        self.rx = bytearray()
        UART.last = self

    def write(self, buf, off=0, sz=None) -> int:
        end = len(buf) if sz is None else off + sz
        self.tx += buf[off:end]
        return end - off

    def any(self) -> int:
        return len(self.rx)

    def readinto(self, buf, nbytes=None) -> int:
        n = min(len(buf) if nbytes is None else nbytes, len(self.rx))
        for i in range(n):
            buf[i] = self.rx[i]
        self.rx = self.rx[n:]
        return n


class WDT:
    def __init__(self, id=0, timeout=5000) -> None:
        self.timeout = timeout

    def feed(self) -> None:
        outputs["wdt_feeds"] += 1


def reset() -> None:
    outputs["reset"] = True
    raise SystemExit("machine.reset()")


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


sys.modules.setdefault("machine", sys.modules[__name__])
