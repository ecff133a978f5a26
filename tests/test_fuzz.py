"""100 000 random and mutated inputs: the decoder and the stream reader only ever raise (or
report) typed ProtocolErrors, never anything else, and the reader never raises at all."""

from __future__ import annotations

import random
import struct
import zlib
from collections import Counter

from packsentry.protocol import codec, errors, golden, schema, stream
from packsentry.protocol.verify import Verifier

N_INPUTS = 100_000
SEEDS = [bytes.fromhex(v["hex"]) for t in schema.PAYLOADS for v in golden.load(t)]


def mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 4:
            b = b[:pos]
        elif op == 5 and len(b) >= 26:  # absurd counts / lengths in the interesting places
            struct.pack_into("<H", b, rng.choice([24, 26, 27, 28]) % (len(b) - 1), 0xFFFF)
    if rng.random() < 0.5 and len(b) > 4:  # re-seal, so mutations reach the parser behind CRC
        signed = len(b) >= 4 and b[2] & codec.FLAG_SIGNED
        end = len(b) - 4 - (codec.TAG_LEN if signed and len(b) > 50 else 0)
        if end > 0:
            struct.pack_into("<I", b, end, zlib.crc32(b[:end]))
    return bytes(b)


def inputs(rng: random.Random, n: int):
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 120))
        else:
            yield mutate(rng, rng.choice(SEEDS))


def test_fuzz_bare_frames_and_streams() -> None:
    rng = random.Random(20261124)
    verifier = Verifier({0x00C0FFEE: golden.GOLDEN_KEY})
    reader = stream.FrameReader(Verifier())
    outcomes: Counter[str] = Counter()
    chunk = bytearray()
    for data in inputs(rng, N_INPUTS):
        try:
            verifier.verify(data)
            outcomes["accepted"] += 1
        except errors.ProtocolError as exc:
            assert exc.message and exc.reason
            outcomes[exc.reason] += 1
        # the same inputs, as a stream: raw (not COBS) bytes, random split points
        chunk += data if rng.random() < 0.5 else stream.encode_stream_frame(data)
        if len(chunk) > 2000:
            cut = rng.randrange(len(chunk))
            for part in (chunk[:cut], chunk[cut:]):
                for r in reader.feed(bytes(part)):
                    assert (r.frame is None) != (r.error is None)
            chunk.clear()
    assert sum(outcomes.values()) == N_INPUTS
    # the mutations reached past the CRC into every later check
    for reason in ["crc_mismatch", "truncated", "bad_length", "bad_value", "unknown_type",
                   "unsupported_version", "bad_tag", "missing_tag"]:
        assert outcomes[reason] > 0, (reason, outcomes)
    assert reader.counters["framing"] > 0
