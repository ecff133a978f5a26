"""Trace files: every received frame with its receive time, append-safe.

    file    := magic record*
    magic   := b"PSTRACE1\\n"
    record  := COBS(rx_ms u64 LE | site_len u8 | site UTF-8 | frame bytes) 0x00

COBS framing makes the format append-safe: a writer killed mid-record leaves a tail with no
0x00 delimiter, which a reader skips (and a later append starts after a delimiter, so the torn
bytes cost that one record). Frames keep their own CRC, so a damaged record is reported by the
frame check, not silently used. One record per frame: 11 bytes plus the site name over the
raw frame (14 bytes with site "lab": 16 % on an 86-byte 16-cell sample).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packsentry.protocol import cobs
from packsentry.protocol.errors import FramingError

MAGIC = b"PSTRACE1\n"
_RX = struct.Struct("<QB")


class TraceError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TraceRecord:
    rx_ms: int
    site: str
    frame: bytes
    offset: int  # byte offset of the record in the file


class TraceWriter:
    def __init__(self, path: str | Path, *, sync: bool = False) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise TraceError(f"{self.path}: exists and is not a packsentry trace")
        self.f = open(self.path, "ab")
        self.sync = sync
        if new:
            self.f.write(MAGIC)
        else:
            self.f.write(b"\0")  # ends a torn last record, if any: it costs only that record
        self.f.flush()

    def append(self, rx_ms: int, site: str, frame: bytes) -> None:
        s = site.encode()[:255]
        self.f.write(cobs.encode(_RX.pack(rx_ms, len(s)) + s + frame) + b"\0")
        self.f.flush()  # in the kernel: a crash of this process loses nothing written
        if self.sync:
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def read(path: str | Path) -> Iterator[TraceRecord | TraceError]:
    """Records in file order; a damaged record is yielded as a TraceError, never raised."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    if not data.startswith(MAGIC):
        raise TraceError(f"{path}: not a packsentry trace (no {MAGIC!r} header)")
    pos = len(MAGIC)
    while pos < len(data):
        end = data.find(b"\0", pos)
        if end < 0:
            return  # torn tail: the writer died mid-record
        chunk = data[pos:end]
        if chunk:
            try:
                body = cobs.decode(chunk)
                rx_ms, n = _RX.unpack_from(body, 0)
                site = body[_RX.size:_RX.size + n].decode()
                frame = body[_RX.size + n:]
                yield TraceRecord(rx_ms, site, frame, pos)
            except (FramingError, struct.error, UnicodeDecodeError) as exc:
                yield TraceError(f"{path}: damaged record at byte {pos}: {exc}")
        pos = end + 1
