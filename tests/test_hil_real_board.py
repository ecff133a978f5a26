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
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hil_cli import hil

from packsentry.hil import scenario
from packsentry.hil.firmware_script import IMPORTS, VM_DIRS, inputs
from packsentry.hil.mpvm import run_micropython
from packsentry.hil.packsim import PackSpec
from packsentry.hil.virtual_board import SerialLine, VirtualBoard
from packsentry.hil.wiring import Wiring, board_config
from packsentry.protocol import codec, golden, stream
from packsentry.protocol.verify import Verifier

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEY = golden.GOLDEN_KEY
BOARD_ID = 0x00C0FFEE
U16_INVALID, I16_INVALID = 0xFFFF, 0x7FFF
U32_INVALID, I32_INVALID = 0xFFFFFFFF, 0x7FFFFFFF


CONFIG = {"board_id": BOARD_ID, "key_hex": KEY.hex(), "chemistry": "nmc", "cells_series": 4,
          "n_cells": 4, "max_pack_mv": 16_800, "sample_period_ms": 500, "riso_settle_ms": 0,
          "riso_period_ms": 1_000, "pins": {"ntc": [32, 33]}, "pack_divider_ratio_c": 1_000}
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
{inputs()}  # the stand-in's own sensors (15 V, 25/26 degC, 3.7 V cells): nothing injected
uart = machine.UART(0)
board = app.Board(config.parse({json.dumps(config)!r}), machine, app.SerialLink(uart, 2048),
                  root='/flash/')
board.clock.sync(1_764_000_000_000)
async def tick(wait_ms=600):  # a report each tick: more than sample_period_ms apart
    await asyncio.sleep_ms(wait_ms)
    board.tick(time.ticks_ms())
{script}
print(bytes(uart.tx).hex())
""", dirs=VM_DIRS,
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


# -- the rig against a board on a serial port ---------------------------------------------------

MINUTE = FIXTURES / "real-board-minute.toml"
ESP32_ID = 0x00B0A4D0


def esp32_config(sc: scenario.Scenario, sensor_source: str) -> dict:
    """The config.json of the stand-in ESP32: what the scenario needs, with a key."""
    cfg = board_config(board_id=ESP32_ID, site="bench", pack=PackSpec(**sc.pack).birth_fields(),
                       overrides=sc.board, link={"kind": "serial", "uart": 1})
    return {**cfg, "key_hex": KEY.hex(), "sensor_source": sensor_source}


@pytest.fixture
def esp32(tmp_path: Path) -> Iterator[tuple[Path, Path, VirtualBoard]]:
    """A virtual board (the firmware in the VM, real time) on a pty standing in for an ESP32's
    USB port, its sensors all reading nonsense: 5 V, 90 degC, 1 V cells, 10 kOhm; yields its
    port, the config file written for it, and the board (its running config: board.config)."""
    sc = scenario.load(MINUTE)
    holder: dict = {}

    def start(sensor_source: str) -> tuple[Path, Path, VirtualBoard]:
        cfg = esp32_config(sc, sensor_source)
        port = SerialLine(tmp_path / "ttyESP32", speed=1.0)
        wiring = Wiring(cfg)
        n_probes, n_cells = wiring.n_probes, wiring.n_cells
        nonsense = wiring.values({"pack_mv": 5_000, "current_ma": 40_000,
                                  "temps_dc": [900] * n_probes, "cells_mv": [1_000] * n_cells,
                                  "riso_pos_kohm": 10, "riso_neg_kohm": 10})
        vb = VirtualBoard(tmp_path / "esp32", cfg, wiring.layout(), wiring.static(),
                          speed=1.0, feed_s=1.0, serial=port)
        holder.update(port=port, vb=vb)
        vb.start([nonsense] * 200)  # 200 s of the same nonsense
        config_file = tmp_path / "esp32-config.json"
        config_file.write_text(json.dumps(esp32_config(sc, "injected")))
        return port.link, config_file, vb

    yield start  # type: ignore[misc]
    if "vb" in holder:
        holder["vb"].stop()
        holder["port"].close()


def test_a_scenario_runs_against_a_board_on_a_serial_port(
        esp32, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hil run --board PORT`: the rig between the board's port and the daemon, injecting
    the simulator's readings, at speed 1. The scenario's checks pass, and the database holds
    the simulator's pack, never what the board's own sensors read."""
    port, config_file, vb = esp32("injected")
    t0 = time.monotonic()
    code, out, err = hil(["run", str(MINUTE), "--board", str(port), "--board-config",
                          str(config_file), "--workdir", str(tmp_path / "run")], capsys)
    wall_s = time.monotonic() - t0
    print(out, f"wall time {wall_s:.1f} s")  # the table, with pytest -s
    assert code == 0, out + err
    assert "PASS" in out.splitlines()[0] and "FAIL" not in out
    for check in ("every injection taken", "injections on time", "the board did not reset",
                  "every frame the board sent reached the host", "board's own temp_high L3"):
        assert check in out
    assert wall_s < 90, f"{wall_s:.0f} s"
    db = sqlite3.connect(tmp_path / "run" / "depot.db")
    rows = db.execute("SELECT pack_mv, temps_dc, alarm_level FROM samples WHERE board_id = ? "
                      "AND pack_mv != ?", (ESP32_ID, U32_INVALID)).fetchall()
    assert len(rows) >= 45
    # a 4S NMC pack at 60 % state of charge, not the stand-in's 5 V
    assert all(14_000 < pack_mv < 16_800 for pack_mv, _, _ in rows)
    temps = [int.from_bytes(t[i:i + 2], "little", signed=True) for _, t, _ in rows
             for i in range(0, len(t), 2)]
    assert 900 not in temps and 650 in temps and I16_INVALID - 1 in temps  # stuck, open
    assert vb.vm_log().count("sensor_source injected") == 1


