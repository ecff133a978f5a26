"""Batched decoding: many frames at once into numpy structured arrays, no per-field objects.

`decode_batch(frames)` takes a micro-batch of bare frames (what `codec.decode_frame` takes one
at a time) and returns them grouped into `Block`s: frames of one message type, one signing and
the same counts (n_probes, n_cells, n_samples, n_bytes) share one byte layout, so a block is
ONE numpy structured array of their bytes, whose fields are views without a copy of their own:
`block.frames["payload"]["cells_mv"]` is a (k, n_cells) uint16 array. The dtypes are derived
from the construct schemas through `layout.py`, like the struct codec's formats: nothing is
retyped here.

Acceptance is exactly `codec.decode_frame`'s (the tests hold the two to it on every golden
vector and on random frames): size, CRC-32, version, type, flags, payload length, count
limits, enum values and flag bits, and with `keys` the boards' tags. The checks run
vectorised over the batch; a frame that fails any of them is handed to `codec.decode_frame`,
so the error it gets (class and message) is exactly the one the per-frame path raises.

Cost: per frame, three C-level calls (len, zlib.crc32, a write into one reused buffer) and a
copy into its block; everything else is per batch or per block. Thread-safe (the reused
buffer is per thread). `DecodedBatch.samples()` turns the sample and batch blocks into
per-sample columns (batch records unrolled), the form the estimator and storage want.
"""

from __future__ import annotations

import hmac
import io
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from . import codec, layout, schema
from .errors import ProtocolError
from .layout import ByteString, Fixed, IntArray, Layout, Records

Buffer = bytes | bytearray | memoryview
KeyLookup = Callable[[int], bytes | None]

# struct code -> numpy type; little-endian throughout, like the wire.
NP_TYPES = {"B": "u1", "b": "i1", "H": "<u2", "h": "<i2", "I": "<u4", "i": "<i4",
            "Q": "<u8", "q": "<i8"}

_HEADER = layout.header_layout()
HEADER_DTYPE = np.dtype([(f.name, NP_TYPES[f.fmt]) for f in _HEADER.fields])
assert HEADER_DTYPE.itemsize == codec.HEADER_SIZE


def _field_offset(fields: Sequence[layout.Scalar], name: str) -> int:
    off = 0
    for f in fields:
        if f.name == name:
            return off
        off += f.size
    raise layout.SchemaError(f"no field {name!r}")


_OFF_VERSION = _field_offset(_HEADER.fields, "version")
_OFF_MSG_TYPE = _field_offset(_HEADER.fields, "msg_type")
_OFF_FLAGS = _field_offset(_HEADER.fields, "flags")
_OFF_BOARD = _field_offset(_HEADER.fields, "board_id")
_OFF_PAYLOAD_LEN = _field_offset(_HEADER.fields, "payload_len")

# CRC-32 (IEEE, reflected) over data followed by its own CRC, little-endian, is this constant
# whatever the data, and only the right CRC gives it: one zlib call per frame, no slicing.
CRC_RESIDUE = zlib.crc32(codec.CRC.pack(zlib.crc32(b"")))
_ALL_FLAGS = sum(layout.frame_flags().values())
# Zeros after the last frame, so the vectorised reads of a short frame's header and counts stay
# inside the buffer (they read garbage there, and that frame fails its size checks).
_PAD = bytes(128)


# -- layouts -> dtypes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Count:
    name: str
    offset: int  # in the payload
    fmt: str


@dataclass(frozen=True)
class _TypeSpec:
    """What the vectorised checks need of one payload layout."""

    msg_type: str
    msg_id: int
    layout: Layout
    head_size: int  # the first Fixed segment: every count field lies in it
    counts: tuple[_Count, ...]  # the count fields the layout uses, in key order
    const_size: int  # payload size = const + sum(coef * count) + n_rec * (rec_const + ...)
    coef: dict[str, int]
    records: tuple[str, int, dict[str, int]] | None  # (count name, record const, coef)
    # (field path, enum values | undefined flag bits, is an enum)
    checks: tuple[tuple[tuple[str, ...], Any, bool], ...]


