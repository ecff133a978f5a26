"""The host's fast codec: precompiled `struct` layouts derived from the construct schemas.

A decoded frame is a plain dict (the *canonical form*, shared with `reference.py`)::

    {"version": 1, "msg_type": "sample", "flags": 0x0004, "board_id": 7, "boot": 3,
     "seq": 41, "ts_ms": 1764000000000, "payload": {...}, "crc32": 0x..., "tag": None}

Enums decode to their names, flag fields to their integer masks, arrays to lists of ints,
byte strings to bytes, batch records to lists of dicts.

Check order on decode: size, then CRC (so any corruption reads as a CRC failure, with a hint
when the lengths disagree too), then version, type, flags, lengths, then the tag. Compiled
construct accepts truncated input silently, so every length is checked here, not left to it.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Callable, Mapping
from hashlib import sha256
from typing import Any

from . import errors, layout, schema
from .layout import ByteString, Fixed, IntArray, Layout, Records, Scalar

Frame = dict[str, Any]
Payload = dict[str, Any]

HEADER = struct.Struct(layout.header_layout().fmt)
HEADER_SIZE = HEADER.size
HEADER_NAMES = tuple(f.name for f in layout.header_layout().fields)
CRC = struct.Struct("<I")
TAG_LEN = schema.TAG_LEN_BYTES
MIN_FRAME_SIZE = HEADER_SIZE + schema.CRC_LEN_BYTES
MAX_PAYLOAD_SIZE = 0xFFFF
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD_SIZE + schema.CRC_LEN_BYTES + TAG_LEN

MSG_IDS = layout.msg_type_ids()
MSG_NAMES = {v: k for k, v in MSG_IDS.items()}
FLAGS = layout.frame_flags()
FLAG_SIGNED = FLAGS["signed"]
_ALL_FLAGS = sum(FLAGS.values())
_FLAGS_OFFSET = struct.calcsize("<BB")  # flags follow version and msg_type


def compute_tag(key: bytes, signed_part: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over header + payload + CRC, truncated to TAG_LEN bytes."""
    return hmac.new(key, signed_part, sha256).digest()[:TAG_LEN]


# -- payloads -------------------------------------------------------------------------------


def _scalar_decoders(fields: tuple[Scalar, ...]) -> list[tuple[str, Callable[[int], Any]]]:
    """Post-processing for the enum and flag fields of a fixed run (most fields need none)."""
    out: list[tuple[str, Callable[[int], Any]]] = []
    for f in fields:
        if f.enum is not None:
            out.append((f.name, _enum_decoder(f.name, f.enum)))
        elif f.flags is not None:
            out.append((f.name, _flags_check(f.name, sum(f.flags.values()))))
    return out


def _enum_decoder(name: str, mapping: dict[int, str]) -> Callable[[int], str]:
    def decode(value: int) -> str:
        try:
            return mapping[value]
        except KeyError:
            raise errors.BadValue(f"{name}: {value} is not a defined value") from None
    return decode


