"""Frame verification for one host: CRC, tag with the board's key, replay window, counters.

`Verifier.verify(raw)` is the one entry point for a bare frame (an MQTT message, or a frame
cut from a byte stream by `stream.FrameReader`). It returns the decoded frame or raises a
`ProtocolError`, and counts every rejection by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from . import codec
from .errors import ErrorCounters, FingerprintMismatch, ProtocolError
from .layout import schema_fingerprint
from .replay import DEFAULT_WINDOW, ReplayWindow

KeyLookup = Callable[[int], bytes | None]


def check_birth(frame: codec.Frame) -> None:
    """A board built from another schema would be decoded as garbage: refuse it by name."""
    board_fp = frame["payload"]["schema_fingerprint"]
    if board_fp != schema_fingerprint():
        raise FingerprintMismatch(
            f"board {frame['board_id']} speaks schema fingerprint 0x{board_fp:08x}, this host "
            f"knows 0x{schema_fingerprint():08x}: update the board's firmware or the host")


class Verifier:
    def __init__(self, keys: Mapping[int, bytes] | KeyLookup | None = None, *,
                 replay_window: int | None = DEFAULT_WINDOW) -> None:
        if keys is None:
            self._key: KeyLookup = lambda _board: None
        elif isinstance(keys, Mapping):
            self._key = keys.get
        else:
            self._key = keys
        self.replay = ReplayWindow(replay_window) if replay_window else None
        self.counters = ErrorCounters()
        self.accepted = 0

    def verify(self, raw: bytes | bytearray | memoryview) -> codec.Frame:
        try:
            peek = codec.peek_board(raw)
            key = self._key(peek[0]) if peek else None
            frame = codec.decode_frame(raw, key=key)
            if frame["msg_type"] == "birth":
                check_birth(frame)
            if self.replay is not None:
                span = codec.seq_span(frame)
                self.replay.check(frame["board_id"], frame["boot"], frame["seq"], span)
                self.replay.accept(frame["board_id"], frame["boot"], frame["seq"], span)
        except ProtocolError as exc:
            self.counters.count(exc)
            raise
        self.accepted += 1
        return frame
