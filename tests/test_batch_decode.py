"""The batched decoder (protocol/batch.py) accepts exactly what codec.decode_frame accepts,
decodes it to the same values and rejects the rest with the same error, class and message: on
every golden vector, on random frames of every type, and on corrupted ones (bit flips with and
without a recomputed CRC, so that the checks behind the CRC are reached too)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import frame

from packsentry.protocol import batch, codec, golden, layout, reference, schema
from packsentry.protocol.errors import ProtocolError

KEY = golden.GOLDEN_KEY
OTHER_KEY = bytes(range(1, 33))


def golden_frames() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for t in schema.PAYLOADS for v in golden.load(t)]


def outcome(raw: bytes, key: bytes | None) -> object:
    try:
        return codec.decode_frame(raw, key=key)
    except ProtocolError as exc:
        return (type(exc), str(exc))


def check_agrees(frames: list[bytes], keys: dict[int, bytes] | None = None) -> batch.DecodedBatch:
    res = batch.decode_batch(frames, keys)
    assert res.n == len(frames)
    assert res.extra == {}, "the vectorised checks refused a frame the codec accepts"
    got = res.frames()
    for i, raw in enumerate(frames):
        peek = codec.peek_board(raw)
        key = keys.get(peek[0]) if keys and peek else None
        want = outcome(raw, key)
        have = got[i]
        if isinstance(have, ProtocolError):
            have = (type(have), str(have))
        assert have == want, f"frame {i}: {raw.hex()}"
    blocks_rows = sorted(i for b in res.blocks for i in b.index.tolist())
    assert blocks_rows == sorted(set(range(len(frames))) - set(res.errors))
    return res


def recrc(raw: bytes) -> bytes:
    """Recompute the CRC of an unsigned frame (so that a patched field gets past it)."""
    body = raw[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


# -- golden vectors ----------------------------------------------------------------------------


def test_golden_vectors_one_by_one_and_together() -> None:
    frames = golden_frames()
    for raw in frames:
        check_agrees([raw])
    res = check_agrees(frames)
    assert not res.errors
    assert {b.msg_type for b in res.blocks} == set(schema.PAYLOADS)


def test_golden_vectors_with_keys() -> None:
    """Boards with a key must sign with it: the unsigned golden frames of those boards are
    MissingTag, signed ones pass; with the wrong key they are BadTag."""
    frames = golden_frames()
    boards = {codec.peek_board(f)[0] for f in frames}  # type: ignore[index]
    res = check_agrees(frames, {b: KEY for b in boards})
    assert {type(e).__name__ for e in res.errors.values()} == {"MissingTag"}
    res = check_agrees(frames, {b: OTHER_KEY for b in boards})
    assert "BadTag" in {type(e).__name__ for e in res.errors.values()}


def test_golden_vectors_corrupted() -> None:
    frames = golden_frames()
    bad = []
    for raw in frames:
        bad += [raw[:-1], raw[:10], raw + b"\0", bytes([raw[0] ^ 1]) + raw[1:],
                raw[:-5] + bytes([raw[-5] ^ 0x80]) + raw[-4:]]
    check_agrees(frames + bad + [b"", b"\x01"])


def test_semantic_faults_behind_a_good_crc() -> None:
    """Version, type, flags, lengths, limits, enums and flag bits, each with a valid CRC."""
    sample = bytes.fromhex(golden.load("sample")[0]["hex"])
    birth = bytes.fromhex(golden.load("birth")[0]["hex"])
    h = codec.HEADER_SIZE
    birth_fields = [f.name for f in layout.payload_layout("birth").scalars]
    chem_off = h + sum(f.size for f in layout.payload_layout("birth").scalars[
        :birth_fields.index("chemistry")])
    cases = [
        recrc(b"\x02" + sample[1:-4] + b"\0\0\0\0"),  # version
        recrc(sample[:1] + b"\x7f" + sample[2:]),  # type
        recrc(sample[:2] + b"\x00\x80" + sample[4:]),  # undefined flag bit
        recrc(sample[:h] + b"\x21" + sample[h + 1:]),  # n_probes 33 > 32
        recrc(sample[:h + 1] + b"\x11\x00" + sample[h + 3:]),  # n_cells 17: lengths disagree
        recrc(sample[:-8] + sample[-4:]),  # payload shorter than announced
        recrc(birth[:chem_off] + b"\x09" + birth[chem_off + 1:]),  # chemistry 9
        recrc(sample[:h + 14] + b"\xff\xff\xff\xff" + sample[h + 18:]),  # alarm flag bits
    ]
    res = check_agrees([sample, *cases, birth])
    assert len(res.errors) == len(cases)


# -- random frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", sorted(schema.PAYLOADS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_frames_of_each_type(msg_type: str, data: st.DataObject) -> None:
    fs = data.draw(st.lists(frame(msg_type), min_size=1, max_size=6))
    signed = data.draw(st.lists(st.booleans(), min_size=len(fs), max_size=len(fs)))
    raws = [codec.encode_frame(f, key=KEY if s else None) for f, s in zip(fs, signed,
                                                                            strict=True)]
    check_agrees(raws)
    check_agrees(raws, {f["board_id"]: KEY for f, s in zip(fs, signed, strict=True) if s})


@settings(max_examples=150, deadline=None)
@given(fs=st.lists(frame(), min_size=1, max_size=12), data=st.data())
def test_random_mixed_batches_with_corruption(fs: list[dict], data: st.DataObject) -> None:
    raws = []
    for f in fs:
        raw = codec.encode_frame(f)
        how = data.draw(st.sampled_from(["keep", "keep", "flip", "flip+crc", "cut", "extend"]))
        if how in ("flip", "flip+crc"):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:pos] + bytes([raw[pos] ^ (1 << data.draw(st.integers(0, 7)))]) \
                + raw[pos + 1:]
            if how == "flip+crc" and pos < len(raw) - 4:
                raw = recrc(raw)
        elif how == "cut":
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        elif how == "extend":
            raw = raw + data.draw(st.binary(min_size=1, max_size=8))
        raws.append(raw)
    check_agrees(raws)


# -- the arrays themselves ---------------------------------------------------------------------


def test_frame_dtype_is_the_encoded_layout() -> None:
    for name in schema.PAYLOADS:
        for v in golden.load(name):
            raw = bytes.fromhex(v["hex"])
            f = codec.decode_frame(raw)
            spec = batch._SPECS[layout.msg_type_ids()[name]]
            counts = tuple((c.name, f["payload"][c.name]) for c in spec.counts)
            dt = batch.frame_dtype(name, counts, f["tag"] is not None)
            assert dt.itemsize == len(raw)
            row = np.frombuffer(raw, dt)[0]
            assert int(row["crc32"]) == f["crc32"]
            assert int(row["header"]["seq"]) == f["seq"]


def test_blocks_group_by_layout_and_keep_input_positions() -> None:
    frames = golden_frames()
    sample = bytes.fromhex(golden.load("sample")[0]["hex"])
    mixed = [sample, *frames, sample]
    res = check_agrees(mixed)
    blocks = [b for b in res.blocks if b.msg_type == "sample" and not b.signed
              and b.counts == {"n_probes": 4, "n_cells": 16}]
    assert len(blocks) == 1
    assert blocks[0].index.tolist() == [i for i, f in enumerate(mixed) if f == sample]
    cells = blocks[0].payload["cells_mv"]
    assert cells.shape == (3, 16) and cells.dtype == np.dtype("<u2")
    assert cells[0].tolist() == codec.decode_frame(sample)["payload"]["cells_mv"]


def test_samples_unroll_batches_with_their_seqs_and_times() -> None:
    frames = golden_frames()
    res = check_agrees(frames)
    rows = {}
    for s in res.samples():
        for j in range(len(s)):
            rows[(int(s.board_id[j]), int(s.seq[j]))] = (
                int(s.ts_ms[j]), int(s.frame[j]), {k: v[j].tolist() for k, v in s.columns.items()},
                s.n_probes, s.n_cells)
    want = {}
    for i, raw in enumerate(frames):
        f = codec.decode_frame(raw)
        p = f["payload"]
        if f["msg_type"] == "sample":
            m = {k: v for k, v in p.items() if k not in ("n_probes", "n_cells")}
            want[(f["board_id"], f["seq"])] = (f["ts_ms"], i, m, p["n_probes"], p["n_cells"])
        elif f["msg_type"] == "batch":
            for j, rec in enumerate(p["samples"]):
                m = {k: v for k, v in rec.items() if k != "dt_ms"}
                want[(f["board_id"], f["seq"] + j)] = (f["ts_ms"] + rec["dt_ms"], i, m,
                                                       p["n_probes"], p["n_cells"])
    assert rows == want


def test_reference_agrees_too() -> None:
    """The construct reference gives the same frames as the batched decoder."""
    frames = golden_frames()
    got = batch.decode_batch(frames).frames()
    assert got == [reference.decode_frame(f) for f in frames]


def test_empty_and_memoryview_input() -> None:
    assert batch.decode_batch([]).blocks == []
    frames = golden_frames()
    res = batch.decode_batch([memoryview(f) for f in frames] + [bytearray(frames[0])])
    assert res.frames() == [codec.decode_frame(f) for f in [*frames, frames[0]]]


def test_buffer_reuse_leaves_earlier_results_intact() -> None:
    first = batch.decode_batch(golden_frames())
    before = first.frames()
    batch.decode_batch([b"\xff" * 300] * 10 + golden_frames()[::-1])
    assert first.frames() == before
