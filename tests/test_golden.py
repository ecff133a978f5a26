"""The committed golden vectors decode and encode identically with both codecs, and any single
flipped bit in any of them is rejected as a CRC failure."""

from __future__ import annotations

import json

import pytest

from packsentry.protocol import codec, errors, golden, jsonform, reference, schema

VECTORS = [(t, v) for t in schema.PAYLOADS for v in golden.load(t)]
IDS = [f"{t}-{v['name']}" for t, v in VECTORS]


def test_every_message_type_has_vectors() -> None:
    assert {t for t, _ in VECTORS} == set(schema.PAYLOADS)


@pytest.mark.parametrize(("msg_type", "vector"), VECTORS, ids=IDS)
def test_vector_matches_both_codecs(msg_type: str, vector: dict) -> None:
    raw = bytes.fromhex(vector["hex"])
    frame = jsonform.from_json(vector["frame"])
    assert frame["msg_type"] == msg_type
    key = golden.GOLDEN_KEY if vector["signed"] else None
    assert codec.decode_frame(raw, key=key) == frame
    assert reference.decode_frame(raw) == frame
    assert codec.encode_frame(frame, key=key) == raw
    assert reference.encode_frame(frame, key=key) == raw


@pytest.mark.parametrize(("msg_type", "vector"), VECTORS, ids=IDS)
def test_every_single_bit_flip_is_a_crc_failure(msg_type: str, vector: dict) -> None:
    raw = bytes.fromhex(vector["hex"])
    crc_end = len(raw) - (codec.TAG_LEN if vector["signed"] else 0)
    for bit in range(crc_end * 8):  # flips in the tag are the tag check's job, below
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.CrcMismatch, match="CRC-32 mismatch"):
            codec.decode_frame(bad)


@pytest.mark.parametrize(("msg_type", "vector"), [tv for tv in VECTORS if tv[1]["signed"]],
                         ids=[i for i, tv in zip(IDS, VECTORS, strict=True) if tv[1]["signed"]])
def test_signed_vectors_need_the_right_key(msg_type: str, vector: dict) -> None:
    raw = bytes.fromhex(vector["hex"])
    with pytest.raises(errors.BadTag):
        codec.decode_frame(raw, key=b"\x55" * 32)
    bad = bytearray(raw)
    bad[-1] ^= 0x80
    with pytest.raises(errors.BadTag):
        codec.decode_frame(bytes(bad), key=golden.GOLDEN_KEY)


def test_vector_files_are_valid_json_with_the_key() -> None:
    for t in schema.PAYLOADS:
        doc = json.loads((golden.VECTORS_DIR / f"{t}.json").read_text())
        assert doc["key_hex"] == golden.GOLDEN_KEY.hex()
