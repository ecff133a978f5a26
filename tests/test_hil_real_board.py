"""Real-board mode: the firmware's injected-sensor mode and the rig that drives it.

The firmware side runs in the MicroPython VM (the board program on the `machine` stand-in,
its ADCs and I2C chips giving readings no pack would): an `inject` is refused unsigned,
refused by a board whose config keeps sensor_source = "hardware" (its readings unchanged),
taken by an injected board and INVALID once stale. The rig side runs `hil run --board PORT`
against a virtual board (the real firmware in the VM, speed 1) on a pseudo-terminal standing
in for the ESP32's USB port, through the real daemon.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from packsentry.hil.mpvm import run_micropython
from packsentry.protocol import codec, golden, stream
from packsentry.protocol.verify import Verifier

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEY = golden.GOLDEN_KEY
BOARD_ID = 0x00C0FFEE
U16_INVALID, I16_INVALID = 0xFFFF, 0x7FFF
U32_INVALID, I32_INVALID = 0xFFFFFFFF, 0x7FFFFFFF


def ntc_uv(t_c: float) -> int:
    r = 10_000 * math.exp(3950 * (1 / (t_c + 273.15) - 1 / 298.15))
    return int(3_300_000 * r / (10_000 + r))


CONFIG = {"board_id": BOARD_ID, "key_hex": KEY.hex(), "chemistry": "nmc", "cells_series": 4,
          "n_cells": 4, "max_pack_mv": 16_800, "sample_period_ms": 500, "riso_settle_ms": 0,
          "riso_period_ms": 1_000, "pins": {"ntc": [32, 33]}, "pack_divider_ratio_c": 1_000}
IMPORTS = """
import asyncio, gc, json, os, time
import machine
for _name in ('wire', 'limits', 'config', 'intmath', 'ntc', 'analog', 'crc32', 'cobs', 'frames',
              'safety', 'ring', 'sampler', 'insulation', 'commands', 'clock', 'persist',
              'signer', 'store', 'app'):
    __import__(_name)
    await asyncio.sleep_ms(2)
import app, config
"""
# the stand-in's sensors: 15 V, 25 and 26 degC, cells of 3.7 V: nothing like the injection
BQ_REGS = {0x50: 0x0C, 0x59: 0xE0, 0x51: 0x00, 0x04: 0} | {
    0x0C + 2 * i: (9343 >> 8) for i in range(4)} | {0x0D + 2 * i: 9343 & 0xFF for i in range(4)}
READING = {"pack_mv": 14_321, "current_ma": -2_345, "riso_pos_kohm": 4_321,
           "riso_neg_kohm": 3_210, "temps_dc": [317, 305], "cells_mv": [3_581, 3_582, 3_583,
                                                                    3_584]}


def inject_frame(reading: dict, *, seq: int, key: bytes | None = KEY) -> bytes:
    frame = {"msg_type": "inject", "flags": 0, "board_id": BOARD_ID, "boot": 1, "seq": seq,
             "ts_ms": 0, "payload": {"n_probes": len(reading["temps_dc"]),
                                     "n_cells": len(reading["cells_mv"]),
                                     **{k: reading[k] for k in READING}}}
    return codec.encode_frame(frame, key=key)


def run_board(config: dict, script: str) -> tuple[list[dict], str]:
    """The board program for `script`; its UART's frames (verified with KEY) and stdout."""
    res = run_micropython(f"""
{IMPORTS}os.mkdir('/flash')
machine.inputs['adc_uv'].update({{36: 1_500_000, 39: 1_650_000, 32: {ntc_uv(25)},
                                  33: {ntc_uv(26)}, 34: 1_000_000, 35: 1_000_000}})
machine.inputs['i2c'][0x08] = {BQ_REGS!r}
uart = machine.UART(0)
board = app.Board(config.parse({json.dumps(config)!r}), machine, app.SerialLink(uart, 2048),
                  root='/flash/')
board.clock.sync(1_764_000_000_000)
async def tick(wait_ms=600):  # a report each tick: more than sample_period_ms apart
    await asyncio.sleep_ms(wait_ms)
    board.tick(time.ticks_ms())
{script}
print(bytes(uart.tx).hex())
""", dirs={"/firmware": REPO / "firmware", "/vboard": REPO / "hil" / "vboard"},
        timeout_s=60).check()
    reader = stream.FrameReader(Verifier(lambda _b: KEY, replay_window=None))
    received = reader.feed(bytes.fromhex(res.stdout.split()[-1]))
    assert all(r.error is None for r in received), [r.error for r in received if r.error]
    return [r.frame for r in received], res.stdout


