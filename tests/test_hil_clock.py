"""Time compression in the MicroPython VM (hil/mpvm.mjs --speed/--cpu): the script's clock and
sleeps run N times faster than real time, sleeps end on their deadline, computing costs the
chosen factor, and a host's time sync reaching the VM carries the VM's clock."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from test_firmware_app import REPO

from packsentry.hil.mpvm import RUNNER, clock_args, run_micropython
from packsentry.protocol import codec, golden, stream

SLEEPS = """
import asyncio, time, js
clock = js.mpvmClock
t0 = time.ticks_ms(); w0 = time.time(); r0 = clock.realMs()
gaps = []
for i in range(10):
    t = time.ticks_ms()
    await asyncio.sleep_ms(1000)
    gaps.append(time.ticks_diff(time.ticks_ms(), t))
print(time.ticks_diff(time.ticks_ms(), t0), int(time.time() - w0), clock.realMs() - r0)
print(min(gaps), max(gaps))
"""


@pytest.mark.parametrize("speed", [10, 300])
def test_sleeps_take_one_nth_of_the_real_time_and_end_on_their_deadline(speed: int) -> None:
    out = run_micropython(SLEEPS, speed=speed, cpu=1, timeout_s=30).check().stdout.split()
    ticks_ms, time_s, real_ms, shortest, longest = map(int, out)
    assert 10_000 <= ticks_ms < 10_300 and 9 <= time_s <= 11  # both clocks compressed
    assert real_ms < 10_000  # compressed (how much depends on the machine's load: no bound)
    assert 1000 <= shortest <= longest < 1_050  # each sleep ends on time (script's clock)


def test_speed_can_change_while_running() -> None:
    out = run_micropython("""
import asyncio, time, js
c = js.mpvmClock
r0 = c.realMs()
await asyncio.sleep_ms(2000)
r1 = c.realMs()
c.setSpeed(1000)
await asyncio.sleep_ms(2000)
print(r1 - r0, c.realMs() - r1, c.speed)
""", speed=10, cpu=1).check().stdout.split()
    slow, fast, speed = map(int, out)
    assert 180 <= slow <= 400 and fast <= 50 and speed == 1000


def test_real_time_options_are_left_out() -> None:
    assert clock_args() == []
    assert clock_args(100) == ["--speed", "100"]
    assert clock_args(2000, 50) == ["--speed", "2000", "--cpu", "50"]
    with pytest.raises(ValueError):
        clock_args(0)
    assert RUNNER.is_file()


# -- host time syncs -------------------------------------------------------------------------

def _time_sync(unix_ms: int, signed: bool = False) -> bytes:
    f = codec.decode_frame(bytes.fromhex(golden.load("time_sync")[0]["hex"]))
    del f["crc32"], f["tag"]
    f["payload"] = {"unix_ms": unix_ms}
    return codec.encode_frame(f, key=b"k" * 32 if signed else None)


def _publish(topic: bytes, payload: bytes, qos: int = 1) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + (b"\x12\x34" if qos else b"") + payload
    n, length = len(body), b""
    while True:
        b, n = n & 0x7F, n >> 7
        length += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | qos << 1]) + length + body


READER = """
import asyncio, binascii, json, time
import socket, wire
spec = json.dumps({"header_size": wire.HEADER_SIZE, "off_msg_type": wire.HEADER_OFF_MSG_TYPE,
                   "off_flags": wire.HEADER_OFF_FLAGS,
                   "off_payload_len": wire.HEADER_OFF_PAYLOAD_LEN,
                   "flag_signed": wire.FLAG_SIGNED, "msg_time_sync": wire.MSG_TIME_SYNC,
                   "time_sync_size": wire.TIME_SYNC_SIZE, "crc_len": wire.CRC_LEN})
s = socket.socket()
s.setblocking(False)
try:
    s.connect(("127.0.0.1", %(port)d))
except OSError:
    pass
import js
js.mpvmNet.timeSync(s.id, "%(framing)s", spec)
await asyncio.sleep_ms(3_600_000)  # an hour of the script's time, then read
buf = bytearray(4096)
got = b""
at = time.time_ns() // 1_000_000
while True:
    n = s.readinto(buf)
    if n == 0:  # the host closed: everything read
        break
    if n:
        got += bytes(buf[:n])
    await asyncio.sleep_ms(5)
print(at)
print(binascii.hexlify(got).decode())
"""


@pytest.mark.parametrize("framing", ["cobs", "mqtt"])
def test_a_host_time_sync_reaches_the_vm_with_the_vms_clock(framing: str) -> None:
    host_ms = int(time.time() * 1000)
    frames = [_time_sync(host_ms), bytes.fromhex(golden.load("ack")[0]["hex"]),
              _time_sync(host_ms, signed=True)]
    if framing == "cobs":
        wire = b"".join(stream.encode_stream_frame(f) for f in frames)
    else:
        wire = b"".join(_publish(b"packsentry/lab/1/cmd", f) for f in frames)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(wire[:7])  # in pieces: the bridge holds incomplete packets back
        time.sleep(0.05)
        conn.sendall(wire[7:])
        time.sleep(0.3)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    res = run_micropython(READER % {"port": server.getsockname()[1], "framing": framing},
                          dirs={"/firmware": REPO / "firmware", "/vboard": REPO / "hil" / "vboard"},
                          speed=10_000, cpu=1, timeout_s=30).check()
    server.close()
    vm_ms, hexed = res.stdout.split()
    got = bytes.fromhex(hexed)
    if framing == "cobs":
        out = [codec.decode_frame(r.raw) for r in stream.FrameReader().feed(got)]
    else:
        out, i = [], 0
        while i < len(got):
            n = got[i + 1]  # short packets: one length byte
            body = got[i + 2:i + 2 + n]
            out.append(codec.decode_frame(body[2 + 20 + 2:]))  # topic, packet id, frame
            i += 2 + n
    assert [f["msg_type"] for f in out] == ["time_sync", "ack", "time_sync"]
    synced = out[0]["payload"]["unix_ms"]
    # the VM's clock, an hour of compressed time ahead of the host's, when it read
    assert 0 <= synced - int(vm_ms) < 2_000
    assert synced - host_ms > 3_000_000
    assert out[1] == codec.decode_frame(frames[1])  # other frames pass untouched
    assert out[2]["payload"]["unix_ms"] == host_ms  # a signed one cannot be rewritten
