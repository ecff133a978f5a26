"""The whole board program in the MicroPython VM, on the virtual board's `machine` stand-in:
birth, samples, a local L3 with its pre-event data, a host command, the alarm output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packsentry.hil.firmware_script import (
    BQ_REGS,
    IMPORTS,
    NULL_UART,
    VM_DIRS,
    heap_script,
    inputs,
    ntc_uv,
)
from packsentry.hil.mpvm import run_micropython
from packsentry.protocol import codec, golden, layout, stream
from packsentry.protocol.verify import Verifier

REPO = Path(__file__).resolve().parent.parent


CONFIG = {"board_id": 0x00C0FFEE, "chemistry": "nmc", "cells_series": 4, "n_cells": 4,
          "max_pack_mv": 16_800, "sample_period_ms": 100, "riso_settle_ms": 0,
          "riso_period_ms": 1_000, "pins": {"ntc": [32, 33]},
          "pack_divider_ratio_c": 1_000}  # 10:1, so 1.5 V at the ADC is a 15 V pack

def run_board(script: str, config: dict = CONFIG) -> list:
    """Run the board for the scenario `script`; return what its UART carried, decoded."""
    res = run_micropython(f"""
{IMPORTS}os.mkdir('/flash')
{inputs()}
cfg = config.parse({json.dumps(config)!r})
uart = machine.UART(0)
board = app.Board(cfg, machine, app.SerialLink(uart, 2048), root='/flash/')
board.tick_ms = 100
async def scenario():
    task = asyncio.create_task(board.run())
{script}
    board.running = False
    await asyncio.sleep_ms(150)
await scenario()
print(bytes(uart.tx).hex())
print(machine.outputs['pins'].get({CONFIG['pins'].get('alarm_out', 2)}, 0),
      machine.outputs['wdt_feeds'])
""", dirs=VM_DIRS,
        timeout_s=60).check()
    lines = res.stdout.split()
    reader = stream.FrameReader(Verifier(replay_window=None))  # the board's output as sent
    received = reader.feed(bytes.fromhex(lines[-3]))
    assert all(r.error is None for r in received), [r.error for r in received if r.error]
    return [r.frame for r in received] + [("alarm_pin", int(lines[-2]), int(lines[-1]))]


def test_board_reports_and_raises_a_local_l3_with_pre_event_data() -> None:
    *frames, (_, alarm_pin, wdt_feeds) = run_board(f"""
    await asyncio.sleep_ms(650)
    machine.inputs['adc_uv'][33] = {ntc_uv(62)}  # probe 2 jumps to 62 degC
    await asyncio.sleep_ms(450)
""")
    types = [f["msg_type"] for f in frames]
    assert types[0] == "birth"
    birth = frames[0]["payload"]
    assert birth["schema_fingerprint"] == layout.schema_fingerprint()
    assert (birth["n_probes"], birth["n_cells"], birth["config_error"]) == (2, 4, 0)
    samples = [f for f in frames if f["msg_type"] == "sample"
               and not f["flags"] & codec.FLAGS["pre_event"]]
    assert len(samples) >= 8
    first = samples[0]["payload"]
    assert abs(first["pack_mv"] - 15_000) <= 2
    assert all(abs(t - e) <= 2 for t, e in zip(first["temps_dc"], [250, 260], strict=True))
    assert first["cells_mv"] == [9343 * 396 // 1000] * 4
    alarms = [f["payload"] for f in frames if f["msg_type"] == "alarm"]
    # 62 degC next to 25 degC: both the high temperature and the spread are L3
    assert sorted((a["rule"], a["level"], a["event"]) for a in alarms) == [
        ("temp_high", 3, "raised"), ("temp_spread", 3, "raised")]
    raised = next(a for a in alarms if a["rule"] == "temp_high")
    assert raised["value"] >= 600 and raised["subject"] == "probe" and raised["subject_index"] == 1
    pre = [f for f in frames if f["flags"] & codec.FLAGS["pre_event"]]
    assert len(pre) == max(a["pre_event_samples"] for a in alarms) > 0
    assert sorted(f["seq"] for f in frames) == list(range(len(frames)))  # no seq reused
    assert samples[-1]["payload"]["alarm_level"] == 3
    assert alarm_pin == 1 and wdt_feeds >= 1


def test_board_obeys_time_sync_and_acks_it() -> None:
    sync = bytes.fromhex(golden.load("time_sync")[0]["hex"])
    encoded = stream.encode_stream_frame(sync)
    *frames, _ = run_board(f"""
    await asyncio.sleep_ms(350)
    uart.rx += {encoded!r}
    await asyncio.sleep_ms(350)
