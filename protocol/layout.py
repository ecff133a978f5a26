"""Byte layouts derived from the construct schemas, never typed by hand.

`payload_layout(name)` walks a payload Struct and returns its fields grouped into *segments*
that map onto single `struct` calls: a run of fixed scalars, a counted array of integers, a
counted byte string, or counted records (a batch). The fast codec, the firmware wire module
generator, the docs generator and the schema fingerprint all read these layouts, so the four
can never disagree with the schemas or with each other.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import cache

from construct import Array, Bytes, Construct, Enum, FlagsEnum, FormatField, Renamed, Struct
from construct.expr import Path

from . import schema


class SchemaError(Exception):
    """A schema uses a construct the derivers do not understand."""


@dataclass(frozen=True)
class Scalar:
    name: str
    fmt: str  # one struct code, e.g. "H"
    doc: str
    enum: dict[int, str] | None = None  # Enum: wire value -> name
    flags: dict[str, int] | None = None  # FlagsEnum: name -> bit mask

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.fmt]


@dataclass(frozen=True)
class Fixed:
    """A run of scalars packed back to back: one struct call."""

    fields: tuple[Scalar, ...]

    @property
    def fmt(self) -> str:
        return "<" + "".join(f.fmt for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)


@dataclass(frozen=True)
class IntArray:
    name: str
    count: str  # name of the count field
    elem_fmt: str
    doc: str

    @property
    def elem_size(self) -> int:
        return struct.calcsize("<" + self.elem_fmt)


@dataclass(frozen=True)
class ByteString:
    name: str
    count: str
    doc: str


@dataclass(frozen=True)
class Records:
    """Counted records whose own arrays are counted by fields of the enclosing payload."""

    name: str
    count: str
    record: Layout
    doc: str


Segment = Fixed | IntArray | ByteString | Records


@dataclass(frozen=True)
class Layout:
    name: str
    segments: tuple[Segment, ...]

    @property
    def fixed_size(self) -> int:
        """Bytes before the first variable-length segment (the whole size if none)."""
        size = 0
        for seg in self.segments:
            if not isinstance(seg, Fixed):
                break
            size += seg.size
        return size

    @property
    def scalars(self) -> tuple[Scalar, ...]:
        return tuple(f for seg in self.segments if isinstance(seg, Fixed) for f in seg.fields)


TYPE_NAMES = {"B": "u8", "b": "i8", "H": "u16", "h": "i16", "I": "u32", "i": "i32",
               "Q": "u64", "q": "i64"}


def _int_fmt(con: Construct, where: str) -> str:
    if isinstance(con, FormatField) and con.fmtstr[0] == "<":
        code = {"L": "I", "l": "i"}.get(con.fmtstr[1:], con.fmtstr[1:])  # same size with "<"
        if code in TYPE_NAMES:
            return code
    raise SchemaError(f"{where}: expected a little-endian integer field, got {con!r}")


def _count_name(count: object, where: str, nested: bool) -> str:
    # construct keeps `this.n` / `this._.n` as a Path chain; read the field name back out.
    if not isinstance(count, Path):
        raise SchemaError(f"{where}: array count must be a field reference, got {count!r}")
    field = count._Path__field  # type: ignore[attr-defined]
    parent = count._Path__parent  # type: ignore[attr-defined]
    depth = 0
    while isinstance(parent, Path) and parent._Path__field is not None:  # type: ignore[attr-defined]
        if parent._Path__field != "_":  # type: ignore[attr-defined]
            raise SchemaError(f"{where}: unsupported count path {count!r}")
        depth += 1
        parent = parent._Path__parent  # type: ignore[attr-defined]
    if depth != (1 if nested else 0):
        raise SchemaError(f"{where}: count {count!r} must be this.{field}"
                          + (" via this._" if nested else ""))
    return field


def _walk(name: str, struct_con: Struct, nested: bool = False) -> Layout:
    segments: list[Segment] = []
    run: list[Scalar] = []

    def close_run() -> None:
        if run:
            segments.append(Fixed(tuple(run)))
            run.clear()

    for sub in struct_con.subcons:
        if not isinstance(sub, Renamed):
            raise SchemaError(f"{name}: every field needs a name, got {sub!r}")
        where, con, doc = f"{name}.{sub.name}", sub.subcon, sub.docs or ""
        while isinstance(con, Renamed):  # `"name" / X * "doc"` nests two Renamed
            doc = doc or con.docs or ""
            con = con.subcon
        if isinstance(con, Enum):
            enum = {int(v): str(k) for k, v in con.encmapping.items()}
            run.append(Scalar(sub.name, _int_fmt(con.subcon, where), doc, enum=enum))
        elif isinstance(con, FlagsEnum):
            run.append(Scalar(sub.name, _int_fmt(con.subcon, where), doc, flags=dict(con.flags)))
        elif isinstance(con, FormatField):
            run.append(Scalar(sub.name, _int_fmt(con, where), doc))
        elif isinstance(con, Array) and isinstance(con.subcon, Struct):
            if nested:
                raise SchemaError(f"{where}: records cannot nest")
            close_run()
            count = _count_name(con.count, where, nested=False)
            segments.append(Records(sub.name, count, _walk(where, con.subcon, nested=True), doc))
        elif isinstance(con, Array):
            close_run()
            count = _count_name(con.count, where, nested)
            segments.append(IntArray(sub.name, count, _int_fmt(con.subcon, where), doc))
        elif isinstance(con, Bytes):
            close_run()
            segments.append(ByteString(sub.name, _count_name(con.length, where, nested), doc))
        else:
            raise SchemaError(f"{where}: unsupported construct {type(con).__name__}")
    close_run()
    layout = Layout(name, tuple(segments))
    if not nested:
        known = {f.name for f in layout.scalars}
        for seg in layout.segments:
            counts = [seg.count] if not isinstance(seg, Fixed | Records) else []
            if isinstance(seg, Records):
                counts = [seg.count] + [s.count for s in seg.record.segments
                                        if isinstance(s, IntArray | ByteString)]
            for c in counts:
                if c not in known:
                    raise SchemaError(f"{name}: count field {c!r} must come before {seg}")
    return layout


@cache
def header_layout() -> Fixed:
    layout = _walk("header", schema.Header)
    if len(layout.segments) != 1 or not isinstance(layout.segments[0], Fixed):
        raise SchemaError("header must be fixed-size scalars")
    seg = layout.segments[0]
    # payload_len is the Prefixed(Int16ul) length that follows the header in schema.Frame.
    return Fixed((*seg.fields, Scalar("payload_len", "H", "payload length, bytes")))


@cache
def payload_layout(msg_type: str) -> Layout:
    return _walk(msg_type, schema.PAYLOADS[msg_type])


def all_payload_layouts() -> dict[str, Layout]:
    return {name: payload_layout(name) for name in schema.PAYLOADS}


def msg_type_ids() -> dict[str, int]:
    return {str(k): int(v) for k, v in schema.MsgType.encmapping.items()}


def frame_flags() -> dict[str, int]:
    return dict(schema.FrameFlags.flags)


@cache
def flag_fields() -> dict[str, dict[str, int]]:
    """Every FlagsEnum field on the wire (header and payloads): name -> {flag: mask}."""
    tables = {"flags": frame_flags()}
    for lay in all_payload_layouts().values():
        nested = [s.record for s in lay.segments if isinstance(s, Records)]
        for lay_ in [lay, *nested]:
            tables.update({f.name: f.flags for f in lay_.scalars if f.flags})
    return tables


def markers(fmt: str) -> tuple[int, int]:
    """(abnormal, invalid) markers of an integer field: its two top values (GB/T 32960)."""
    size = struct.calcsize("<" + fmt)
    top = (1 << (8 * size - (1 if fmt.islower() else 0))) - 1
    return top - 1, top


def sample_markers() -> dict[str, tuple[int, int]]:
    """(abnormal, invalid) per field of the sample payload, by name (arrays by theirs)."""
    out = {}
    for seg in payload_layout("sample").segments:
        if isinstance(seg, Fixed):
            out.update({f.name: markers(f.fmt) for f in seg.fields})
        elif isinstance(seg, IntArray):
            out[seg.name] = markers(seg.elem_fmt)
    return out


def _describe_layout(layout: Layout) -> list[str]:
    lines = []
    for seg in layout.segments:
        if isinstance(seg, Fixed):
            for f in seg.fields:
                extra = f" enum={sorted(f.enum.items())}" if f.enum else ""
                extra += f" flags={sorted(f.flags.items())}" if f.flags else ""
                lines.append(f"{f.name}:{f.fmt}{extra}")
        elif isinstance(seg, IntArray):
            lines.append(f"{seg.name}:[{seg.count}]{seg.elem_fmt}")
        elif isinstance(seg, ByteString):
            lines.append(f"{seg.name}:[{seg.count}]bytes")
        else:
            inner = ",".join(_describe_layout(seg.record))
            lines.append(f"{seg.name}:[{seg.count}]{{{inner}}}")
    return lines


def schema_description() -> str:
    """Canonical text of everything on the wire; the fingerprint hashes it."""
    parts = [f"version={schema.PROTOCOL_VERSION}", f"tag={schema.TAG_LEN_BYTES}",
             f"crc={schema.CRC_LEN_BYTES}", f"limits={sorted(schema.COUNT_LIMITS.items())}",
             "header:" + ",".join(f"{f.name}:{f.fmt}" for f in header_layout().fields),
             f"types={sorted(msg_type_ids().items())}", f"flags={sorted(frame_flags().items())}"]
    for name, layout in all_payload_layouts().items():
        parts.append(f"{name}:" + ",".join(_describe_layout(layout)))
    return "\n".join(parts)


@cache
def schema_fingerprint() -> int:
    """32-bit fingerprint of the schema: any layout change changes it (cf. MAVLink CRC_EXTRA).

    Field names are part of it too: a renamed field is a changed contract for the JSON tools.
    """
    digest = hashlib.sha256(schema_description().encode()).digest()
    return int.from_bytes(digest[:4], "little")
