"""CRC-32/IEEE (as zlib and binascii compute it) without heap allocation.

binascii.crc32 returns a 32-bit int, which on the ESP32 (31-bit small ints) is a heap object:
32 bytes per frame. Here the CRC is kept as two 16-bit halves, which stay small ints, and the
result is written straight into the frame buffer.
"""

from array import array

_LO = array("H", bytes(512))  # table entries, low and high 16 bits
_HI = array("H", bytes(512))


def _init() -> None:
    for n in range(256):
        lo, hi = n, 0
        for _ in range(8):
            carry = lo & 1
            lo = (lo >> 1) | ((hi & 1) << 15)
            hi >>= 1
            if carry:  # reflected polynomial 0xEDB88320
                lo ^= 0x8320
                hi ^= 0xEDB8
        _LO[n] = lo
        _HI[n] = hi


_init()


def crc32_into(data, n: int, out, off: int) -> None:
    """Write the CRC-32 of data[0:n] little-endian into out[off:off + 4]."""
    lo = 0xFFFF
    hi = 0xFFFF
    tlo = _LO
    thi = _HI
    for i in range(n):
        idx = (lo ^ data[i]) & 0xFF
        lo = ((lo >> 8) | ((hi & 0xFF) << 8)) ^ tlo[idx]
        hi = (hi >> 8) ^ thi[idx]
    lo ^= 0xFFFF
    hi ^= 0xFFFF
    out[off] = lo & 0xFF
    out[off + 1] = lo >> 8
    out[off + 2] = hi & 0xFF
    out[off + 3] = hi >> 8