""")
    acks = [f for f in frames if f["msg_type"] == "cmd_ack"]
    assert [(a["payload"]["cmd_type"], a["payload"]["result"]) for a in acks] == [
        ("time_sync", "ok")]
    unix_ms = codec.decode_frame(sync)["payload"]["unix_ms"]
    after = [f for f in frames if f["seq"] > acks[0]["seq"]
             and not f["flags"] & codec.FLAGS["historical"]]  # re-sent frames keep their time
    before = [f for f in frames if f["seq"] < acks[0]["seq"]]
    assert all(not f["flags"] & codec.FLAGS["time_synced"] for f in before)
    assert after and all(f["flags"] & codec.FLAGS["time_synced"] for f in after)
    assert all(0 <= f["ts_ms"] - unix_ms < 5_000 for f in after)


def test_bad_config_still_runs_and_says_so() -> None:
    *frames, _ = run_board("    await asyncio.sleep_ms(250)\n",
                           config={**CONFIG, "chemistry": "lto"})
    birth = frames[0]["payload"]
    assert birth["config_error"] != 0 and birth["chemistry"] == "nmc"
    assert any(f["msg_type"] == "sample" for f in frames)


def test_unacknowledged_frames_are_resent_as_historical_after_the_host_returns() -> None:
    sync = bytes.fromhex(golden.load("time_sync")[0]["hex"])
    ack = codec.decode_frame(bytes.fromhex(golden.load("ack")[0]["hex"]))
    del ack["crc32"], ack["tag"]
    ack = {**ack, "flags": 0, "payload": {"acked_boot": 1, "acked_seq": 2}}
    cmds = [stream.encode_stream_frame(codec.encode_frame(ack)),
            stream.encode_stream_frame(sync)]
    *frames, _ = run_board(f"""
    await asyncio.sleep_ms(450)
    uart.rx += {cmds[0]!r}  # the host stored seqs 0..2 of boot 1
    await asyncio.sleep_ms(150)
    uart.rx += {cmds[1]!r}  # time sync: the host is on the line, re-send the rest
    await asyncio.sleep_ms(250)
    print(board.store.pending_count)
