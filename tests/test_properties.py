"""The fast codec and construct agree, byte for byte and field for field, on random frames of
every message type (the strategies are derived from the schemas, so new types are covered)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import frame

from packsentry.protocol import codec, reference, schema

KEY = bytes(range(100, 132))


def _expected(f: dict, raw: bytes, signed: bool) -> dict:
    """What decoding `raw` must give: the input plus CRC, tag and the signed flag."""
    crc_pos = len(raw) - 4 - (codec.TAG_LEN if signed else 0)
    return {**f, "flags": f["flags"] | (codec.FLAG_SIGNED if signed else 0),
            "crc32": int.from_bytes(raw[crc_pos:crc_pos + 4], "little"),
            "tag": raw[crc_pos + 4:] if signed else None}


@pytest.mark.parametrize("msg_type", sorted(schema.PAYLOADS))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), signed=st.booleans())
def test_fast_codec_agrees_with_construct(msg_type: str, data: st.DataObject,
                                          signed: bool) -> None:
    f = data.draw(frame(msg_type))
    key = KEY if signed else None
    raw = codec.encode_frame(f, key=key)
    assert raw == reference.encode_frame(f, key=key), "encoders differ"
    expected = _expected(f, raw, signed)
    assert codec.decode_frame(raw, key=key) == expected
    assert reference.decode_frame(raw) == expected
    assert reference.decode_frame(raw, compiled=False) == expected


@settings(max_examples=200, deadline=None)
@given(f=frame())
def test_decode_encode_round_trip(f: dict) -> None:
    raw = codec.encode_frame(f)
    decoded = codec.decode_frame(raw)
    del decoded["crc32"], decoded["tag"]
    assert codec.encode_frame(decoded) == raw
