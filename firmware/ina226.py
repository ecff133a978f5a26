"""INA226 current monitor over I2C: pack current from the shunt voltage register.

Shunt voltage LSB is 2.5 uV, so current_ma = raw * 2500 nV / R_shunt (uOhm): nV/uOhm = mA,
with raw * 2500 < 2**27, a small int. The read goes into a preallocated 2-byte buffer.
"""

REG_SHUNT_V = 0x01
REG_CONFIG = 0x00
_CONFIG_CONTINUOUS = b"\x45\x27"  # averages 16, 1.1 ms conversions, shunt and bus continuous


class Ina226:
    def __init__(self, i2c, shunt_uohm: int, addr: int = 0x40) -> None:
        self.i2c = i2c
        self.addr = addr
        self.shunt_uohm = shunt_uohm
        self._buf = bytearray(2)
        i2c.writeto_mem(addr, REG_CONFIG, _CONFIG_CONTINUOUS)

    def _read_s16(self, reg: int) -> int:
        self.i2c.readfrom_mem_into(self.addr, reg, self._buf)
        raw = (self._buf[0] << 8) | self._buf[1]  # big-endian on the wire
        return raw - 0x10000 if raw & 0x8000 else raw

    def current_ma(self) -> int:
        return self._read_s16(REG_SHUNT_V) * 2500 // self.shunt_uohm