def _size_terms(lay: Layout) -> tuple[int, dict[str, int]]:
    const, coef = 0, {}
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            const += seg.size
        elif isinstance(seg, IntArray):
            coef[seg.count] = coef.get(seg.count, 0) + seg.elem_size
        elif isinstance(seg, ByteString):
            coef[seg.count] = coef.get(seg.count, 0) + 1
    return const, coef


def _value_checks(lay: Layout, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any, bool]]:
    out: list[tuple[tuple[str, ...], Any, bool]] = []
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            for f in seg.fields:
                if f.enum is not None:  # a table of the defined values
                    defined = np.zeros(1 << (8 * f.size), bool) if f.size <= 2 else None
                    if defined is None:
                        raise layout.SchemaError(f"{f.name}: enums wider than 16 bits")
                    defined[sorted(f.enum)] = True
                    out.append(((*path, f.name), defined, True))
                elif f.flags is not None:  # the bits no flag defines
                    undefined = ((1 << (8 * f.size)) - 1) & ~sum(f.flags.values())
                    out.append(((*path, f.name), undefined, False))
        elif isinstance(seg, Records):
            out += _value_checks(seg.record, (*path, seg.name))
    return out


def _spec(msg_type: str, msg_id: int) -> _TypeSpec:
    lay = layout.payload_layout(msg_type)
    head = lay.segments[0] if lay.segments and isinstance(lay.segments[0], Fixed) else None
    head_fields = head.fields if head is not None else ()
    names: list[str] = []
    for seg in lay.segments:
        if isinstance(seg, IntArray | ByteString | Records):
            names.append(seg.count)
        if isinstance(seg, Records):
            names += [s.count for s in seg.record.segments if isinstance(s, IntArray)]
    names = list(dict.fromkeys(names))
    head_names = {f.name: f for f in head_fields}
    if len(names) > 3 or any(n not in head_names for n in names):
        # the key packs up to three counts, read from the payload's leading scalars
        raise layout.SchemaError(f"{msg_type}: counts must be among the first fields (<= 3)")
    counts = tuple(_Count(n, _field_offset(head_fields, n), head_names[n].fmt) for n in names)
    const, coef = _size_terms(lay)
    records = None
    for seg in lay.segments:
        if isinstance(seg, Records):
            rc, rcoef = _size_terms(seg.record)
            records = (seg.count, rc, rcoef)
    return _TypeSpec(msg_type, msg_id, lay, head.size if head is not None else 0, counts,
                     const, coef, records, tuple(_value_checks(lay, ("payload",))))


_SPECS: dict[int, _TypeSpec] = {i: _spec(name, i) for name, i in layout.msg_type_ids().items()}
assert len(_PAD) >= codec.HEADER_SIZE + max(s.head_size for s in _SPECS.values())
_KNOWN_TYPE = np.zeros(256, bool)
_KNOWN_TYPE[list(_SPECS)] = True


def _payload_dtype(lay: Layout, counts: Mapping[str, int]) -> np.dtype:
    fields: list[tuple[Any, ...]] = []
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            fields += [(f.name, NP_TYPES[f.fmt]) for f in seg.fields]
        elif isinstance(seg, IntArray):
            fields.append((seg.name, NP_TYPES[seg.elem_fmt], (counts[seg.count],)))
        elif isinstance(seg, ByteString):
            fields.append((seg.name, "u1", (counts[seg.count],)))
        else:
            fields.append((seg.name, _payload_dtype(seg.record, counts), (counts[seg.count],)))
    return np.dtype(fields)


@cache
def frame_dtype(msg_type: str, counts: tuple[tuple[str, int], ...] = (),
                signed: bool = False) -> np.dtype:
    """The whole frame as one packed structured dtype: header | payload | crc32 | tag."""
    fields: list[tuple[Any, ...]] = [
        ("header", HEADER_DTYPE),
        ("payload", _payload_dtype(layout.payload_layout(msg_type), dict(counts))),
        ("crc32", "<u4")]
    if signed:
        fields.append(("tag", "u1", (codec.TAG_LEN,)))
    return np.dtype(fields)


# -- results -----------------------------------------------------------------------------------


