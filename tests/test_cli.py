"""`packsentry decode` / `encode` as a tester runs them: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packsentry.protocol import golden, schema

EXE = shutil.which("packsentry", path=str(Path(sys.executable).parent))
ALL = [v for t in schema.PAYLOADS for v in golden.load(t)]
KEY = golden.GOLDEN_KEY.hex()


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    assert EXE, "console script `packsentry` is not installed in this venv"
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, timeout=60)


def test_encode_decode_round_trips_every_golden_vector() -> None:
    decoded = []
    for signed in (True, False):
        vs = [v for v in ALL if v["signed"] == signed]
        dec = run("decode", "--strict", *(["--key", KEY] if signed else []),
                  *[v["hex"] for v in vs])
        assert dec.returncode == 0, dec.stderr.decode()
        lines = dec.stdout.decode().splitlines()
        assert len(lines) == len(vs)
        for line, v in zip(lines, vs, strict=True):
            obj = json.loads(line)
            assert {k: obj[k] for k in v["frame"]} == v["frame"]
            decoded.append((line, v["hex"]))
    # decode's output is encode's input: one stream, one key, signed where flagged
    enc = run("encode", "--key", KEY, "-", stdin="\n".join(d for d, _ in decoded).encode())
    assert enc.returncode == 0, enc.stderr.decode()
    assert enc.stdout.decode().split() == [h for _, h in decoded]


def test_cobs_stream_file_round_trip(tmp_path: Path) -> None:
    frames = tmp_path / "frames.jsonl"
    frames.write_text("".join(json.dumps(v["frame"]) + "\n" for v in ALL if not v["signed"]))
    out = tmp_path / "stream.bin"
    assert run("encode", "--cobs", "-o", str(out), str(frames)).returncode == 0
    dec = run("decode", "--strict", str(out))
    assert dec.returncode == 0, dec.stderr.decode()
    assert len(dec.stdout.splitlines()) == sum(not v["signed"] for v in ALL)
    offsets = [json.loads(x)["offset"] for x in dec.stdout.splitlines()]
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_flipped_bit_names_the_crc_failure() -> None:
    raw = bytearray.fromhex(ALL[0]["hex"])
    raw[20] ^= 0x10
    res = run("decode", "--strict", raw.hex())
    assert res.returncode == 1
    obj = json.loads(res.stdout)
    assert obj["error"] == "crc_mismatch" and "CRC-32 mismatch" in obj["message"]
    assert obj["offset"] == 0
    assert b"Traceback" not in res.stderr and b"crc_mismatch: 1" in res.stderr
    assert run("decode", raw.hex()).returncode == 0  # reported, but not fatal without --strict


def test_errors_in_a_stream_carry_their_offset(tmp_path: Path) -> None:
    enc = run("encode", "--cobs", "-o", str(tmp_path / "s.bin"), json.dumps(
        golden.load("sample")[0]["frame"]))
    assert enc.returncode == 0
    one = (tmp_path / "s.bin").read_bytes()
    data = one + b"\x09junk\x00" + one  # code 9 overruns the 4 bytes
    (tmp_path / "mixed.bin").write_bytes(data)
    res = run("decode", str(tmp_path / "mixed.bin"), "--no-replay-check")
    objs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o.get("error") for o in objs] == [None, "framing", None]
    assert objs[1]["offset"] == len(one) and objs[2]["offset"] == len(one) + 6


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["decode", "zz-not-hex"], b"", b"neither a file nor a hex string"),
    (["decode", "abc"], b"", b"odd number of hex digits"),
    (["decode", "--key", "xyz", "00"], b"", b"the key is not hex"),
    (["encode", "-"], b"{not json", b"invalid JSON"),
    (["encode", "-"], b'{"msg_type": "nope"}', b"unknown message type"),
    (["encode", "-"], b'{"msg_type": "reboot", "board_id": 1, "boot": 1, "seq": 1, "ts_ms": 1,'
                      b' "payload": {}}', b"'delay_ms' is missing"),
    (["encode", "-"], b'{"msg_type": "reboot", "flags": ["signed"], "board_id": 1, "boot": 1,'
                      b' "seq": 1, "ts_ms": 1, "payload": {"delay_ms": 5}}', b"pass --key"),
    (["encode", "-"], b'[1, 2]', b"expected a JSON object"),
    (["decode", "/nonexistent/dir/"], b"", b"neither a file nor a hex string"),
])
def test_bad_input_is_one_clear_line(args: list[str], stdin: bytes, message: bytes) -> None:
    res = run(*args, stdin=stdin)
    assert res.returncode == 2
    assert message in res.stderr, res.stderr
    assert b"Traceback" not in res.stderr
