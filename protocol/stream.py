"""Reading frames from a byte stream (UART, USB, a capture file): COBS between 0x00 delimiters.

`FrameReader.feed(data)` takes whatever bytes a read returned, however they split frames,
and returns what completed: a `Received` per frame, decoded or rejected with its error and
byte offset in the stream. It never raises: garbage costs the frame it is in, and the reader
resynchronises at the next delimiter.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import cobs, codec
from .errors import OversizedFrame, ProtocolError
from .verify import Verifier

DELIMITER = 0
# Longest run of bytes without a delimiter that can still be a valid frame.
MAX_ENCODED_FRAME = cobs.max_encoded_size(codec.MAX_FRAME_SIZE)


@dataclass(frozen=True, slots=True)
class Received:
    offset: int  # stream offset of the frame's first (encoded) byte
    raw: bytes  # the frame as decoded from COBS (the encoded bytes if COBS itself failed)
    frame: codec.Frame | None = None
    error: ProtocolError | None = None


class FrameReader:
    def __init__(self, verifier: Verifier | None = None, *,
                 max_encoded: int = MAX_ENCODED_FRAME, verify: bool = True) -> None:
        self.verifier = verifier or Verifier()
        self.verify = verify  # False: only cut and COBS-decode (the caller verifies later)
        self.max_encoded = max_encoded
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self._discarding = False  # inside an oversized run: drop until the next delimiter

    @property
    def counters(self):
        return self.verifier.counters

    def feed(self, data: bytes | bytearray | memoryview) -> list[Received]:
        out: list[Received] = []
        buf = self._buf
        buf += data
        pos = 0
        while True:
            end = buf.find(DELIMITER, pos)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end > pos:  # empty runs are idle delimiters
                out.append(self._frame(self._start + pos, bytes(buf[pos:end])))
            pos = end + 1
        del buf[:pos]
        self._start += pos
        if len(buf) > self.max_encoded:
            if not self._discarding:
                err = OversizedFrame(f"{len(buf)} bytes without a delimiter: longer than any "
                                     f"frame ({self.max_encoded}); skipping to the next "
                                     f"delimiter", offset=self._start)
                self.verifier.counters.count(err)
                out.append(Received(self._start, b"", error=err))
            self._discarding = True
            self._start += len(buf)
            buf.clear()
        return out

    def _frame(self, offset: int, encoded: bytes) -> Received:
        try:
            raw = cobs.decode(encoded)
        except ProtocolError as exc:
            exc.offset = offset
            self.verifier.counters.count(exc)
            return Received(offset, encoded, error=exc)
        if not self.verify:
            return Received(offset, raw)
        try:
            return Received(offset, raw, frame=self.verifier.verify(raw))
        except ProtocolError as exc:  # already counted by the verifier
            exc.offset = offset
            return Received(offset, raw, error=exc)


def encode_stream_frame(frame_bytes: bytes) -> bytes:
    """One frame as it goes on a byte stream: COBS, then the delimiter."""
    return cobs.encode(frame_bytes) + b"\0"