@dataclass
class Block:
    """Frames of one layout: `frames` is a structured array (dtype `frame_dtype(...)`), row j
    is input frame `index[j]`."""

    msg_type: str
    signed: bool
    counts: dict[str, int]
    index: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def header(self) -> np.ndarray:
        return self.frames["header"]

    @property
    def payload(self) -> np.ndarray:
        return self.frames["payload"]

    def frame(self, j: int) -> codec.Frame:
        """Row j in the canonical form of `codec.decode_frame` (tests, slow paths)."""
        row = self.frames[j]
        out: codec.Frame = {name: int(row["header"][name]) for name in codec.HEADER_NAMES}
        del out["payload_len"]
        out["msg_type"] = self.msg_type
        out["payload"] = _canonical(layout.payload_layout(self.msg_type), row["payload"])
        out["crc32"] = int(row["crc32"])
        out["tag"] = row["tag"].tobytes() if self.signed else None
        return out


def _canonical(lay: Layout, row: np.void) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            for f in seg.fields:
                v = int(row[f.name])
                out[f.name] = f.enum[v] if f.enum is not None else v
        elif isinstance(seg, IntArray):
            out[seg.name] = row[seg.name].tolist()
        elif isinstance(seg, ByteString):
            out[seg.name] = row[seg.name].tobytes()
        else:
            out[seg.name] = [_canonical(seg.record, r) for r in row[seg.name]]
    return out


@dataclass
class Samples:
    """Measurements of one shape (n_probes, n_cells), one row per sample: sample frames and
    batch records alike (a batch's record i has seq = header seq + i, ts_ms = ts_ms + dt_ms).
    `columns` holds the schema's measurement fields by name (pack_mv, current_ma, ...,
    temps_dc (k, n_probes), cells_mv (k, n_cells)); the rest is where each sample came from."""

    n_probes: int
    n_cells: int
    frame: np.ndarray  # input index of the frame the sample came from
    board_id: np.ndarray
    boot: np.ndarray
    seq: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    flags: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class DecodedBatch:
    """`blocks` hold the accepted frames; `errors` the rejected ones by input position, with
    exactly the exception `codec.decode_frame` raises for them. `extra` holds frames the
    vectorised checks refused but the codec accepts, decoded by it: never, unless this module
    has a bug (the tests hold it empty), but such a frame is still not lost."""

    n: int
    blocks: list[Block]
    errors: dict[int, ProtocolError] = field(default_factory=dict)
    extra: dict[int, codec.Frame] = field(default_factory=dict)

    def frames(self) -> list[codec.Frame | ProtocolError]:
        """Every input position: its canonical frame or its error (slow; tests, tools)."""
        out: list[Any] = [None] * self.n
        for b in self.blocks:
            for j, i in enumerate(b.index.tolist()):
                out[i] = b.frame(j)
        for i, frame in self.extra.items():
            out[i] = frame
        for i, exc in self.errors.items():
            out[i] = exc
        return out

    def by_type(self, msg_type: str) -> list[Block]:
        return [b for b in self.blocks if b.msg_type == msg_type]

    def samples(self) -> list[Samples]:
        """Per-sample columns for every sample and batch block (batch records unrolled)."""
        out = []
        for b in self.blocks:
            if b.msg_type not in ("sample", "batch"):
                continue
            hdr = b.header
            if b.msg_type == "sample":
                recs = b.payload
                k = 1
                seq = hdr["seq"].astype(np.int64)
                ts = hdr["ts_ms"].astype(np.int64)
                skip = {c.name for c in _SPECS[_SAMPLE_ID].counts}
            else:
                recs = b.payload["samples"]
                k = recs.shape[1]
                recs = recs.reshape(-1)
                seq = (hdr["seq"].astype(np.int64)[:, None] + np.arange(k)).reshape(-1)
                ts = (hdr["ts_ms"].astype(np.int64)[:, None]
                      + b.payload["samples"]["dt_ms"]).reshape(-1)
                skip = {"dt_ms"}
            cols = {n: recs[n] for n in recs.dtype.names if n not in skip}
            out.append(Samples(b.counts["n_probes"], b.counts["n_cells"],
                               np.repeat(b.index, k), np.repeat(hdr["board_id"], k),
                               np.repeat(hdr["boot"], k), seq, ts, np.repeat(hdr["flags"], k),
                               cols))
        return out


