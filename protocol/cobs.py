"""COBS (Consistent Overhead Byte Stuffing) for byte streams: frames never contain 0x00, so
0x00 delimits them and a reader resynchronises at the next delimiter after any corruption.
Overhead is one byte per 254 bytes of frame, plus the delimiter.
"""

from __future__ import annotations

from .errors import FramingError


def encode(data: bytes) -> bytes:
    """COBS-encode `data` (no trailing delimiter)."""
    out = bytearray()
    for block in _blocks(data):
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def _blocks(data: bytes) -> list[bytes]:
    # Split at zeros, then cap each run at 254 bytes; a full 254-byte run (code 0xFF) carries
    # no implied zero, so it must not consume one.
    blocks: list[bytes] = []
    for chunk in data.split(b"\0"):
        while len(chunk) >= 254:
            blocks.append(chunk[:254])
            chunk = chunk[254:]
        blocks.append(chunk)
    return blocks


def decode(data: bytes | memoryview) -> bytes:
    """Decode one COBS block (without delimiter). Raises FramingError on invalid input."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError(f"COBS: zero byte inside a frame at +{i}")
        end = i + code
        if end > n:
            raise FramingError(f"COBS: block at +{i} runs {end - n} bytes past the frame's end")
        out += data[i + 1:end]
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(size: int) -> int:
    return size + size // 254 + 1
