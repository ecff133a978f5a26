"""The virtual board's wiring (hil/wiring.py): readings in board units become ADC microvolts and
I2C registers, and the unchanged firmware's own drivers (sampler, NTC tables, BQ769x0,
INA226, the insulation bridge), run in the MicroPython VM, read the same readings back."""

from __future__ import annotations

import json

import pytest
from test_firmware_app import REPO

from packsentry.hil.mpvm import run_micropython
from packsentry.hil.wiring import (
    BoardConfigError,
    Wiring,
    board_config,
    parse_board_config,
    scale,
    unscale,
)

PACK = {"chemistry": "nmc", "cells_series": 4, "rated_mah": 50_000, "max_pack_mv": 16_800,
        "n_probes": 4, "n_cells": 4, "probe_cell": [0, 1, 2, 3]}
READINGS = [
    {"pack_mv": 15_123, "current_ma": 12_345, "temps_dc": [251, 262, -105, 598],
     "cells_mv": [3780, 3781, 3779, 3783], "riso_pos_kohm": 65_533, "riso_neg_kohm": 65_533},
    {"pack_mv": 16_001, "current_ma": -40_010, "temps_dc": [0x7FFE, 450, 1203, 0x7FFE],
     "cells_mv": [4001, 3999, 4000, 4002], "riso_pos_kohm": 30, "riso_neg_kohm": 2_000},
    {"pack_mv": 12_000, "current_ma": 0, "temps_dc": [-395, 1495, 250, 250],
     "cells_mv": [3000, 3000, 3000, 3000], "riso_pos_kohm": 900, "riso_neg_kohm": 8},
]
SHORT = [[False] * 4, [False, False, False, True], [False] * 4]

READ = """
import asyncio, json
import machine, config, app
from sampler import Sampler
cfg = config.parse(%(cfg)r)
assert not cfg.error, cfg.messages
layout = json.loads(%(layout)r)
st = json.loads(%(static)r)
for a, regs in st["i2c"].items():
    machine.inputs["i2c"][int(a)] = {int(r): v for r, v in regs.items()}
for pin, (sel, n) in st["mux"].items():
    machine.inputs["mux"][int(pin)] = (sel, [0] * n)
i2c = machine.I2C(0)
s = Sampler(machine, cfg, i2c)
ins = app.Board._insulation(machine, cfg)
for values in json.loads(%(values)r):
    for (kind, a, *b), v in zip(layout, values):
        if kind == 0:
            machine.inputs["adc_uv"][a] = v
        elif kind == 1:
            machine.inputs["mux"][a][1][b[0]] = v
        else:
            machine.inputs["i2c"][a][b[0]] = v
    s.read()
    rp, rn = await ins.measure(asyncio.sleep_ms)
    print(json.dumps([s.pack_mv, s.current_ma, list(s.temps_dc), list(s.cells_mv), rp, rn]))
"""


def read_back(config: dict, readings: list[dict], short: list[list[bool]]) -> list[list]:
    w = Wiring(config)
    values = [w.values(r, ntc_short=sh) for r, sh in zip(readings, short, strict=True)]
    res = run_micropython(READ % {
        "cfg": json.dumps(config), "layout": json.dumps(w.layout()),
        "static": json.dumps(w.static()), "values": json.dumps(values)},
        dirs={"/firmware": REPO / "firmware", "/vboard": REPO / "hil" / "vboard"},
        heap_bytes=256 * 1024, timeout_s=60).check()
    return [json.loads(line) for line in res.stdout.splitlines()]


def check(got: list, want: dict, ina: bool = False) -> None:
    pack_mv, current_ma, temps, cells, rp, rn = got
    assert pack_mv == want["pack_mv"]
    assert abs(current_ma - want["current_ma"]) <= (25 if ina else 0)
    for t, w in zip(temps, want["temps_dc"], strict=True):
        if w >= 0x7FFE:
            assert t == 0x7FFE  # open or shorted: ABNORMAL, never a temperature
        else:
            assert abs(t - w) <= 2, (temps, want["temps_dc"])  # the firmware's table steps
    assert cells == want["cells_mv"]
    # the side that leaks more is what alarms use (min); the firmware's 0.1 V steps leave the
    # other side coarse on a small pack (here 16 V): within 30 %, or "high"
    wp, wn = want["riso_pos_kohm"], want["riso_neg_kohm"]
    for r, w in ((rp, wp), (rn, wn)):
        if w >= 65_533:
            assert r >= 5_000
        elif w == min(wp, wn):
            assert abs(r - w) <= max(1, 0.03 * w), (rp, rn, want)
        else:
            assert abs(r - w) <= 0.3 * w, (rp, rn, want)


def test_direct_probes_shunt_and_bridge_read_back() -> None:
    cfg = board_config(board_id=7, site="rig", pack=PACK)
    for got, want in zip(read_back(cfg, READINGS, SHORT), READINGS, strict=True):
        check(got, want)


def test_multiplexed_probes_and_ina226_read_back() -> None:
    pack = {**PACK, "n_probes": 6, "probe_cell": [0, 1, 2, 3, 0xFFFF, 0xFFFF]}
    cfg = board_config(board_id=7, site="rig", pack=pack,
                       overrides={"current_sensor": "ina226",
                                  "calibration": {"shunt_uohm": 100}})
    assert cfg["ntc_mux_probes"] == 6
    readings = [{**r, "temps_dc": r["temps_dc"] + [300, 0x7FFE]} for r in READINGS]
    short = [[*s, False, False] for s in SHORT]
    for got, want in zip(read_back(cfg, readings, short), readings, strict=True):
        check(got, want, ina=True)


def test_scale_and_unscale_agree_with_the_firmware() -> None:
    for factor in (1_000, 20_100, 40_000, 100_000):
        for target in (0, 1, 2, 999, 15_123, -40_010):
            x = unscale(target, factor)
            assert scale(x, factor) == target
            assert abs(scale(x - (1 if x > 0 else -1), factor)) < abs(target) or target == 0


def test_configs_the_board_would_repair_are_refused() -> None:
    with pytest.raises(BoardConfigError, match="chemistry"):
        parse_board_config({"chemistry": "lto"})
    with pytest.raises(BoardConfigError, match="15 cells"):
        Wiring(board_config(board_id=1, site="rig", pack={**PACK, "n_cells": 16,
                                                          "cells_series": 16}) | {"n_cells": 16})


def test_a_high_voltage_pack_reads_back() -> None:
    """403 V: pack_mv beyond 16 bits, no cell voltages (more than one BQ769x0's cells), the
    insulation bridge at the resolution that matters (100 ohm/V is 40 kOhm here)."""
    pack = {"chemistry": "nmc", "cells_series": 96, "rated_mah": 50_000, "max_pack_mv": 403_200,
            "n_probes": 2, "n_cells": 96, "probe_cell": [10, 80]}
    cfg = board_config(board_id=7, site="rig", pack=pack)
    assert cfg["n_cells"] == 0
    readings = [{"pack_mv": 380_123, "current_ma": -120_000, "temps_dc": [300, 310],
                 "cells_mv": [], "riso_pos_kohm": 4_000, "riso_neg_kohm": 38}]
    got = read_back(cfg, readings, [[False, False]])[0]
    assert got[0] == 380_123 and got[1] == -120_000
    assert abs(got[5] - 38) <= 1 and abs(got[4] - 4_000) <= 0.05 * 4_000
