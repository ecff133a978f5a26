"""Every kind of bad input gets its typed error, a message naming the problem, and a count."""

from __future__ import annotations

import struct
import zlib

import pytest

from packsentry.protocol import codec, errors, golden, layout, stream
from packsentry.protocol.verify import Verifier

SAMPLE = bytes.fromhex(golden.load("sample")[0]["hex"])
SIGNED = bytes.fromhex(golden.load("sample")[1]["hex"])
BIRTH = bytes.fromhex(golden.load("birth")[0]["hex"])
KEY = golden.GOLDEN_KEY


def recrc(body: bytes) -> bytes:
    """A frame with a valid CRC around `body` (to reach the checks behind the CRC)."""
    return body + struct.pack("<I", zlib.crc32(body))


def patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    body = bytearray(raw[:-4])
    struct.pack_into(fmt, body, offset, value)
    return recrc(bytes(body))


def field_offset(msg_type: str, name: str) -> int:
    off = 0
    for f in layout.payload_layout(msg_type).scalars:
        if f.name == name:
            return off
        off += f.size
    raise KeyError(name)


def test_truncated() -> None:
    with pytest.raises(errors.TruncatedFrame, match="truncated: 10 bytes"):
        codec.decode_frame(SAMPLE[:10])


def test_truncated_frame_reads_as_crc_failure_with_length_hint() -> None:
    with pytest.raises(errors.CrcMismatch, match=f"announces {len(SAMPLE)} bytes, got 60"):
        codec.decode_frame(SAMPLE[:60])


def test_wrong_crc() -> None:
    bad = SAMPLE[:-1] + bytes([SAMPLE[-1] ^ 1])
    with pytest.raises(errors.CrcMismatch, match="CRC-32 mismatch"):
        codec.decode_frame(bad)


def test_bad_tag_and_missing_tag() -> None:
    with pytest.raises(errors.BadTag, match="does not match the board's key"):
        codec.decode_frame(SIGNED, key=b"\x01" * 32)
    with pytest.raises(errors.MissingTag, match="not signed"):
        codec.decode_frame(SAMPLE, key=KEY)
    assert codec.decode_frame(SIGNED, key=KEY)["seq"] == 43


def test_unknown_version_names_both() -> None:
    with pytest.raises(errors.UnsupportedVersion, match=r"version 9 is not supported.*version 1"):
        codec.decode_frame(patched(SAMPLE, 0, "<B", 9))


def test_unknown_type() -> None:
    with pytest.raises(errors.UnknownMessageType, match="0x7f"):
        codec.decode_frame(patched(SAMPLE, 1, "<B", 0x7F))


def test_undefined_flag_bit() -> None:
    with pytest.raises(errors.BadValue, match="undefined bits 0x100"):
        codec.decode_frame(patched(SAMPLE, 2, "<H", 0x104))


def test_payload_len_disagreeing_with_frame() -> None:
    with pytest.raises(errors.BadLength, match="announces a 500-byte payload"):
        codec.decode_frame(patched(SAMPLE, 24, "<H", 500))


def test_absurd_count_rejected_before_allocation() -> None:
    off = codec.HEADER_SIZE + field_offset("sample", "n_cells")
    with pytest.raises(errors.BadLength, match=r"n_cells is 65535, more than .* 256"):
        codec.decode_frame(patched(SAMPLE, off, "<H", 0xFFFF))


def test_count_beyond_payload() -> None:
    with pytest.raises(errors.BadLength, match="cells_mv: 200 values announced"):
        codec.decode_frame(patched(SAMPLE, codec.HEADER_SIZE + field_offset("sample", "n_cells"),
                                   "<H", 200))


def test_unknown_enum_value() -> None:
    off = codec.HEADER_SIZE + field_offset("birth", "chemistry")
    with pytest.raises(errors.BadValue, match="chemistry: 99"):
        codec.decode_frame(patched(BIRTH, off, "<B", 99))


def test_fingerprint_mismatch_names_both() -> None:
    off = codec.HEADER_SIZE + field_offset("birth", "schema_fingerprint")
    with pytest.raises(errors.FingerprintMismatch, match=r"0x12345678.*knows 0x"):
        Verifier().verify(patched(BIRTH, off, "<I", 0x12345678))


def test_replayed_seq_is_rejected_and_counted() -> None:
    v = Verifier()
    v.verify(SAMPLE)
    with pytest.raises(errors.DuplicateFrame, match="already received"):
        v.verify(SAMPLE)
    assert v.counters == {"duplicate": 1}


def _stream(frames: list[bytes]) -> bytes:
    return b"".join(stream.encode_stream_frame(f) for f in frames)


def _frames(n: int) -> list[bytes]:
    f = codec.decode_frame(SAMPLE)
    del f["crc32"], f["tag"]
    return [codec.encode_frame({**f, "seq": 100 + i}) for i in range(n)]


def test_garbage_between_delimiters_costs_one_frame() -> None:
    frames = _frames(4)
    data = _stream(frames[:2]) + b"\x07garbage\xff\x00" + _stream(frames[2:])
    reader = stream.FrameReader()
    got = reader.feed(data)
    assert [r.frame["seq"] for r in got if r.frame] == [100, 101, 102, 103]
    bad = [r for r in got if r.error]
    assert len(bad) == 1 and bad[0].offset == len(_stream(frames[:2]))
    assert sum(reader.counters.values()) == 1


def test_frame_split_across_reads_at_every_point() -> None:
    data = _stream(_frames(3))
    for cut in range(1, len(data)):
        reader = stream.FrameReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert [r.frame["seq"] for r in got] == [100, 101, 102], cut


def test_byte_at_a_time() -> None:
    data = _stream(_frames(2))
    reader = stream.FrameReader()
    got = [r for b in data for r in reader.feed(bytes([b]))]
    assert [r.frame["seq"] for r in got] == [100, 101]
    assert got[1].offset == len(stream.encode_stream_frame(_frames(1)[0]))


def test_oversized_run_is_dropped_and_reader_resyncs() -> None:
    reader = stream.FrameReader(max_encoded=500)
    got = reader.feed(b"\x01" * 300) + reader.feed(b"\x01" * 300)
    assert [r.error.reason for r in got] == ["oversized"]
    got = reader.feed(b"\x01" * 1000 + b"\x00" + _stream(_frames(1)))
    assert [r.frame["seq"] for r in got if r.frame] == [100]
    assert reader.counters == {"oversized": 1}


def test_cobs_error_is_typed() -> None:
    reader = stream.FrameReader()
    (r,) = reader.feed(b"\x09ab\x00")
    assert r.error.reason == "framing" and "runs" in r.error.message