def _flags_check(name: str, known: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value & ~known:
            raise errors.BadValue(f"{name}: undefined bits 0x{value & ~known:x} set")
        return value
    return check


class _FixedCodec:
    __slots__ = ("names", "post", "pre", "size", "st")

    def __init__(self, seg: Fixed) -> None:
        self.st = struct.Struct(seg.fmt)
        self.size = self.st.size
        self.names = tuple(f.name for f in seg.fields)
        self.post = _scalar_decoders(seg.fields)
        self.pre = {f.name: {v: k for k, v in f.enum.items()} for f in seg.fields if f.enum}


_array_structs: dict[tuple[int, str], struct.Struct] = {}


def _array_struct(count: int, fmt: str) -> struct.Struct:
    st = _array_structs.get((count, fmt))
    if st is None:
        st = _array_structs[(count, fmt)] = struct.Struct(f"<{count}{fmt}")
    return st


def _check_count(name: str, count: int) -> None:
    limit = schema.COUNT_LIMITS.get(name)
    if limit is not None and count > limit:
        raise errors.BadLength(f"{name} is {count}, more than the schema's limit of {limit}")


class PayloadCodec:
    """Decoder and encoder of one message type's payload, interpreted from its layout."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self.steps: list[tuple[str, Any]] = []
        for seg in lay.segments:
            if isinstance(seg, Fixed):
                self.steps.append(("fixed", _FixedCodec(seg)))
            elif isinstance(seg, IntArray):
                self.steps.append(("array", seg))
            elif isinstance(seg, ByteString):
                self.steps.append(("bytes", seg))
            else:
                self.steps.append(("records", (seg, _RecordCodec(seg.record))))

    def decode(self, buf: bytes | memoryview, off: int, end: int) -> Payload:
        out: Payload = {}
        for kind, step in self.steps:
            if kind == "fixed":
                if off + step.size > end:
                    raise errors.BadLength(
                        f"payload too short for its fixed fields ({end - off} < {step.size})")
                out.update(zip(step.names, step.st.unpack_from(buf, off), strict=True))
                for name, conv in step.post:
                    out[name] = conv(out[name])
                off += step.size
            elif kind == "array":
                count = out[step.count]
                _check_count(step.count, count)
                st = _array_struct(count, step.elem_fmt)
                if off + st.size > end:
                    raise errors.BadLength(f"{step.name}: {count} values announced, "
                                           f"only {end - off} payload bytes left")
                out[step.name] = list(st.unpack_from(buf, off))
                off += st.size
            elif kind == "bytes":
                count = out[step.count]
                _check_count(step.count, count)
                if off + count > end:
                    raise errors.BadLength(f"{step.name}: {count} bytes announced, "
                                           f"only {end - off} left")
                out[step.name] = bytes(buf[off:off + count])
                off += count
            else:
                seg, rec = step
                count = out[seg.count]
                _check_count(seg.count, count)
                out[seg.name], off = rec.decode(buf, off, end, count, out)
        if off != end:
            raise errors.BadLength(f"{end - off} stray bytes after the payload's last field")
        return out

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        if not isinstance(payload, Mapping):
            raise errors.BadValue(f"{self.layout.name} payload must be an object")
        try:
            return self._encode(dict(payload))
        except KeyError as exc:
            raise errors.BadValue(f"{self.layout.name}: field {exc.args[0]!r} is missing") \
                from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise errors.BadValue(f"{self.layout.name}: {exc}") from None

    def _encode(self, values: dict[str, Any]) -> bytes:
        parts: list[bytes] = []
        _fill_counts(self.layout, values)
        for kind, step in self.steps:
            if kind == "fixed":
                parts.append(_pack_fixed(step, values))
            elif kind == "array":
                arr = values[step.name]
                _check_len(step.name, step.count, values[step.count], len(arr))
                parts.append(_pack_array(step.name, step.elem_fmt, arr))
            elif kind == "bytes":
                data = bytes(values[step.name])
                _check_len(step.name, step.count, values[step.count], len(data))
                parts.append(data)
            else:
                seg, rec = step
                recs = values[seg.name]
                _check_len(seg.name, seg.count, values[seg.count], len(recs))
                parts.extend(rec.encode(r, values) for r in recs)
        return b"".join(parts)


class _RecordCodec:
    """Batch records: all records share the parent's counts, so one Struct spans a record."""

    def __init__(self, lay: Layout) -> None:
        first, *rest = lay.segments
        if not isinstance(first, Fixed) or not all(isinstance(s, IntArray) for s in rest):
            raise layout.SchemaError(f"{lay.name}: records must be scalars, then int arrays")
        self.fixed = _FixedCodec(first)
        self.arrays: list[IntArray] = rest  # type: ignore[assignment]
        self._structs: dict[tuple[int, ...], struct.Struct] = {}

    def _struct(self, counts: tuple[int, ...]) -> struct.Struct:
        st = self._structs.get(counts)
        if st is None:
            fmt = self.fixed.st.format + "".join(
                f"{n}{a.elem_fmt}" for n, a in zip(counts, self.arrays, strict=True))
            st = self._structs[counts] = struct.Struct(fmt)
        return st

    def decode(self, buf: bytes | memoryview, off: int, end: int, n: int,
               parent: Payload) -> tuple[list[Payload], int]:
        counts = tuple(parent[a.count] for a in self.arrays)
        for a, c in zip(self.arrays, counts, strict=True):
            _check_count(a.count, c)
        st = self._struct(counts)
        if off + n * st.size > end:
            raise errors.BadLength(f"{n} records of {st.size} bytes announced, "
                                   f"only {end - off} payload bytes left")
        fx = self.fixed
        nfix = len(fx.names)
        records = []
        for values in st.iter_unpack(buf[off:off + n * st.size]):
            rec = dict(zip(fx.names, values[:nfix], strict=True))
            for name, conv in fx.post:
                rec[name] = conv(rec[name])
            i = nfix
            for a, c in zip(self.arrays, counts, strict=True):
                rec[a.name] = list(values[i:i + c])
                i += c
            records.append(rec)
        return records, off + n * st.size

    def encode(self, rec: Mapping[str, Any], parent: Mapping[str, Any]) -> bytes:
        parts = [_pack_fixed(self.fixed, rec)]
        for a in self.arrays:
            _check_len(a.name, a.count, parent[a.count], len(rec[a.name]))
            parts.append(_pack_array(a.name, a.elem_fmt, rec[a.name]))
        return b"".join(parts)


def _fill_counts(lay: Layout, values: dict[str, Any]) -> None:
    """Count fields may be left out when encoding; they are derived from what they count."""
    for seg in lay.segments:
        if isinstance(seg, IntArray | ByteString | Records) and values.get(seg.count) is None:
            values[seg.count] = len(values[seg.name])
        if isinstance(seg, Records):
            first = values[seg.name][0] if values[seg.name] else {}
            for inner in seg.record.segments:
                if isinstance(inner, IntArray) and values.get(inner.count) is None:
                    values[inner.count] = len(first.get(inner.name, []))


def _check_len(name: str, count_name: str, count: int, actual: int) -> None:
    if count != actual:
        raise errors.BadValue(f"{count_name} is {count} but {name} has {actual} entries")
    _check_count(count_name, count)


def _pack_fixed(fx: _FixedCodec, values: Mapping[str, Any]) -> bytes:
    row = []
    for name in fx.names:
        if name not in values:
            raise errors.BadValue(f"field {name!r} is missing")
        v = values[name]
        if name in fx.pre:
            if v not in fx.pre[name]:
                raise errors.BadValue(f"{name}: {v!r} is not one of {sorted(fx.pre[name])}")
            v = fx.pre[name][v]
        row.append(v)
    try:
        return fx.st.pack(*row)
    except struct.error:
        bad = _first_bad(fx, row)
        raise errors.BadValue(bad) from None


def _first_bad(fx: _FixedCodec, row: list[Any]) -> str:
    for name, code, v in zip(fx.names, fx.st.format[1:], row, strict=True):
        try:
            struct.pack("<" + code, v)
        except struct.error:
            return f"{name}={v!r} does not fit {layout.TYPE_NAMES[code]}"
    return f"fields {fx.names}: cannot pack {row}"


def _pack_array(name: str, fmt: str, arr: list[int]) -> bytes:
    try:
        return _array_struct(len(arr), fmt).pack(*arr)
    except struct.error as exc:
        raise errors.BadValue(f"{name}: {exc} ({layout.TYPE_NAMES[fmt]} values)") from None


_HEADER_FIXED = _FixedCodec(layout.header_layout())

PAYLOAD_CODECS: dict[str, PayloadCodec] = {
    name: PayloadCodec(lay) for name, lay in layout.all_payload_layouts().items()
}

# -- frames ---------------------------------------------------------------------------------


def decode_frame(buf: bytes | bytearray | memoryview, *, key: bytes | None = None) -> Frame:
    """Decode and check one bare frame.

    With `key` the frame must carry a valid tag (MissingTag / BadTag otherwise); without it a
    signed frame's tag is returned unverified. Raises a `ProtocolError` subclass on any fault.
    """
    size = len(buf)
    if size < MIN_FRAME_SIZE:
        raise errors.TruncatedFrame(
            f"frame truncated: {size} bytes, the smallest frame is {MIN_FRAME_SIZE}")
    (flags,) = struct.unpack_from("<H", buf, _FLAGS_OFFSET)
    tag_len = TAG_LEN if flags & FLAG_SIGNED else 0
    no_room = size - 4 - tag_len < HEADER_SIZE
    crc_pos = size - 4 - (0 if no_room else tag_len)
    mv = memoryview(buf)
    (crc_frame,) = CRC.unpack_from(buf, crc_pos)
    crc_calc = zlib.crc32(mv[:crc_pos])
    header = HEADER.unpack_from(buf, 0)
    version, msg_id, _, _, _, _, _, payload_len = header
    if no_room:  # flagged signed with no room for a tag: most likely a corrupted flag
        if crc_calc != crc_frame:
            raise errors.CrcMismatch(f"CRC-32 mismatch: frame carries 0x{crc_frame:08x}, bytes "
                                     f"give 0x{crc_calc:08x}; its flags claim a tag it has no "
                                     f"room for (corrupted in transit)")
        raise errors.TruncatedFrame(
            f"frame truncated: flagged signed, but {size} bytes leave no room for the tag")
    if crc_calc != crc_frame:
        hint = ""
        announced = HEADER_SIZE + payload_len + 4 + tag_len
        if announced != size:
            hint = f"; lengths disagree too (header announces {announced} bytes, got {size})"
        raise errors.CrcMismatch(f"CRC-32 mismatch: frame carries 0x{crc_frame:08x}, bytes give "
                                 f"0x{crc_calc:08x} (corrupted in transit){hint}")
    if version != schema.PROTOCOL_VERSION:
        raise errors.UnsupportedVersion(
            f"protocol version {version} is not supported: this host speaks version "
            f"{schema.PROTOCOL_VERSION}")
    msg_type = MSG_NAMES.get(msg_id)
    if msg_type is None:
        raise errors.UnknownMessageType(f"unknown message type 0x{msg_id:02x}")
    if flags & ~_ALL_FLAGS:
        raise errors.BadValue(f"flags: undefined bits 0x{flags & ~_ALL_FLAGS:x} set")
    if payload_len != crc_pos - HEADER_SIZE:
        raise errors.BadLength(f"header announces a {payload_len}-byte payload, the frame holds "
                               f"{crc_pos - HEADER_SIZE}")
    tag = bytes(mv[crc_pos + 4:]) if tag_len else None
    if key is not None:
        if tag is None:
            raise errors.MissingTag("frame is not signed, but this board has a key")
        if not hmac.compare_digest(tag, compute_tag(key, mv[:crc_pos + 4])):
            raise errors.BadTag("authentication tag does not match the board's key "
                                "(forged, corrupted, or the wrong key)")
    frame: Frame = dict(zip(HEADER_NAMES, header, strict=True))
    del frame["payload_len"]
    frame["msg_type"] = msg_type
    frame["payload"] = PAYLOAD_CODECS[msg_type].decode(mv, HEADER_SIZE, crc_pos)
    frame["crc32"] = crc_frame
    frame["tag"] = tag
    return frame


def encode_frame(frame: Mapping[str, Any], *, key: bytes | None = None) -> bytes:
    """Encode a frame in canonical form. CRC and tag are computed, never taken from `frame`.

    The frame is signed when `key` is given (flag `signed` is then set); a frame flagged
    `signed` without a key is refused, since its tag cannot be made.
    """
    msg_type = frame.get("msg_type")
    if msg_type not in PAYLOAD_CODECS:
        raise errors.UnknownMessageType(f"unknown message type {msg_type!r}")
    flags = int(frame.get("flags", 0))
    if flags & ~_ALL_FLAGS:
        raise errors.BadValue(f"flags: undefined bits 0x{flags & ~_ALL_FLAGS:x} set")
    if key is not None:
        flags |= FLAG_SIGNED
    elif flags & FLAG_SIGNED:
        raise errors.MissingTag("frame is flagged signed but no key was given to sign it")
    payload = PAYLOAD_CODECS[msg_type].encode(frame.get("payload", {}))
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise errors.BadLength(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_SIZE}")
    values = {**frame, "version": frame.get("version", schema.PROTOCOL_VERSION),
              "flags": flags, "payload_len": len(payload)}
    body = _pack_fixed(_HEADER_FIXED, values) + payload
    body += CRC.pack(zlib.crc32(body))
    if key is not None:
        body += compute_tag(key, body)
    return body


def peek_board(buf: bytes | memoryview) -> tuple[int, int, int] | None:
    """(board_id, boot, seq) from a frame's header without checking it, for key lookup."""
    if len(buf) < HEADER_SIZE:
        return None
    _, _, _, board_id, boot, seq, _, _ = HEADER.unpack_from(buf, 0)
    return board_id, boot, seq


def seq_span(frame: Frame) -> int:
    """How many sequence numbers a frame uses: one per sample in a batch, else one."""
    if frame["msg_type"] == "batch":
        return max(1, frame["payload"]["n_samples"])
    return 1