def test_a_board_that_refuses_injection_stops_the_run(
        esp32, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The config file says injected, the board runs "hardware": its cmd_ack says disabled,
    and the run stops with that, exit status 2, before any scenario."""
    port, config_file, _ = esp32("hardware")
    code, out, err = hil(["run", str(MINUTE), "--board", str(port), "--board-config",
                          str(config_file), "--workdir", str(tmp_path / "run")], capsys)
    assert code == 2 and out == ""
    assert "inject answered disabled" in err and 'sensor_source = "hardware"' in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "depot.db").exists()  # no daemon was started


def test_a_config_not_made_for_the_scenario_is_refused_with_the_one_it_needs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = scenario.load(MINUTE)
    config_file = tmp_path / "board.json"
    config_file.write_text(json.dumps({**esp32_config(sc, "hardware"), "cells_series": 14}))
    code, _, err = hil(["run", str(MINUTE), "--board", "/dev/ttyNOSUCH", "--board-config",
                        str(config_file), "--workdir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert 'sensor_source is "hardware", not "injected"' in err
    assert "cells_series is 14, the scenario needs 4" in err
    needed = json.loads((tmp_path / "run" / "board-config.json").read_text())
    assert needed == esp32_config(sc, "injected")
    config_file.write_text(json.dumps(needed))
    code, _, err = hil(["run", str(MINUTE), "--board", "/dev/ttyNOSUCH", "--board-config",
                        str(config_file)], capsys)
    assert code == 2 and "/dev/ttyNOSUCH: no such serial port" in err
    code, _, err = hil(["run", str(MINUTE), "--board", "/dev/ttyNOSUCH"], capsys)
    assert code == 2 and "needs --board-config FILE" in err
    code, _, err = hil(["run", str(MINUTE), "--board", "/dev/ttyNOSUCH", "--speed", "100",
                        "--board-config", str(config_file)], capsys)
    assert code == 2 and "speed 1" in err