def acks(frames: list[dict]) -> list[tuple[int, str]]:
    return [(f["payload"]["cmd_seq"], f["payload"]["result"]) for f in frames
            if f["msg_type"] == "cmd_ack"]


def readings(frames: list[dict]) -> list[dict]:
    return [{k: f["payload"][k] for k in READING} for f in frames if f["msg_type"] == "sample"]


def test_a_hardware_board_refuses_injection_and_keeps_its_readings() -> None:
    cmds = [inject_frame(READING, seq=1)]
    frames, out = run_board(CONFIG, f"""
await tick()
for c in {cmds!r}:
    board.handle_command(memoryview(c))
await tick()
""")
    assert acks(frames) == [(1, "disabled")]
    samples = readings(frames)
    assert len(samples) == 2 and samples[0] == samples[1]  # the sensors, before and after
    assert abs(samples[1]["pack_mv"] - 15_000) <= 2 and samples[1]["temps_dc"] != [317, 305]
    assert "sensor_source injected" not in out


def test_an_injected_board_takes_signed_readings_only_and_they_go_stale() -> None:
    config = {**CONFIG, "sensor_source": "injected"}
    other = {**READING, "pack_mv": 9_999}
    cmds = [inject_frame(other, seq=1, key=None),  # unsigned: never
            inject_frame(other, seq=2, key=bytes(32)),  # another key: never
            inject_frame({**READING, "temps_dc": [317]}, seq=3),  # one probe of two: invalid
            inject_frame(READING, seq=4)]
    frames, out = run_board(config, f"""
await tick()                            # nothing injected yet: INVALID
c = {cmds!r}
for f in c[:3]:
    board.handle_command(memoryview(f))
await tick()                            # still nothing taken: INVALID
board.handle_command(memoryview(c[3]))
await tick()                            # 0.6 s old: fresh (two ticks of 0.5 s)
await tick()                            # 1.2 s old: stale
""")
    assert "sensor_source injected" in out
    assert acks(frames) == [(1, "bad_tag"), (2, "bad_tag"), (3, "invalid"), (4, "ok")]
    invalid = {"pack_mv": U32_INVALID, "current_ma": I32_INVALID, "riso_pos_kohm": U16_INVALID,
               "riso_neg_kohm": U16_INVALID, "temps_dc": [I16_INVALID] * 2,
               "cells_mv": [U16_INVALID] * 4}
    assert readings(frames) == [invalid, invalid, READING, invalid]
    samples = [f for f in frames if f["msg_type"] == "sample"]
    assert all(f["payload"]["alarm_level"] == 0 for f in samples)  # markers raise nothing


def test_injected_readings_drive_the_local_safety_rules() -> None:
    """The board's own L3 comes from the injected temperature, as from a probe."""
    config = {**CONFIG, "sensor_source": "injected"}
    hot = inject_frame({**READING, "temps_dc": [650, 300]}, seq=1)
    frames, _ = run_board(config, f"""
board.handle_command(memoryview({hot!r}))
await tick()
""")
    alarms = [(f["payload"]["rule"], f["payload"]["level"], f["payload"]["value"])
              for f in frames if f["msg_type"] == "alarm"]
    assert ("temp_high", 3, 650) in alarms
