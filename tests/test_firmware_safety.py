"""The board's local L3/L4 rules, run in the MicroPython VM against the generated limits."""

from __future__ import annotations

import ast
from pathlib import Path

from packsentry.hil.mpvm import run_micropython
from packsentry.host import limits
from packsentry.protocol import layout

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
RULES = layout.payload_layout("alarm").scalars[0].enum or {}

HARNESS = """
from safety import LocalSafety
s = LocalSafety({chem!r}, 400_000, 600)
t = 0
def step(temps, cells=(), riso=(5000, 5000), pack_mv=380_000, dt_ms=1000):
    global t
    t += dt_ms
    s.evaluate(t, pack_mv, temps, len(temps), cells, len(cells), riso[0], riso[1])
    out = [(s.q_rule[i], s.q_level[i], s.q_event[i], s.q_index[i], s.q_value[i],
            s.q_threshold[i]) for i in range(s.q_len)]
    s.q_len = 0
    print(repr((t, s.level, s.flags, out)))
"""


def run(body: str, chem: str = "nmc") -> list[tuple]:
    res = run_micropython(HARNESS.format(chem=chem) + body, dirs={"/firmware": FIRMWARE})
    res.check()
    return [ast.literal_eval(line) for line in res.stdout.splitlines()]


def events(rows: list[tuple]) -> list[tuple]:
    """(time_s, rule, level, raised/cleared) of every queued event."""
    kind = {1: "raised", 2: "cleared"}
    return [(t // 1000, RULES[e[0]], e[1], kind[e[2]]) for t, _, _, evs in rows for e in evs]


def test_quiet_pack_raises_nothing_and_allocates_nothing() -> None:
    res = run_micropython(HARNESS.format(chem="nmc") + """
import gc
from array import array
temps = array('h', [250, 255, 260, 248]); cells = array('H', [3700] * 96)
def go(n):
    for i in range(n):
        s.evaluate(i * 1000, 380_000, temps, 4, cells, 96, 5000, 4800)
go(70)
def measure():
    before = gc.mem_alloc()
    go(1000)
    return gc.mem_alloc() - before
print(measure(), s.level, s.q_len)
""", dirs={"/firmware": FIRMWARE}).check()
    assert res.stdout.split() == ["0", "0", "0"]


def test_temperature_high_fires_at_threshold_and_clears_with_hysteresis() -> None:
    rows = run("\n".join(f"step([{t - 20}, {t}])" for t in [590, 600, 580, 571, 569]))
    assert events(rows) == [(2, "temp_high", 3, "raised"), (5, "temp_high", 3, "cleared")]
    assert rows[1][1] == 3 and rows[-1][1] == 0


def test_abnormal_probe_is_not_a_temperature() -> None:
    rows = run("step([250, 0x7FFE])\nstep([0x7FFF, 0x7FFE])")
    assert events(rows) == []


def test_insulation_threshold_is_per_volt_of_max_pack_voltage() -> None:
    # 100 Ohm/V x 400 V = 40 kOhm; clears at 1.2 x = 48 kOhm
    rows = run("\n".join(f"step([250], riso=({r}, 9000))" for r in [41, 39, 47, 48]))
    assert events(rows) == [(2, "insulation", 3, "raised"), (4, "insulation", 3, "cleared")]
    assert rows[1][3][0][4:6] == (39, 40)


def test_cell_voltage_limits_follow_chemistry() -> None:
    nmc = limits.local_limits()["CELL_OVERVOLTAGE_NMC_L3"]
    lfp = limits.local_limits()["CELL_OVERVOLTAGE_LFP_L3"]
    body = f"step([250], cells=[3300, {lfp}])\nstep([250], cells=[3300, {nmc}])"
    assert [e[1] for e in events(run(body, "lfp"))] == ["cell_overvoltage", "cell_spread"]
    assert [e[1] for e in events(run(body, "nmc"))] == ["cell_spread", "cell_overvoltage"]


def test_thermal_runaway_onset_is_l4_and_latches() -> None:
    # 1.5 K/s from 55 degC: the profile max (60 degC) is passed while dT/dt >= 1 K/s for 3 s
    ramp = [550 + 15 * i for i in range(10)] + [300, 250]
    rows = run("\n".join(f"step([{t}, 250])" for t in ramp))
    ev = events(rows)
    assert ("thermal_event", 4, "raised") in [e[1:] for e in ev]
    l4_at = next(t for t, rule, _, _ in ev if rule == "thermal_event")
    assert l4_at <= 6
    assert rows[-1][1] == 4  # latched after cooling down
    assert not any(rule == "thermal_event" and kind == "cleared" for _, rule, _, kind in ev)


def test_fast_rise_below_the_max_needs_a_voltage_drop() -> None:
    ramp = [250 + 15 * i for i in range(8)]
    quiet = run("\n".join(f"step([{t}])" for t in ramp))
    assert "thermal_event" not in [e[1] for e in events(quiet)]
    drop = run("\n".join(f"step([{t}], pack_mv={380_000 if i < 5 else 250_000})"
                         for i, t in enumerate(ramp)))
    assert "thermal_event" in [e[1] for e in events(drop)]


def test_rise_rate_needs_30_s_of_history() -> None:
    rows = run("\n".join(f"step([{250 + 2 * i}])" for i in range(40)))  # 12 K/min
    ev = events(rows)
    assert [e[1:] for e in ev] == [("temp_rise_rate", 3, "raised")]
    assert ev[0][0] == 31