_SAMPLE_ID = layout.msg_type_ids()["sample"]


# -- decoding ----------------------------------------------------------------------------------


def _read(raw: np.ndarray, pos: np.ndarray, fmt: str) -> np.ndarray:
    """Integers of struct code `fmt` at byte positions `pos` (one gather through a view whose
    elements start at every byte), as int64."""
    dt = np.dtype(NP_TYPES[fmt])
    every_byte = np.ndarray((len(raw) - dt.itemsize + 1,), dt, raw, 0, (1,))
    return every_byte[pos].astype(np.int64)


def _key_lookup(keys: Mapping[int, bytes] | KeyLookup | None) -> KeyLookup | None:
    if keys is None:
        return None
    return keys.get if isinstance(keys, Mapping) else keys


def decode_batch(frames: Sequence[Buffer],
                 keys: Mapping[int, bytes] | KeyLookup | None = None) -> DecodedBatch:
    """Decode and check a batch of bare frames; see the module docstring.

    `keys` (board_id -> key, or a lookup) works as `key` does for `codec.decode_frame`: a board
    with a key must sign and its tags are checked; other boards' tags are returned unchecked.
    """
    if not frames:
        return DecodedBatch(0, [])
    # The frames are copied into one buffer reused from call to call: a fresh megabyte per
    # call costs more in page faults than the copy itself (glibc maps and unmaps it each time).
    joined = getattr(_scratch, "joined", None)
    _scratch.joined = None  # taken: a nested call (from a key lookup) makes its own
    if joined is None:
        joined = io.BytesIO()
    joined.seek(0)
    joined.writelines(frames)
    joined.write(_PAD)
    view = joined.getbuffer()
    key_of = _key_lookup(keys)
    size = joined.tell()
    try:
        out, rejected = _decode(frames, np.frombuffer(view, np.uint8, size), key_of)
    finally:
        try:
            view.release()  # every array over it went with _decode's frame ...
            if size <= _KEEP_BYTES:  # (an outsized batch's buffer is not kept for good)
                _scratch.joined = joined
        except BufferError:  # ... unless an exception's traceback holds that frame
            pass
    # the rejected: the per-frame codec names the fault exactly
    for i in rejected:
        f = frames[i]
        peek = codec.peek_board(f)
        k = key_of(peek[0]) if key_of is not None and peek else None
        try:
            out.extra[i] = codec.decode_frame(f, key=k)
        except ProtocolError as exc:
            out.errors[i] = exc
    return out


_scratch = threading.local()
_KEEP_BYTES = 16 << 20


