"""Typed protocol errors: each names the problem and carries a stable `reason` for counters.

The host counts rejected frames by `reason` (and the daemon quarantines them under it), so
reasons are part of the operator-facing contract: add new ones, never rename.
"""

from __future__ import annotations

from collections import Counter


class ProtocolError(Exception):
    """A frame or stream that cannot be accepted. `reason` is the counter key."""

    reason = "protocol_error"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset  # byte offset of the frame in its stream, when known


class TruncatedFrame(ProtocolError):
    reason = "truncated"


class CrcMismatch(ProtocolError):
    reason = "crc_mismatch"


class BadTag(ProtocolError):
    reason = "bad_tag"


class MissingTag(ProtocolError):
    """The board has a key but the frame is not signed."""

    reason = "missing_tag"


class ReplayedFrame(ProtocolError):
    """(boot, seq) behind the board's replay window, or from a boot no longer tracked."""

    reason = "replayed"


class DuplicateFrame(ReplayedFrame):
    """(boot, seq) already received: a replay, or a store-and-forward re-send of a frame
    whose ack was lost. A host acknowledges it again, and does not store it twice."""

    reason = "duplicate"


class UnsupportedVersion(ProtocolError):
    reason = "unsupported_version"


class UnknownMessageType(ProtocolError):
    reason = "unknown_type"


class FingerprintMismatch(ProtocolError):
    reason = "fingerprint_mismatch"


class BadLength(ProtocolError):
    """Lengths that do not add up, or counts beyond the schema's limits."""

    reason = "bad_length"


class BadValue(ProtocolError):
    """A field holds a value its schema does not define (unknown enum value, flag bit)."""

    reason = "bad_value"


class FramingError(ProtocolError):
    """Bytes between delimiters that are not a valid COBS block."""

    reason = "framing"


class OversizedFrame(ProtocolError):
    """More bytes without a delimiter than any valid frame can have."""

    reason = "oversized"


class ErrorCounters(Counter[str]):
    """Rejections counted by reason."""

    def count(self, error: ProtocolError) -> None:  # type: ignore[override]
        self[error.reason] += 1
