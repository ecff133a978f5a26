"""The firmware's frame encoder, run in the real MicroPython VM (WebAssembly port under Node):
it reproduces the golden vectors byte for byte, allocates nothing per sample, and its COBS
output is the host's. The generated wire module is what it builds on, so this also proves
that module imports and works in MicroPython."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from packsentry.hil.mpvm import run_micropython
from packsentry.protocol import cobs, codec, golden, layout

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
BOARD_TYPES = ["birth", "sample", "batch", "alarm", "status", "cmd_ack"]


def _enum(msg_type: str, field: str, name: str) -> int:
    lay = layout.payload_layout(msg_type)
    (f,) = [f for f in lay.scalars if f.name == field]
    assert f.enum is not None
    return {v: k for k, v in f.enum.items()}[name]


def _call(msg_type: str, frame: dict) -> str:
    """The MicroPython call that encodes `frame` with the firmware's FrameWriter."""
    p = frame["payload"]
    seq, flags = frame["seq"], frame["flags"] & ~codec.FLAG_SIGNED
    if msg_type == "sample":
        return (f"w.sample({seq}, {flags}, {p['pack_mv']}, {p['current_ma']}, "
                f"{p['riso_pos_kohm']}, {p['riso_neg_kohm']}, {p['alarm_level']}, "
                f"{p['alarm_flags']}, {p['temps_dc']}, {p['cells_mv']})")
    if msg_type == "batch":
        adds = ", ".join(
            f"w.add_to_batch({r['dt_ms']}, {r['pack_mv']}, {r['current_ma']}, "
            f"{r['riso_pos_kohm']}, {r['riso_neg_kohm']}, {r['alarm_level']}, "
            f"{r['alarm_flags']}, {r['temps_dc']}, {r['cells_mv']})" for r in p["samples"])
        return f"(w.begin_batch(), {adds or 'None'}, w.finish_batch({seq}, {flags}))[-1]"
    if msg_type == "birth":
        return (f"w.birth({seq}, {flags}, ({p['fw_major']}, {p['fw_minor']}, {p['fw_patch']}), "
                f"{_enum('birth', 'chemistry', p['chemistry'])}, {p['cells_series']}, "
                f"{p['rated_mah']}, {p['max_pack_mv']}, {p['max_temp_dc']}, "
                f"{p['sample_period_ms']}, {p['riso_period_ms']}, "
                f"{_enum('birth', 'current_sensor', p['current_sensor'])}, "
                f"{p['config_error']}, {p['probe_cell']})")
    if msg_type == "alarm":
        return (f"w.alarm({seq}, {flags}, {_enum('alarm', 'rule', p['rule'])}, {p['level']}, "
                f"{_enum('alarm', 'event', p['event'])}, "
                f"{_enum('alarm', 'subject', p['subject'])}, {p['subject_index']}, "
                f"{p['value']}, {p['threshold']}, {p['pre_event_samples']})")
    if msg_type == "status":
        return (f"w.status({seq}, {flags}, {p['uptime_s']}, {p['heap_free_bytes']}, "
                f"{p['store_pending_frames']}, {p['store_dropped_frames']}, {p['acked_seq']}, "
                f"{_enum('status', 'link', p['link'])}, {p['rssi_dbm']}, {p['config_error']}, "
                f"{p['rx_errors']})")
    if msg_type == "cmd_ack":
        return (f"w.cmd_ack({seq}, {flags}, {codec.MSG_IDS[p['cmd_type']]}, {p['cmd_seq']}, "
                f"{_enum('cmd_ack', 'result', p['result'])})")
    raise AssertionError(msg_type)


def _writer(frame: dict, signed: bool) -> str:
    p = frame["payload"]
    n_probes = p.get("n_probes", 0)
    n_cells = p.get("n_cells", 0)
    batch_max = max(1, p.get("n_samples", 1))
    signer = f"Signer({golden.GOLDEN_KEY!r})" if signed else "None"
    return (f"w = FrameWriter({frame['board_id']}, {frame['boot']}, {n_probes}, {n_cells}, "
            f"{batch_max}, {signer}); w.set_ts_ms({frame['ts_ms']})")


def run_firmware(script: str):
    res = run_micropython("from frames import FrameWriter\nfrom signer import Signer\n" + script,
                          dirs={"/firmware": FIRMWARE}, timeout_s=120)
    res.check()
    return res.stdout


def test_firmware_encodes_every_golden_vector_byte_for_byte() -> None:
    vectors = [(t, v) for t in BOARD_TYPES for v in golden.load(t)]
    lines = []
    for msg_type, v in vectors:
        frame = codec.decode_frame(bytes.fromhex(v["hex"]))
        lines.append(_writer(frame, v["signed"]))
        lines.append(f"n = {_call(msg_type, frame)}; print(bytes(w.buf[:n]).hex())")
    out = run_firmware("\n".join(lines)).split()
    assert len(out) == len(vectors)
    for got, (msg_type, v) in zip(out, vectors, strict=True):
        assert got == v["hex"], f"{msg_type}/{v['name']}"