""")
    historical = [f for f in frames if f["flags"] & codec.FLAGS["historical"]]
    assert historical, "nothing was re-sent"
    assert min(f["seq"] for f in historical) == 3  # 0..2 were acknowledged
    live = {f["seq"]: f for f in frames if not f["flags"] & codec.FLAGS["historical"]}
    for f in historical:  # the same frames, flagged and resealed
        assert f["payload"] == live[f["seq"]]["payload"]


def test_a_whole_sampling_tick_allocates_nothing() -> None:
    """Sensors, local safety, pre-event ring, frame, COBS and the link write, 1 000 times."""
    res = run_micropython(heap_script(CONFIG, 1000, persist=False), dirs=VM_DIRS,
                          timeout_s=60).check()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["samples"] >= 990 and out["bytes"] > 1000 * 60  # it sampled and reported
    assert out["allocated"] == 0, f"{out['allocated']} bytes allocated over 1000 ticks"


BOARD = CONFIG["board_id"]
INJECTED = {"pack_mv": 14_321, "current_ma": -2_345, "riso_pos_kohm": 4_321,
            "riso_neg_kohm": 3_210, "temps_dc": [317, -52], "cells_mv": [3_581, 3_582, 3_583,
                                                                     3_584]}


def test_an_injected_tick_allocates_nothing() -> None:
    """sensor_source injected (a HIL rig's board): 1 000 ticks on fresh injections (one
    every other tick, outside the measurement: a command's signature check allocates), then
    1 000 on a stale one (INVALID): no heap growth either way."""
    config = {**CONFIG, "sensor_source": "injected"}
    res = run_micropython(f"""
{IMPORTS}os.mkdir('/flash')
{NULL_UART}cfg = config.parse({json.dumps(config)!r})
board = app.Board(cfg, machine, app.SerialLink(Wire(), 2048), root='/flash/',
                  persist_frames=False)
board.clock.sync(1_764_000_000_000)
from signer import Signer
import time
cmd = __import__('commands').parse_command(memoryview({codec.encode_frame({
    "msg_type": "inject", "flags": 0, "board_id": BOARD, "boot": 1, "seq": 1, "ts_ms": 0,
    "payload": {"n_probes": 2, "n_cells": 4, **INJECTED}}, key=golden.GOLDEN_KEY)!r}), {BOARD},
    Signer({golden.GOLDEN_KEY!r}))
assert cmd.result == 0, cmd
now = time.ticks_ms()
for i in range(50):
    board.sampler.inject(cmd, now + 100 * i)
    board.tick(now + 100 * i)
await asyncio.sleep_ms(5)
def fresh():  # injected every other tick: a reading holds for two (200 ms)
    total = 0
    for j in range(500):
        t = now + 5_000 + 200 * j
        board.sampler.inject(cmd, t)
        before = gc.mem_alloc()
        board.tick(t)
        board.tick(t + 100)
        total += gc.mem_alloc() - before
    return total
def stale():
    before = gc.mem_alloc()
    for i in range(1000):
        board.tick(now + 200_000 + 100 * i)
    return gc.mem_alloc() - before
print(fresh(), board.sampler.pack_mv, stale(), board.sampler.pack_mv == 0xFFFFFFFF, board.seq)
""", dirs=VM_DIRS,
        timeout_s=60).check()
    fresh, pack_mv, stale, invalid, seq = res.stdout.split()[-5:]
    assert int(pack_mv) == INJECTED["pack_mv"] and invalid == "True"
    assert int(seq) >= 2000  # it reported every tick
    assert (int(fresh), int(stale)) == (0, 0), f"{fresh} B fresh, {stale} B stale"


@pytest.mark.parametrize("n_cells", [4, 16])  # no chip on the bus; more than one chip's 15
def test_a_cell_monitor_that_cannot_start_does_not_stop_the_board(n_cells: int) -> None:
    """Cells read INVALID, everything else keeps running. A board that raised here would
    reboot forever."""
    config = {**CONFIG, "n_cells": n_cells, "cells_series": n_cells}
    res = run_micropython(f"""
{IMPORTS}os.mkdir('/flash')
machine.inputs['adc_uv'].update({{36: 1_500_000, 39: 1_650_000, 32: {ntc_uv(25)},
                                  33: {ntc_uv(26)}}})
uart = machine.UART(0)  # and no I2C device registered at all
board = app.Board(config.parse({json.dumps(config)!r}), machine, app.SerialLink(uart, 2048),
                  root='/flash/')
board.tick_ms = 100
task = asyncio.create_task(board.run())
await asyncio.sleep_ms(300)
board.running = False
await asyncio.sleep_ms(150)
print(bytes(uart.tx).hex())
""", dirs=VM_DIRS).check()
    assert "BQ769x0 cell monitor did not start" in res.stdout
    reader = stream.FrameReader(Verifier(replay_window=None))
    frames = [r.frame for r in reader.feed(bytes.fromhex(res.stdout.split()[-1]))]
    samples = [f["payload"] for f in frames if f["msg_type"] == "sample"]
    assert len(samples) >= 2, "the board stopped"
    assert all(s["cells_mv"] == [0xFFFF] * n_cells for s in samples)
    assert abs(samples[0]["pack_mv"] - 15_000) <= 2


def test_config_update_is_authenticated_validated_and_atomic() -> None:
    key = golden.GOLDEN_KEY
    base = {**CONFIG, "key_hex": key.hex()}
    new = json.dumps({**base, "sample_period_ms": 2_000}).encode()
    bad = json.dumps({**base, "chemistry": "lto"}).encode()

    def update(body: bytes, seq: int, signed: bool) -> bytes:
        frame = {"msg_type": "config_update", "flags": 0, "board_id": base["board_id"],
                 "boot": 1, "seq": seq, "ts_ms": 0,
                 "payload": {"config_version": 2, "config_json": body}}
        return codec.encode_frame(frame, key=key if signed else None)

    cases = [update(new, 1, signed=False), update(bad, 2, signed=True),
             update(new, 3, signed=True)]
    res = run_micropython(f"""
{IMPORTS}os.mkdir('/flash')
machine.inputs['i2c'][0x08] = {BQ_REGS!r}
with open('/flash/config.json', 'w') as f:
    f.write({json.dumps(base)!r})
uart = machine.UART(0)
board = app.Board(config.load('/flash/config.json'), machine, app.SerialLink(uart, 2048),
                  root='/flash/')
for frame in {cases!r}:
    await asyncio.sleep_ms(2)  # let this VM collect between commands (see IMPORTS)
    board.handle_command(memoryview(frame))
    with open('/flash/config.json') as f:
        print('RESULT', json.loads(f.read())['sample_period_ms'], board.reboot_at is not None)
print(bytes(uart.tx).hex())
""", dirs=VM_DIRS).check()
    lines = res.stdout.split()
    results = [line.split()[1:] for line in res.stdout.splitlines() if line.startswith("RESULT")]
    # unsigned: refused; signed but invalid: refused; signed and valid: written, reboot due
    assert results == [["100", "False"], ["100", "False"], ["2000", "True"]]
    assert "config: chemistry = 'lto' is invalid" in res.stdout
    frames = stream.FrameReader(Verifier(replay_window=None)).feed(bytes.fromhex(lines[-1]))
    acks = [(r.frame["payload"]["cmd_seq"], r.frame["payload"]["result"]) for r in frames
            if r.frame and r.frame["msg_type"] == "cmd_ack"]
    assert acks == [(1, "bad_tag"), (2, "invalid"), (3, "ok")]
    assert all(r.frame and r.frame["flags"] & codec.FLAG_SIGNED for r in frames)
