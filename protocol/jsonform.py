"""The JSON form of a frame, for people and tools: flag masks as lists of names, bytes as hex.

`to_json(frame)` and `from_json(obj)` are inverses on the canonical form (see codec.py), so
`packsentry decode` output can be edited and fed back to `packsentry encode`.
"""

from __future__ import annotations

from typing import Any

from . import layout
from .errors import BadValue

FLAG_TABLES = layout.flag_fields()


def flag_names(name: str, mask: int) -> list[str]:
    return [flag for flag, bit in FLAG_TABLES[name].items() if mask & bit]


def flag_mask(name: str, value: Any) -> int:
    if isinstance(value, int):
        return value
    table = FLAG_TABLES[name]
    unknown = [v for v in value if v not in table]
    if unknown:
        raise BadValue(f"{name}: unknown flag(s) {unknown}; known: {sorted(table)}")
    return sum(table[v] for v in set(value))


def to_json(value: Any, name: str = "") -> Any:
    if name in FLAG_TABLES and isinstance(value, int):
        return flag_names(name, value)
    if isinstance(value, dict):
        return {k: to_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return value


_BYTES_FIELDS = {"tag"} | {
    seg.name for lay in layout.all_payload_layouts().values() for seg in lay.segments
    if isinstance(seg, layout.ByteString)
}


def from_json(value: Any, name: str = "") -> Any:
    if name in FLAG_TABLES:
        return flag_mask(name, value)
    if name in _BYTES_FIELDS and isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise BadValue(f"{name}: not a hex string") from None
    if isinstance(value, dict):
        return {k: from_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