def _decode(frames: Sequence[Buffer], raw: np.ndarray,
             key_of: KeyLookup | None) -> tuple[DecodedBatch, list[int]]:
    """The vectorised part: the accepted frames in blocks, and the positions refused."""
    n = len(frames)
    sizes = np.fromiter(map(len, frames), np.int64, n)
    starts = np.cumsum(sizes) - sizes
    # header fields the checks need, read in place (a short frame reads garbage, and fails)
    short = sizes < codec.MIN_FRAME_SIZE
    msg_id = raw[starts + _OFF_MSG_TYPE]
    flags = _read(raw, starts + _OFF_FLAGS, "H")
    signed = (flags & codec.FLAG_SIGNED) != 0
    crc_pos = sizes - 4 - np.where(signed, codec.TAG_LEN, 0)
    ok = ~short & (crc_pos >= codec.HEADER_SIZE)
    ok &= raw[starts + _OFF_VERSION] == schema.PROTOCOL_VERSION
    ok &= _KNOWN_TYPE[msg_id]
    ok &= (flags & ~_ALL_FLAGS) == 0
    payload_len = _read(raw, starts + _OFF_PAYLOAD_LEN, "H")
    ok &= payload_len == crc_pos - codec.HEADER_SIZE
    # CRC-32 of everything up to and including the CRC field: one C call per frame
    if signed.any():
        cut = crc_pos + 4
        crc = np.fromiter((zlib.crc32(memoryview(f)[:c]) if s else zlib.crc32(f)
                           for f, s, c in zip(frames, signed.tolist(), cut.tolist(),
                                              strict=True)), np.int64, n)
    else:
        crc = np.fromiter(map(zlib.crc32, frames), np.int64, n)
    ok &= crc == CRC_RESIDUE

    # structure key per frame: type, signing and its counts; the counts fix the layout, and
    # the layout must account for every payload byte
    key = np.full(n, -1, np.int64)
    present = np.flatnonzero(np.bincount(msg_id[ok], minlength=256))  # (np.unique: slower)
    for mid in present.tolist():
        spec = _SPECS[mid]
        idx = np.flatnonzero(ok & (msg_id == mid))
        plen = payload_len[idx]
        fits = plen >= spec.head_size
        size = np.full(len(idx), spec.const_size, np.int64)
        kval = np.full(len(idx), (mid << 56), np.int64)
        values: dict[str, np.ndarray] = {}
        for j, c in enumerate(spec.counts):
            v = _read(raw, starts[idx] + codec.HEADER_SIZE + c.offset, c.fmt)
            values[c.name] = v
            limit = schema.COUNT_LIMITS.get(c.name)
            if limit is not None:
                fits &= v <= limit
            kval |= v << (16 * (2 - j))
        for name, coef in spec.coef.items():
            size += coef * values[name]
        if spec.records is not None:
            rname, rconst, rcoef = spec.records
            rsize = np.full(len(idx), rconst, np.int64)
            for name, coef in rcoef.items():
                rsize += coef * values[name]
            size += values[rname] * rsize
        fits &= size == plen
        kval |= signed[idx].astype(np.int64) << 55
        key[idx] = np.where(fits, kval, -1)
        ok[idx] = fits

    # a board with a key must sign, with its key (per frame: HMAC is per frame anyway)
    if key_of is not None and ok.any():
        board = _read(raw, starts + _OFF_BOARD, "I")
        ok_idx = np.flatnonzero(ok)
        board_keys = {b: key_of(b) for b in np.unique(board[ok_idx]).tolist()}
        if any(k is not None for k in board_keys.values()):
            for i, b, s, c in zip(ok_idx.tolist(), board[ok_idx].tolist(),
                                  signed[ok_idx].tolist(), crc_pos[ok_idx].tolist(),
                                  strict=True):
                k = board_keys[b]
                if k is None:
                    continue
                mv = memoryview(frames[i])
                if not s or not hmac.compare_digest(mv[c + 4:].tobytes(),
                                                    codec.compute_tag(k, mv[:c + 4])):
                    ok[i] = False

    # group by key; a block is its frames copied out of the joined buffer in one take, through
    # a view whose rows start at every byte (the frames' offsets are irregular)
    blocks: list[Block] = []
    ok_idx = np.flatnonzero(ok)
    if len(ok_idx):
        order = ok_idx[np.argsort(key[ok_idx], kind="stable")]
        sorted_keys = key[order]
        edges = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        counts = np.diff(np.concatenate(([0], edges, [len(order)])))
        start = 0
        for kv, k in zip(sorted_keys[np.concatenate(([0], edges))].tolist(), counts.tolist(),
                         strict=True):
            spec = _SPECS[kv >> 56]
            cvals = {c.name: (kv >> (16 * (2 - j))) & 0xFFFF for j, c in enumerate(spec.counts)}
            dt = frame_dtype(spec.msg_type, tuple(cvals.items()), bool((kv >> 55) & 1))
            index = order[start:start + k]
            start += k
            # (as raw bytes: numpy copies a structured dtype field by field, 8x slower)
            rows = np.ndarray((len(raw) - dt.itemsize + 1,), f"V{dt.itemsize}", raw, 0, (1,))
            arr = rows[starts[index]].view(dt)
            bad = np.zeros(k, bool)
            for path, allowed, is_enum in spec.checks:
                vals = arr
                for p in path:
                    vals = vals[p]
                if is_enum:
                    wrong = ~allowed[vals]
                else:
                    wrong = (vals & vals.dtype.type(allowed)) != 0
                bad |= wrong.reshape(k, -1).any(axis=1)
            if bad.any():
                ok[index[bad]] = False
                arr, index = arr[~bad], index[~bad]
            blocks.append(Block(spec.msg_type, bool((kv >> 55) & 1), cvals, index, arr))

    return DecodedBatch(n, blocks), np.flatnonzero(~ok).tolist()