def test_sampling_allocates_nothing_per_sample() -> None:
    out = run_firmware("""
import gc
from array import array
from cobs import cobs_encode_into, max_encoded_size
w = FrameWriter(0xC0FFEE, 3, 8, 96)
w.set_ts_ms(1764000000000)
stream = bytearray(max_encoded_size(len(w.buf)))
temps = array('h', range(250, 258))
cells = array('H', range(3600, 3696))

def run(k):
    for i in range(k):
        temps[i % 8] = 250 + i % 50
        n = w.sample(i, 4, 355000 + i, -12500 + i, 4444, 3220, 0, 0, temps, cells)
        cobs_encode_into(w.buf, n, stream)

def measure():  # locals only: no global may be created between the two readings
    before = gc.mem_alloc()
    run(1000)
    return gc.mem_alloc() - before

run(2)
print(measure())
""")
    assert int(out.split()[-1]) == 0, "heap grew while sampling"


def test_firmware_cobs_matches_host() -> None:
    rng = random.Random(7)
    blobs = [bytes(rng.choice([0, 0, 1, 255, rng.randrange(256)]) for _ in range(n))
             for n in [0, 1, 2, 253, 254, 255, 508, 600]]
    script = ["from cobs import cobs_encode_into, max_encoded_size"]
    for blob in blobs:
        script.append(f"src = {blob!r}; dst = bytearray(max_encoded_size(len(src)))")
        script.append("print(bytes(dst[:cobs_encode_into(src, len(src), dst)]).hex())")
    out = run_firmware("\n".join(script)).split()
    assert out == [(cobs.encode(b) + b"\0").hex() for b in blobs]


@pytest.mark.parametrize("data", [b"", b"123456789", bytes(range(256)) * 3])
def test_firmware_crc32_matches_zlib(data: bytes) -> None:
    import zlib

    out = run_firmware(f"""
from crc32 import crc32_into
d = {data!r}; o = bytearray(4); crc32_into(d, len(d), o, 0)
print(int.from_bytes(o, 'little'))
""")
    assert int(out.split()[-1]) == zlib.crc32(data)


COMMAND_TYPES = ["time_sync", "ack", "config_update", "rebirth", "reboot"]
FIELDS = ["unix_ms", "acked_boot", "acked_seq", "config_version", "config_json", "delay_ms"]


def test_firmware_parses_host_commands_and_enforces_signatures() -> None:
    vectors = [v for t in COMMAND_TYPES for v in golden.load(t)]
    script = ["from commands import parse_command", f"keyed = Signer({golden.GOLDEN_KEY!r})"]
    cases = ["keyed", "keyless", "other_board", "flipped"]
    for v in vectors:
        raw = bytes.fromhex(v["hex"])
        flipped = bytearray(raw)
        flipped[5] ^= 0x01
        board = codec.decode_frame(raw)["board_id"]
        for case, data, signer in zip(cases, [raw, raw, raw, bytes(flipped)],
                                      ["keyed", "None", "keyed", "keyed"], strict=True):
            to = board + 1 if case == "other_board" else board
            script.append(f"c = parse_command({data!r}, {to}, {signer}); "
                          f"print(repr((c.result, c.msg_type, c.seq, "
                          + ", ".join(f"c.{f}" for f in FIELDS) + ")))")
    rows = [ast.literal_eval(line) for line in run_firmware("\n".join(script)).splitlines()]
    ok, bad_tag, invalid = 0, 1, 2  # wire.RESULT_*
    for n, v in enumerate(vectors):
        keyed, keyless, other, flipped = rows[4 * n:4 * n + 4]
        frame = codec.decode_frame(bytes.fromhex(v["hex"]))
        must_sign = frame["msg_type"] in ("config_update", "reboot")
        assert keyed[0] == (ok if v["signed"] else bad_tag), v["name"]
        assert keyless[0] == (bad_tag if must_sign else ok), v["name"]
        assert other[0] == invalid and flipped[0] == invalid, v["name"]
        assert keyed[1:3] == (codec.MSG_IDS[frame["msg_type"]], frame["seq"])
        if v["signed"]:
            parsed = dict(zip(FIELDS, keyed[3:], strict=True))
            for field, value in frame["payload"].items():
                if field in parsed:
                    assert parsed[field] == value, (v["name"], field)


@pytest.mark.parametrize("signed", [False, True])
def test_mark_historical_reseals_the_frame(signed: bool) -> None:
    out = run_firmware(f"""
from frames import mark_historical
s = Signer({golden.GOLDEN_KEY!r}) if {signed} else None
w = FrameWriter(7, 1, 1, 2, 1, s)
w.set_ts_ms(1000)
n = w.sample(5, 4, 1, 2, 3, 4, 0, 0, [250], [3700, 3701])
frame = bytearray(w.buf[:n])
mark_historical(frame, n, s)
print(bytes(frame).hex())
""")
    frame = codec.decode_frame(bytes.fromhex(out.split()[-1]),
                               key=golden.GOLDEN_KEY if signed else None)
    assert frame["flags"] & codec.FLAGS["historical"] and frame["seq"] == 5
    assert frame["payload"]["cells_mv"] == [3700, 3701]
