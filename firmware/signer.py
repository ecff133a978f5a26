"""HMAC-SHA256 frame tags with the board's key, truncated to wire.TAG_LEN.

Written on hashlib.sha256 because stock ESP32 builds carry no `hmac` module. Each tag costs a
few hundred bytes of heap (two hash objects and digests): signing is the one part of sending
a frame that allocates, and the GC reclaims it.
"""

import hashlib

import wire

_BLOCK = 64


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key + bytes(_BLOCK - len(key))
        self._ipad = bytes(b ^ 0x36 for b in key)
        self._opad = bytes(b ^ 0x5C for b in key)

    def digest(self, data) -> bytes:
        inner = hashlib.sha256(self._ipad)
        inner.update(data)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def tag_into(self, buf, n: int, out, off: int) -> None:
        """Write the tag over buf[0:n] into out[off:off + TAG_LEN]."""
        mac = self.digest(memoryview(buf)[:n])
        for i in range(wire.TAG_LEN):
            out[off + i] = mac[i]
