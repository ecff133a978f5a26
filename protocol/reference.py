"""The reference codec: construct itself, parsing and building `schema.Frame`.

Slow, obviously right, and the yardstick for the fast codec: property tests demand the two
agree byte for byte and field for field, and the benchmarks measure against it. CRC and tag
are computed outside construct (see schema.Frame); results use the canonical form of codec.py.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from construct import Construct, Container, EnumIntegerString, ListContainer

from . import codec, errors, layout, schema


@cache
def compiled_frame() -> Construct:
    return schema.Frame.compile()


_FLAG_FIELDS = layout.flag_fields()


def canonical(value: Any, name: str = "") -> Any:
    """construct's parse result -> the canonical form (plain dicts, lists, ints, str)."""
    if name in _FLAG_FIELDS and isinstance(value, Container):
        return sum(bit for flag, bit in _FLAG_FIELDS[name].items() if value[flag])
    if isinstance(value, Container):
        return {k: canonical(v, k) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, ListContainer):
        return [canonical(v) for v in value]
    if isinstance(value, EnumIntegerString):
        return str(value)
    return value


def _to_construct(value: Any, name: str = "") -> Any:
    """Canonical form -> what construct builds from (flag masks become dicts of booleans)."""
    if name in _FLAG_FIELDS and isinstance(value, int):
        return {flag: bool(value & bit) for flag, bit in _FLAG_FIELDS[name].items()}
    if isinstance(value, Mapping):
        return {k: _to_construct(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_construct(v) for v in value]
    return value


def decode_frame(buf: bytes, *, compiled: bool = True) -> codec.Frame:
    """Parse with construct and check the CRC outside it (construct's Checksum is slow)."""
    parsed = canonical((compiled_frame() if compiled else schema.Frame).parse(buf))
    crc_pos = len(buf) - 4 - (codec.TAG_LEN if parsed["tag"] is not None else 0)
    if zlib.crc32(buf[:crc_pos]) != parsed["crc32"]:
        raise errors.CrcMismatch("CRC-32 mismatch")
    return parsed


def encode_frame(frame: Mapping[str, Any], *, key: bytes | None = None) -> bytes:
    """Build with construct; CRC and tag computed over the built bytes."""
    flags = int(frame.get("flags", 0)) | (codec.FLAG_SIGNED if key is not None else 0)
    values = _to_construct({**frame, "flags": flags, "crc32": 0,
                            "tag": b"\0" * codec.TAG_LEN if key is not None else None})
    values.setdefault("version", schema.PROTOCOL_VERSION)
    built = schema.Frame.build(values)
    crc_pos = len(built) - 4 - (codec.TAG_LEN if key is not None else 0)
    out = bytearray(built[:crc_pos])
    out += zlib.crc32(out).to_bytes(4, "little")
    if key is not None:
        out += codec.compute_tag(key, bytes(out))
    return bytes(out)
