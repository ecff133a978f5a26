"""The alarm engine: every rule at every level, hysteresis, on-delay, lifecycle, shelving,
suppression, the board's own alarms, recurrence, prediction, and a restart mid-stream."""

from __future__ import annotations

import itertools
import json
import random
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packsentry.host import alarm_settings, alarm_text, limits
from packsentry.host.alarm_settings import EVENTS, AlarmSettings, AlarmSettingsError
from packsentry.host.alarms import (
    STATES,
    AlarmEngine,
    AlarmEvent,
    BoardProfile,
    clear_bound,
)
from packsentry.host.notify import Dispatcher, MqttAlarmPublisher

BOARD = 7
MAX_PACK_MV = 400_000  # 400 V: 1 kOhm of insulation = 2.5 Ohm/V
H = 3_600_000


def profile(chemistry: str = "nmc", **kw: Any) -> BoardProfile:
    d: dict[str, Any] = dict(board_id=BOARD, site="depot", chemistry=chemistry,
                             cells_series=4, rated_mah=50_000, max_pack_mv=MAX_PACK_MV,
                             max_temp_dc=600, sample_period_ms=1000, n_probes=3, n_cells=4,
                             probe_cell=(0, 2, 0xFFFF), riso_period_ms=10_000)
    d.update(kw)
    return BoardProfile(**d)


def sample(cells: tuple[int, ...] = (3700, 3700, 3700, 3700),
           temps: tuple[int, ...] = (250, 250, 250), riso: tuple[int, int] = (4000, 4000),
           pack_mv: int = 14_800, current_ma: int = 0, flags: int = 0) -> dict[str, Any]:
    return {"n_probes": len(temps), "n_cells": len(cells), "pack_mv": pack_mv,
            "current_ma": current_ma, "riso_pos_kohm": riso[0], "riso_neg_kohm": riso[1],
            "alarm_level": 0, "alarm_flags": flags, "temps_dc": list(temps),
            "cells_mv": list(cells)}


class Rig:
    """One engine, one board, a clock in ms and every event kept."""

    def __init__(self, settings: AlarmSettings | None = None, **prof: Any) -> None:
        self.engine = AlarmEngine(settings)
        self.engine.set_profile(profile(**prof))
        self.t = 1_764_000_000_000
        self.events: list[AlarmEvent] = []

    def feed(self, seconds: float = 1, step_s: float = 1, **kw: Any) -> list[AlarmEvent]:
        """Samples every step_s for `seconds` (at least one), with the given readings."""
        out: list[AlarmEvent] = []
        n = max(1, round(seconds / step_s))
        for _ in range(n):
            self.t += int(step_s * 1000)
            out += self.engine.on_sample(BOARD, self.t, sample(**kw))
        self.events += out
        return out

    def do(self, events: list[AlarmEvent]) -> list[AlarmEvent]:
        self.events += events
        return events

    def level(self, rule: str, scope: str = "") -> int:
        return max((e.level for e in self.engine.active()
                    if e.rule == rule and e.scope == scope and e.active), default=0)

    def alarm(self, rule: str, scope: str = "") -> AlarmEvent:
        return next(e for e in self.engine.active() if e.rule == rule and e.scope == scope)


def hot(t_dc: int) -> tuple[int, int, int]:
    """Probe 1 at t_dc, probe 2 (also on a cell) 1 K cooler, probe 3 (ambient) at 25 degC."""
    return (t_dc, t_dc - 10, 250)


def names(events: list[AlarmEvent]) -> list[tuple[str, str, int]]:
    return [(e.rule, e.event, e.level) for e in events]


# -- every rule, every level ------------------------------------------------------------------

def _reading(rule: str, value: int) -> dict[str, Any]:
    """Sample readings whose quantity for `rule` is `value` (the table's unit)."""
    if rule == "insulation":
        kohm = value * MAX_PACK_MV // 1_000_000  # Ohm/V -> kOhm, rounded towards the alarm
        return {"riso": (kohm, 4000)}
    if rule == "temp_high":
        return {"temps": (value - 10, value, 250)}
    if rule == "temp_spread":
        return {"temps": (250, 250 + value, 250)}
    if rule in ("cell_overvoltage", "cell_undervoltage"):
        d = -20 if rule == "cell_overvoltage" else 20  # the other cells close by
        return {"cells": (value + d, value, value + d, value + d)}
    if rule == "cell_spread":
        return {"cells": (3500, 3500 - value, 3500, 3500)}
    raise AssertionError(rule)


SAMPLE_RULES = ("insulation", "temp_high", "temp_spread", "cell_overvoltage",
                "cell_undervoltage", "cell_spread")
CASES = [(chem, lim.rule, level, thr) for chem in limits.CHEMISTRIES
         for lim in limits.limits_for(chem) if lim.rule in SAMPLE_RULES
         for level, thr in lim.levels.items()]


@pytest.mark.parametrize(("chem", "rule", "level", "threshold"), CASES,
                         ids=[f"{c}-{r}-L{lvl}" for c, r, lvl, _ in CASES])
def test_every_sample_rule_at_every_level(chem: str, rule: str, level: int,
                                          threshold: int) -> None:
    lim = next(x for x in limits.limits_for(chem) if x.rule == rule)
    below_level = max((lvl for lvl in lim.levels if lvl < level), default=0)
    hold_s = AlarmSettings().on_delay_s[rule] + 2
    # just short of the threshold: the level below (after its on-delay)
    short = threshold - 1 if lim.above else threshold + 2
    rig = Rig(chemistry=chem)
    rig.feed(hold_s, **_reading(rule, short))
    assert rig.level(rule) == below_level
    # at the threshold: this level (L3: on the first sample)
    at = threshold if lim.above else threshold - 1
    rig2 = Rig(chemistry=chem)
    first = rig2.feed(1, **_reading(rule, at))
    if level >= 3:
        assert (rule, "raised", level) in names(first)
    rig2.feed(hold_s, **_reading(rule, at))
    assert rig2.level(rule) == level
    ev = rig2.alarm(rule)
    assert ev.threshold is not None and ev.board_id == BOARD and ev.site == "depot"


@pytest.mark.parametrize(("rule", "soh", "growth", "level"), [
    ("capacity_soh", 79.9, 0, 1), ("capacity_soh", 69.9, 0, 2), ("capacity_soh", 80.0, 0, 0),
    ("r0_growth", 100, 50, 1), ("r0_growth", 100, 100, 2), ("r0_growth", 100, 49.9, 0)])
def test_estimate_rules(rule: str, soh: float, growth: float, level: int) -> None:
    rig = Rig()
    rig.do(rig.engine.on_estimate(BOARD, rig.t, soh, growth, "cell", 2))
    assert rig.level(rule, "cell:2") == level
    if level:
        ev = rig.alarm(rule, "cell:2")
        assert (ev.subject, ev.subject_index) == ("cell", 2)
        assert "cell 3" in ev.message  # people count cells from 1


def test_estimates_per_cell_are_separate_alarms() -> None:
    rig = Rig()
    rig.engine.on_estimate(BOARD, rig.t, 75, 0, "cell", 0)
    rig.engine.on_estimate(BOARD, rig.t, 65, 0, "cell", 1)
    assert rig.level("capacity_soh", "cell:0") == 1
    assert rig.level("capacity_soh", "cell:1") == 2
    ev = rig.engine.on_estimate(BOARD, rig.t + 1, 81.9, 0, "cell", 0)
    assert names(ev) == []  # 2-point hysteresis: still < 82
    ev = rig.engine.on_estimate(BOARD, rig.t + 2, 82.0, 0, "cell", 0)
    assert names(ev) == [("capacity_soh", "cleared", 1)]


def test_messages_name_board_subject_value_threshold_and_action() -> None:
    rig = Rig()
    ev = rig.feed(1, cells=(3700, 3700, 3700, 3700, 3700, 3700, 4310))[0]
    assert ev.message == ("board 7 (depot): cell overvoltage L3: cell 7 at 4.31 V ≥ 4.30 V")
    assert ev.action.startswith("STOP NOW") and "call the fire service" in ev.action
    assert (ev.value, ev.threshold, ev.unit, ev.subject, ev.subject_index) == (
        4310, 4300, "mV", "cell", 6)
    rig = Rig()
    ev = rig.feed(1, riso=(4000, 39))[0]  # 39 kOhm at 400 V: 97.5 Ohm/V
    assert "HV- side at 98 Ω/V < 100 Ω/V" in ev.message
    assert "moisture" in ev.action
    for level, words in ((1, "Advisory"), (2, "Limit use"), (3, "STOP NOW"),
                         (4, "THERMAL EVENT")):
        assert alarm_text.action("temp_high", "", level, "raised").startswith(words)
    assert alarm_text.volts(2996) == "2.996 V" and alarm_text.volts(3000) == "3.00 V"


# -- hysteresis and on-delay ------------------------------------------------------------------

def test_hysteresis_from_the_table() -> None:
    rig = Rig()
    rig.feed(11, temps=hot(500))
    assert rig.level("temp_high") == 1
    rig.feed(5, temps=hot(471))  # 3 K below 50.0 is 47.0: still held
    assert rig.level("temp_high") == 1
    ev = rig.feed(1, temps=hot(469))
    assert names(ev) == [("temp_high", "cleared", 1)]
    assert "back at 46.9 °C (clears < 47.0 °C)" in ev[0].message
    # insulation clears at 1.2 x the threshold
    rig = Rig()
    rig.feed(31, riso=(199, 4000))  # 497.5 Ohm/V
    assert rig.level("insulation") == 1
    rig.feed(3, riso=(239, 4000))  # 597.5 < 600
    assert rig.level("insulation") == 1
    assert names(rig.feed(1, riso=(240, 4000))) == [("insulation", "cleared", 1)]
    lim = next(x for x in limits.LIMITS if x.rule == "cell_spread")
    assert clear_bound(lim, 100) == 80


def test_levels_step_down_through_their_own_hysteresis() -> None:
    rig = Rig()
    rig.feed(1, cells=(3700, 4300, 3700, 3700))
    assert rig.level("cell_overvoltage") == 3
    ev = rig.feed(1, cells=(3700, 4260, 3700, 3700))  # < 4.30 but >= 4.25 (L3's clear)
    assert names(ev) == []
    ev = rig.feed(1, cells=(3700, 4240, 3700, 3700))
    assert names(ev) == [("cell_overvoltage", "deescalated", 2)]
    assert "cell 2 back at 4.24 V (clears < 4.25 V)" in ev[0].message


def test_on_delay_for_l1_l2_and_none_for_l3() -> None:
    rig = Rig()  # temp_high on-delay 10 s: raised 10 s after the first sample over
    assert rig.feed(10, temps=hot(510)) == []
    assert names(rig.feed(1, temps=hot(510))) == [("temp_high", "raised", 1)]
    # an interruption restarts the delay
    rig = Rig()
    rig.feed(9, temps=hot(510))
    rig.feed(1, temps=hot(400))
    assert rig.feed(10, temps=hot(510)) == []
    assert names(rig.feed(1, temps=hot(510))) == [("temp_high", "raised", 1)]
    # L3 at once
    rig = Rig()
    assert names(rig.feed(1, temps=(600, 580, 590))) == [("temp_high", "raised", 3)]


def test_tick_fires_an_on_delay_between_samples_while_data_is_fresh() -> None:
    rig = Rig(sample_period_ms=5000)
    rig.feed(1, step_s=5, temps=hot(510))
    assert rig.engine.tick(rig.t + 9_000) == []
    ev = rig.engine.tick(rig.t + 10_000)
    assert names(ev) == [("temp_high", "raised", 1)]


def test_on_delay_settings_per_rule() -> None:
    s = AlarmSettings.from_mapping({"on_delay_s": {"temp_high": 0}})
    rig = Rig(s)
    assert names(rig.feed(1, temps=hot(510))) == [("temp_high", "raised", 1)]


def test_threshold_overrides_per_chemistry() -> None:
    s = AlarmSettings.from_mapping({"thresholds": {"nmc": {"cell_overvoltage": {"1": 4150}}}})
    rig = Rig(s)
    rig.feed(12, cells=(3700, 4160, 3700, 3700))
    assert rig.level("cell_overvoltage") == 1
    rig = Rig(s, chemistry="lfp")
    rig.feed(12, cells=(3300, 3300, 3300, 3300))
    assert rig.level("cell_overvoltage") == 0


# -- temperature rates and the thermal event ----------------------------------------------------

def test_rise_rate_l2_after_two_minutes_l3_at_once_clears_after_two_minutes() -> None:
    rig = Rig()
    rig.feed(60, temps=hot(250))
    t = 250.0
    for _ in range(110):  # 1.2 K/min
        t += 0.2
        rig.feed(1, temps=(250, round(t), 250))
    assert rig.level("temp_rise_rate") == 0  # not yet 2 min at >= 1 K/min
    for _ in range(20):
        t += 0.2
        rig.feed(1, temps=(250, round(t), 250))
    assert rig.level("temp_rise_rate") == 2
    for _ in range(60):  # 6 K/min: L3 as soon as the minute shows it
        t += 1.0
        rig.feed(1, temps=(250, round(t), 250))
    assert rig.level("temp_rise_rate") == 3
    rig.feed(119, temps=(250, round(t), 250))
    assert rig.level("temp_rise_rate") >= 2
    rig.feed(130, temps=(250, round(t), 250))
    assert rig.level("temp_rise_rate") == 0


def test_a_10hz_boards_saved_rise_history_is_one_sample_a_second_and_a_restart_keeps_rates(
        ) -> None:
    """The saved state keeps the rise reference, one sample a second and the two newest; an
    engine restored from it raises the rise rate alarm within a second of one that ran on
    (its reference is at most a second older), and a minute on their histories are the same."""
    rig = Rig(sample_period_ms=100)
    rig.feed(90, step_s=0.1, temps=hot(250))
    saved = json.loads(json.dumps(rig.engine.state()))
    hist = saved["boards"][str(BOARD)]["hist"]
    assert 60 <= len(hist) <= 63 < 600  # a minute: 600 samples in memory
    steps = [b[0] - a[0] for a, b in itertools.pairwise(hist[:-2])]
    assert min(steps) >= 1000 and hist[-1][0] == rig.t and hist[-2][0] == rig.t - 100
    restored = AlarmEngine.from_state(saved)
    t = 250.0
    raised: list[int | None] = [None, None]
    for k in range(600):  # 6 K/min: L3 once the minute shows it
        rig.t += 100
        t += 0.1
        for i, engine in enumerate((rig.engine, restored)):
            events = engine.on_sample(BOARD, rig.t, sample(temps=(250, round(t), 250)))
            if raised[i] is None and any(e.rule == "temp_rise_rate" and e.level == 3
                                         for e in events):
                raised[i] = k
    assert raised[0] is not None and raised[1] is not None
    assert 0 <= raised[1] - raised[0] <= 10
    def history(engine: AlarmEngine) -> list[Any]:
        return engine.state()["boards"][str(BOARD)]["hist"]

    assert history(restored) == history(rig.engine)


def _runaway(rig: Rig, start: int, rate_dc_per_s: int, seconds: int, **kw: Any) -> None:
    t = start
    for _ in range(seconds):
        t += rate_dc_per_s
        rig.feed(1, temps=(250, t, 250), **kw)


def test_thermal_event_l4_on_rise_and_max_temperature() -> None:
    rig = Rig()
    rig.feed(5, temps=(250, 560, 250))
    _runaway(rig, 560, 15, 5)  # 1.5 K/s for 5 s, to 63.5 degC >= the profile's 60.0
    assert rig.level("thermal_event") == 4
    ev = rig.alarm("thermal_event")
    assert "THERMAL EVENT" in ev.action and "evacuate" in ev.action
    assert ev.state == "active_unack"


def test_thermal_event_on_rise_and_voltage_drop() -> None:
    rig = Rig()
    rig.feed(5, temps=(250, 300, 250))
    _runaway(rig, 300, 12, 2)
    assert rig.level("thermal_event") == 0
    rig.feed(1, temps=(250, 336, 250), pack_mv=10_000)  # -32 % with the rise going on
    rig.feed(1, temps=(250, 348, 250), pack_mv=10_000)
    assert rig.level("thermal_event") == 4
    assert "pack voltage down 32 %" in rig.alarm("thermal_event").message


def test_no_thermal_event_without_heat_or_drop_or_from_a_glitch_or_an_open_ntc() -> None:
    rig = Rig()
    _runaway(rig, 250, 12, 10)  # fast rise but cool and no voltage drop
    assert rig.level("thermal_event") == 0
    rig = Rig()
    rig.feed(5, temps=(250, 560, 250))
    rig.feed(1, temps=(250, 900, 250))  # one glitching reading
    rig.feed(5, temps=(250, 560, 250))
    assert rig.level("thermal_event") == 0
    rig = Rig(sample_period_ms=10_000)
    rig.feed(30, step_s=10, temps=(400, 410, 250))
    rig.feed(40, step_s=10, temps=(400, 0x7FFE, 250))  # open NTC: ABNORMAL marker
    levels = {e.rule: e.level for e in rig.engine.active()}
    assert "thermal_event" not in levels and "temp_high" not in levels
    assert "temp_rise_rate" not in levels and levels["sensor_fault"] == 1


def test_thermal_event_latches_until_acknowledged() -> None:
    rig = Rig()
    rig.feed(5, temps=(250, 560, 250))
    _runaway(rig, 560, 15, 5)
    rig.feed(30, temps=(250, 500, 250))  # the rise has stopped
    ev = rig.alarm("thermal_event")
    assert ev.level == 4 and ev.active
    out = rig.do(rig.engine.acknowledge(ev.alarm_id, rig.t, "ana"))
    assert [(e.event, e.state) for e in out] == [("acknowledged", "active_ack"),
                                                 ("cleared", "cleared")]
    assert not [e for e in rig.engine.active() if e.rule == "thermal_event"]


# -- data quality ---------------------------------------------------------------------------------

def test_markers_are_never_compared_and_raise_sensor_fault() -> None:
    rig = Rig()
    # every marker would be far past a threshold if it were read as a number
    rig.feed(31, cells=(3700, 0xFFFE, 3700, 0xFFFF), temps=(250, 0x7FFF, 250),
             riso=(0xFFFE, 4000), pack_mv=0xFFFFFFFE, current_ma=0x7FFFFFFF)
    levels = {e.rule: e for e in rig.engine.active()}
    assert set(levels) == {"sensor_fault"}
    ev = levels["sensor_fault"]
    assert ev.level == 2  # the pack voltage is unreadable: a whole quantity blind
    for part in ("pack voltage abnormal", "current invalid", "insulation HV+ abnormal",
                 "probe 2 (on cell 3) invalid", "cell 2 abnormal", "cell 4 invalid"):
        assert part in ev.message
    assert names(rig.feed(1)) == [("sensor_fault", "cleared", 2)]


def test_a_hot_probe_going_unreadable_does_not_clear_the_temperature_alarm() -> None:
    """In a thermal event the hottest NTC runs past its table (the board sends ABNORMAL) or
    burns off: the cooler probes left must not clear or lower temp_high; they may raise it."""
    rig = Rig()
    rig.feed(1, temps=(650, 400, 250))
    assert rig.level("temp_high") == 3
    rig.feed(31, temps=(0x7FFE, 420, 250))
    assert rig.level("temp_high") == 3
    assert rig.level("sensor_fault") == 1
    rig.feed(1, temps=(650, 400, 250))  # readable again and still hot: the same alarm
    assert [e.event for e in rig.events if e.rule == "temp_high"] == ["raised"]
    rig.feed(1, temps=(300, 300, 250))  # readable and cool: now it clears (hysteresis)
    assert rig.level("temp_high") == 0
    # an open NTC on a cool pack raises nothing thermal
    rig = Rig()
    rig.feed(40, temps=(0x7FFE, 250, 250))
    assert rig.level("temp_high") == 0 and rig.level("sensor_fault") == 1


def test_sensor_fault_on_delay_and_blind_quantity() -> None:
    rig = Rig()
    assert rig.feed(30, temps=(250, 0x7FFE, 250)) == []
    assert names(rig.feed(1, temps=(250, 0x7FFE, 250))) == [("sensor_fault", "raised", 1)]
    rig.feed(31, temps=(0x7FFE, 0x7FFE, 0x7FFE))
    assert rig.level("sensor_fault") == 2


def test_insulation_not_measured_yet_after_a_birth_is_no_fault() -> None:
    rig = Rig()  # riso period 10 s: two periods of grace
    rig.feed(19, riso=(0xFFFF, 0xFFFF))
    rig.feed(1, riso=(4000, 4000))
    rig.feed(40)
    assert rig.engine.active() == []
    rig = Rig()
    rig.feed(60, riso=(0xFFFF, 0xFFFF))  # never measures: a fault after the grace
    assert rig.level("sensor_fault") == 2


def test_board_silent_after_three_periods_and_by_mqtt_will() -> None:
    rig = Rig(sample_period_ms=10_000)
    rig.feed(1, step_s=10)
    assert rig.engine.tick(rig.t + 29_999) == []
    ev = rig.engine.tick(rig.t + 30_000)
    assert names(ev) == [("board_silent", "raised", 1)]
    assert "no frame for 3 reporting periods" in ev[0].message
    assert names(rig.feed(1, step_s=40)) == [("board_silent", "cleared", 1)]
    ev = rig.engine.on_link(BOARD, rig.t + 1, False)
    assert names(ev) == [("board_silent", "raised", 1)]
    assert "last will" in ev[0].message
    assert names(rig.engine.on_link(BOARD, rig.t + 2, True)) == [("board_silent", "cleared", 1)]


def test_silence_on_the_host_clock_for_batching_boards_and_behind_a_backlog() -> None:
    """The daemon's way: receptions on its own clock (a board stamps its first frames with
    its uptime: no decades of silence), a board sending 10-sample batches reports every
    10 periods, and a daemon behind its queue judges silence where its backlog starts."""
    engine = AlarmEngine(silence_on_host_clock=True)
    engine.set_profile(profile(sample_period_ms=1000))
    host_ms = 1_764_000_000_000
    engine.on_sample(BOARD, 5_000, sample())  # uptime stamps, before the time sync
    assert engine.on_heard(BOARD, host_ms) == []
    assert engine.tick(host_ms + 2_999) == []
    assert names(engine.tick(host_ms + 3_000)) == [("board_silent", "raised", 1)]
    assert names(engine.on_heard(BOARD, host_ms + 3_100, report_ms=10_000)) == [
        ("board_silent", "cleared", 1)]
    assert engine.silent_after_ms(BOARD) == 30_000
    assert engine.tick(host_ms + 33_099) == []
    assert engine.tick(host_ms + 40_000, heard_until_ms=host_ms + 20_000) == []  # backlog
    assert names(engine.tick(host_ms + 40_000)) == [("board_silent", "raised", 1)]


def test_seq_gap_is_data_quality_l1_that_escalates_when_it_keeps_coming_back() -> None:
    rig = Rig()
    out = []
    for _ in range(3):
        rig.feed(60)
        out += rig.do(rig.engine.on_seq_gap(BOARD, rig.t, 12))
        out += rig.feed(1)
    assert [(e.event, e.level) for e in out] == [
        ("raised", 1), ("cleared", 1), ("raised", 1), ("cleared", 1), ("raised", 1),
        ("escalated", 2), ("cleared", 2)]
    assert "12 frames lost" in out[0].message
    assert "raised 3 times in 24 h" in out[5].message
    for _ in range(6):  # data quality never goes past L2
        rig.do(rig.engine.on_seq_gap(BOARD, rig.t, 1))
        rig.feed(1)
    assert max(e.level for e in rig.events) == 2


# -- lifecycle ------------------------------------------------------------------------------------

def _l1_temp(rig: Rig) -> AlarmEvent:
    rig.feed(11, temps=hot(510))
    return rig.alarm("temp_high")


def test_lifecycle_ack_then_clear_closes() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    assert (a.state, a.event) == ("active_unack", "raised")
    ev = rig.engine.acknowledge(a.alarm_id, rig.t, "ana", "seen")
    assert [(e.event, e.state, e.actor, e.note) for e in ev] == [
        ("acknowledged", "active_ack", "ana", "seen")]
    ev = rig.feed(1, temps=hot(250))
    assert [(e.event, e.state) for e in ev] == [("cleared", "cleared")]
    assert rig.engine.active() == []
    with pytest.raises(ValueError, match=f"alarm {a.alarm_id} is closed"):
        rig.engine.acknowledge(a.alarm_id, rig.t, "ana")


def test_lifecycle_clear_unacked_stays_visible_until_acked() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    ev = rig.feed(1, temps=hot(250))
    assert [(e.event, e.state) for e in ev] == [("cleared", "cleared_unack")]
    assert [e.state for e in rig.engine.active()] == ["cleared_unack"]
    assert "acknowledge to close" in rig.engine.active()[0].action
    ev = rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    assert [(e.event, e.state) for e in ev] == [("acknowledged", "cleared")]
    assert rig.engine.active() == []


def test_lifecycle_return_while_cleared_unack_is_the_same_alarm() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    rig.feed(1, temps=hot(250))
    ev = rig.feed(11, temps=hot(510))
    assert [(e.alarm_id, e.event, e.state) for e in ev] == [(a.alarm_id, "raised",
                                                             "active_unack")]


def test_lifecycle_escalation_needs_a_new_ack_deescalation_does_not() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    ev = rig.feed(1, temps=hot(600))
    assert [(e.event, e.level, e.prev_level, e.state) for e in ev] == [
        ("escalated", 3, 1, "active_unack")]
    rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    ev = rig.feed(1, temps=hot(515))  # under L2's clear level (52.0 degC)
    assert [(e.event, e.level, e.state) for e in ev] == [("deescalated", 1, "active_ack")]


def test_invalid_operator_actions() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    with pytest.raises(ValueError, match=r"alarm \d+ \(high temperature L1, board 7\) is "
                                         "already acknowledged"):
        rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    with pytest.raises(KeyError, match="unknown alarm id 999"):
        rig.engine.acknowledge(999, rig.t, "ana")
    with pytest.raises(KeyError, match="unknown alarm id 999"):
        rig.engine.shelve(999, rig.t + H, rig.t, "ana")
    with pytest.raises(ValueError, match="is not shelved"):
        rig.engine.unshelve(a.alarm_id, rig.t, "ana")
    with pytest.raises(ValueError, match="not in the future"):
        rig.engine.shelve(a.alarm_id, rig.t, rig.t, "ana")
    with pytest.raises(ValueError, match="limited to 24 h"):
        rig.engine.shelve(a.alarm_id, rig.t + 25 * H, rig.t, "ana")
    with pytest.raises(KeyError, match="unknown board 99"):
        rig.engine.set_in_service(99, False, rig.t, "ana")
    with pytest.raises(KeyError, match="board 99 has no profile"):
        rig.engine.on_sample(99, rig.t, sample())
    rig.feed(1, temps=hot(600))
    with pytest.raises(ValueError, match=r"L3: safety alarms .* cannot be shelved"):
        rig.engine.shelve(a.alarm_id, rig.t + H, rig.t, "ana")
    with pytest.raises(ValueError, match="bad profile: chemistry 'lto'"):
        rig.engine.set_profile(profile("lto"))


# -- shelving and suppression -------------------------------------------------------------------

def test_shelving_hides_then_expires() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    ev = rig.engine.shelve(a.alarm_id, rig.t + H, rig.t, "ana", "known, sensor swap tomorrow")
    assert [(e.event, e.state, e.note) for e in ev] == [
        ("shelved", "shelved", "known, sensor swap tomorrow")]
    ev = rig.feed(1, temps=hot(250)) + rig.feed(11, temps=hot(540))
    assert [(e.event, e.state) for e in ev] == [("cleared", "shelved"), ("raised", "shelved")]
    ev = [e for e in rig.engine.tick(rig.t + H) if e.alarm_id == a.alarm_id]
    assert [(e.event, e.state, e.note) for e in ev] == [
        ("unshelved", "active_unack", "shelving expired")]


def test_unshelving_a_cleared_alarm_closes_it() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    rig.engine.shelve(a.alarm_id, None, rig.t, "ana")  # default duration: 8 h
    rig.feed(1, temps=hot(250))
    ev = rig.engine.unshelve(a.alarm_id, rig.t, "bob")
    assert [(e.event, e.state, e.actor) for e in ev] == [("unshelved", "cleared", "bob")]
    assert rig.engine.active() == []


def test_a_shelved_alarm_that_reaches_l3_comes_off_the_shelf() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    rig.engine.shelve(a.alarm_id, rig.t + H, rig.t, "ana")
    ev = rig.feed(1, temps=hot(600))
    assert [(e.event, e.state) for e in ev] == [("unshelved", "active_unack"),
                                                ("escalated", "active_unack")]
    assert "never shelved" in (ev[0].note or "")


def test_suppression_while_out_of_service_except_thermal_event() -> None:
    rig = Rig()
    a = _l1_temp(rig)
    ev = rig.engine.set_in_service(BOARD, False, rig.t, "ana")
    assert [(e.alarm_id, e.event, e.state) for e in ev] == [(a.alarm_id, "suppressed",
                                                             "suppressed")]
    assert rig.engine.set_in_service(BOARD, False, rig.t, "ana") == []
    ev = rig.feed(1, temps=hot(510), cells=(4280, 4300, 4280, 4280))  # evaluated and logged
    assert [(e.rule, e.event, e.state) for e in ev] == [
        ("cell_overvoltage", "raised", "suppressed")]
    rig.feed(10, temps=hot(250), cells=(3700, 3700, 3700, 3700))
    _runaway(rig, 560, 15, 5)
    assert rig.alarm("thermal_event").state == "active_unack"  # a fire is never suppressed
    ev = rig.engine.set_in_service(BOARD, True, rig.t, "ana")
    got = {(e.rule, e.event, e.state) for e in ev}
    assert ("temp_high", "returned_to_service", "active_unack") in got
    assert ("cell_overvoltage", "returned_to_service", "cleared") in got


# -- the board's own alarms ---------------------------------------------------------------------

def _board_alarm(rule: str, level: int, event: str, value: int, threshold: int,
                 subject: str = "pack", index: int = 0) -> dict[str, Any]:
    return {"rule": rule, "level": level, "event": event, "subject": subject,
            "subject_index": index, "value": value, "threshold": threshold,
            "pre_event_samples": 30}


def test_board_alarm_and_host_evaluation_are_one_alarm() -> None:
    rig = Rig()
    rig.feed(1)
    ev = rig.do(rig.engine.on_board_alarm(BOARD, rig.t, _board_alarm(
        "insulation", 3, "raised", 36, 40, index=1)))
    assert [(e.event, e.level, e.source) for e in ev] == [("raised", 3, "board")]
    assert (ev[0].value, ev[0].threshold) == (90, 100)  # kOhm at 400 V -> Ohm/V
    assert "HV- side at 90 Ω/V < 100 Ω/V" in ev[0].message
    assert rig.feed(1, riso=(4000, 36), flags=1 << 11) == []  # the host agrees: same alarm
    assert len([e for e in rig.engine.active() if e.rule == "insulation"]) == 1
    # the board clears its L3; the host still sees L2: down, not cleared
    rig.do(rig.engine.on_board_alarm(BOARD, rig.t, _board_alarm(
        "insulation", 3, "cleared", 80, 40, index=1)))
    ev = rig.feed(1, riso=(4000, 80))  # 200 Ohm/V: L2
    assert rig.level("insulation") == 2
    assert [e.event for e in rig.events if e.rule == "insulation"] == ["raised",
                                                                     "deescalated"]


def test_board_flags_alone_raise_and_clear() -> None:
    rig = Rig()
    ev = rig.feed(1, flags=1 << 2)  # pack_overvoltage: only the board checks it
    assert [(e.rule, e.event, e.level, e.source) for e in ev] == [
        ("pack_overvoltage", "raised", 3, "board")]
    assert "the board's local L3 alarm" in ev[0].message
    assert names(rig.feed(1)) == [("pack_overvoltage", "cleared", 3)]


def test_a_late_board_alarm_is_an_episode_at_its_own_time() -> None:
    """Re-sent after an outage, older than the newest sample: the raise happened, at the
    board's time (it counts for recurrence); the newer sample's flags show it over, so it
    closes at that sample. A late clear tells nothing new and is ignored."""
    rig = Rig()
    rig.feed(5)
    raised_ms = rig.t - 3000
    late = rig.engine.on_board_alarm(BOARD, raised_ms, _board_alarm(
        "temp_high", 3, "raised", 610, 600, "probe", 1))
    assert [(e.event, e.level, e.source, e.ts_ms) for e in late] == [
        ("raised", 3, "board", raised_ms), ("cleared", 3, "host", rig.t)]
    assert rig.engine.on_board_alarm(BOARD, raised_ms + 1000, _board_alarm(
        "temp_high", 3, "cleared", 590, 600, "probe", 1)) == []
    # older than the newest board frame on the rule: stale, whatever it says
    assert rig.engine.on_board_alarm(BOARD, raised_ms - 1000, _board_alarm(
        "temp_high", 3, "raised", 610, 600, "probe", 1)) == []


def test_a_late_board_alarm_the_flags_still_show_stays_raised() -> None:
    rig = Rig()
    rig.feed(5, flags=1 << 2)  # pack_overvoltage: the newest flags still carry it
    late = rig.engine.on_board_alarm(BOARD, rig.t - 2000, _board_alarm(
        "pack_overvoltage", 3, "raised", 60_000, 58_800))
    assert late == []  # already raised, at an earlier sample: nothing new
    assert rig.level("pack_overvoltage") == 3


def test_board_thermal_event_stays_with_the_host_latch() -> None:
    rig = Rig()
    rig.feed(1)
    rig.do(rig.engine.on_board_alarm(BOARD, rig.t, _board_alarm(
        "thermal_event", 4, "raised", 14, 10, "probe", 1)))
    assert rig.level("thermal_event") == 4
    a = rig.alarm("thermal_event")
    rig.feed(1, flags=1 << 23)
    rig.engine.acknowledge(a.alarm_id, rig.t, "ana")
    assert rig.level("thermal_event") == 4  # the board still holds it
    assert names(rig.feed(1)) == [("thermal_event", "cleared", 4)]  # board rebooted


# -- recurrence -----------------------------------------------------------------------------------

def _insulation_dip(rig: Rig, kohm: int = 199) -> list[AlarmEvent]:
    out = rig.feed(31, riso=(kohm, 4000))
    out += rig.feed(1, riso=(4000, 4000))
    rig.t += 2 * H
    return out


def test_recurrence_three_raises_in_24h_escalate_one_level() -> None:
    rig = Rig()
    out = _insulation_dip(rig) + _insulation_dip(rig) + _insulation_dip(rig)
    ev = [e for e in out if e.event == "escalated"]
    assert [(e.prev_level, e.level) for e in ev] == [(1, 2)]
    assert "raised 3 times in 24 h" in ev[0].message
    assert "keeps coming back" in ev[0].action
    out = _insulation_dip(rig) + _insulation_dip(rig) + _insulation_dip(rig)
    assert max(e.level for e in out) == 3  # 6 in 24 h: L3, never beyond
    out = _insulation_dip(rig) + _insulation_dip(rig) + _insulation_dip(rig)
    assert max(e.level for e in out) == 3


def test_no_escalation_when_the_raises_are_spread_over_more_than_24h() -> None:
    rig = Rig()
    out = []
    for _ in range(4):
        out += _insulation_dip(rig)
        rig.t += 11 * H
    assert max(e.level for e in out) == 1


# -- prediction -----------------------------------------------------------------------------------

def _hourly(rig: Rig, values_ohm_per_v: list[float]) -> list[tuple[int, AlarmEvent]]:
    """One sample every 10 min for each hourly value (Ohm/V), the pack otherwise fine."""
    out = []
    for hour, v in enumerate(values_ohm_per_v):
        for _ in range(6):
            kohm = max(1, int(v * MAX_PACK_MV / 1_000_000))
            out += [(hour, e) for e in rig.feed(1, step_s=600, riso=(kohm, 60_000))]
    return out


def test_prediction_fires_before_the_l3_crossing_on_a_degrading_trend() -> None:
    rng = random.Random(1)
    rig = Rig()
    # 3000 Ohm/V falling 25 Ohm/V per hour: L3 (100) at hour 116; noise +-5 %
    series = [(3000 - 25 * h) * (1 + rng.uniform(-0.05, 0.05)) for h in range(130)]
    out = _hourly(rig, series)
    predicted = [(h, e) for h, e in out if e.source == "predicted" and e.event == "raised"]
    crossed = [h for h, e in out if e.rule == "insulation" and not e.scope and e.level == 3]
    assert predicted and crossed
    hour, ev = predicted[0]
    assert ev.level == 2 and ev.scope == "forecast" and ev.unit == "h"
    assert hour < crossed[0] and crossed[0] - hour <= 72 + 6
    assert not any(e.rule == "insulation" and not e.scope for h, e in out if h <= hour)
    assert "insulation degrading L2: L3 forecast in" in ev.message
    assert "Theil-Sen" in ev.message


@pytest.mark.parametrize("kind", ["stable", "noisy", "single dip"])
def test_prediction_quiet_on_flat_noisy_or_one_dip(kind: str) -> None:
    rng = random.Random(2)
    rig = Rig()
    if kind == "stable":
        series = [2000.0] * 240
    elif kind == "noisy":
        series = [2000 * (1 + rng.gauss(0, 0.15)) for _ in range(240)]
    else:  # humidity: one wet morning, then dry again
        series = [2000 * (1 + rng.gauss(0, 0.05)) for _ in range(240)]
        series[100:104] = [150, 140, 160, 180]
    out = _hourly(rig, series)
    assert not [e for _, e in out if e.source == "predicted"]


def test_prediction_of_temperature_in_use() -> None:
    rig = Rig()
    out = []
    for day in range(14):  # the same daily use, 1.5 K hotter every day
        for hour in range(24):
            in_use = 8 <= hour < 16
            peak = 400 + 15 * day + 5 * (hour - 8)
            temps = hot(peak) if in_use else hot(250)
            out += rig.feed(1, step_s=3600, temps=temps, current_ma=10_000 if in_use else 0)
    predicted = [e for e in out if e.rule == "temp_high" and e.scope == "forecast"]
    l3 = [e for e in out if e.rule == "temp_high" and not e.scope and e.level == 3]
    assert predicted and l3
    assert (predicted[0].event, predicted[0].level) == ("raised", 2)
    assert predicted[0].ts_ms < l3[0].ts_ms
    assert "temperature in use rising L2" in predicted[0].message


# -- restart -----------------------------------------------------------------------------------

def _script(rig: Rig, step: int) -> None:
    """A mixed day: degrading insulation, temperatures, an operator, a silent spell."""
    e = rig.engine
    if step % 50 == 10:
        rig.do(e.on_seq_gap(BOARD, rig.t, 3))
    if step == 120:
        a = next((x for x in e.active() if x.level < 3), None)
        if a is not None:
            rig.do(e.shelve(a.alarm_id, rig.t + 900_000, rig.t, "ana"))
    if step == 200:
        rig.do(e.set_in_service(BOARD, False, rig.t, "ana"))
    if step == 230:
        rig.do(e.set_in_service(BOARD, True, rig.t, "ana"))
    if step == 250:
        for a in e.active():
            if not a.acked:
                rig.do(e.acknowledge(a.alarm_id, rig.t, "bob"))
    if step == 300:  # a silent spell
        rig.do(e.tick(rig.t + 60_000))
        rig.t += 60_000
    riso = max(20, 3000 - step * 9)
    temp = 250 + (step % 90) * 4
    cells = (3700, 3700 + (step % 70) * 8, 3700, 3650)
    rig.feed(1, step_s=600, riso=(riso, 4000), temps=(250, temp, 260), cells=cells,
             current_ma=10_000)
    if step % 7 == 0:
        rig.do(e.on_estimate(BOARD, rig.t, 85 - step / 20, step / 4, "pack", 0))
    rig.do(e.tick(rig.t + 500))


def test_state_round_trip_continues_as_if_never_stopped() -> None:
    plain = Rig()
    for step in range(400):
        _script(plain, step)
    restarted = Rig()
    for step in range(180):
        _script(restarted, step)
    saved = json.loads(json.dumps(restarted.engine.state()))
    restarted.engine = AlarmEngine.from_state(saved)
    for step in range(180, 400):
        _script(restarted, step)
    assert [e.to_dict() for e in restarted.events] == [e.to_dict() for e in plain.events]
    assert len(plain.events) > 30
    kinds = {e.event for e in plain.events}
    assert {"raised", "escalated", "cleared", "acknowledged", "shelved", "suppressed",
            "returned_to_service"} <= kinds
    assert any(e.source == "predicted" for e in plain.events)
    with pytest.raises(ValueError, match="alarm state version"):
        AlarmEngine().load_state({"version": 99})


_step = st.one_of(
    st.tuples(st.just("sample"), st.sampled_from([1, 5, 60, 600]),
              st.tuples(*[st.sampled_from([3700, 4210, 4260, 4310, 2900, 2400, 0xFFFE])] * 4),
              st.tuples(*[st.sampled_from([250, 505, 560, 610, 0x7FFE, 0x7FFF])] * 3),
              st.sampled_from([4000, 180, 90, 30, 0xFFFF]), st.sampled_from([0, 1 << 11, 1 << 2])),
    st.tuples(st.just("op"), st.sampled_from(["ack", "shelve", "unshelve", "service", "tick",
                                              "gap", "link", "board", "estimate"]),
              st.integers(0, 5)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=1, max_size=60), cut=st.integers(0, 60))
def test_any_stream_keeps_the_lifecycle_consistent_and_survives_a_restart(
        steps: list[tuple[Any, ...]], cut: int) -> None:
    """Random readings (markers and board flags included) and operator actions: events are
    well-formed, active() is exactly the open alarms, and a restart anywhere changes nothing."""

    def run(rig: Rig, part: list[tuple[Any, ...]]) -> None:
        e = rig.engine
        for step in part:
            if step[0] == "sample":
                _, dt, cells, temps, riso, flags = step
                rig.feed(1, step_s=dt, cells=cells, temps=temps, riso=(riso, 4000), flags=flags)
                continue
            _, op, k = step
            ids = [a.alarm_id for a in e.active()]
            try:
                if op == "ack" and ids:
                    rig.do(e.acknowledge(ids[k % len(ids)], rig.t, "ana"))
                elif op == "shelve" and ids:
                    rig.do(e.shelve(ids[k % len(ids)], rig.t + 600_000 * (k + 1), rig.t, "ana"))
                elif op == "unshelve" and ids:
                    rig.do(e.unshelve(ids[k % len(ids)], rig.t, "ana"))
                elif op == "service":
                    rig.do(e.set_in_service(BOARD, k % 2 == 0, rig.t, "ana"))
                elif op == "tick":
                    rig.do(e.tick(rig.t + k * 2000))
                elif op == "gap":
                    rig.do(e.on_seq_gap(BOARD, rig.t, k))
                elif op == "board":
                    rule = ("thermal_event", "temp_high", "insulation")[k % 3]
                    rig.do(e.on_board_alarm(BOARD, rig.t, _board_alarm(
                        rule, 4 if rule == "thermal_event" else 3,
                        "raised" if k < 3 else "cleared", 600, 600)))
                elif op == "estimate":
                    rig.do(e.on_estimate(BOARD, rig.t, 60 + 5 * k, 30 * k, "cell", k % 2))
                else:
                    rig.do(e.on_link(BOARD, rig.t, k % 2 == 0))
            except ValueError:
                pass  # an invalid transition (ack twice, shelve an L3, ...) changes nothing

    plain, restarted = Rig(), Rig()
    run(plain, steps)
    run(restarted, steps[:cut])
    saved = json.loads(json.dumps(restarted.engine.state()))
    restarted.engine = AlarmEngine.from_state(saved)
    run(restarted, steps[cut:])
    assert [x.to_dict() for x in restarted.events] == [x.to_dict() for x in plain.events]
    latest: dict[int, AlarmEvent] = {}
    for ev in plain.events:
        assert ev.event in EVENTS and ev.state in STATES and 1 <= ev.level <= 4
        assert ev.message.startswith(f"board {BOARD} (depot): ")
        latest[ev.alarm_id] = ev
    still_open = {i for i, ev in latest.items() if ev.state != "cleared"}
    assert {a.alarm_id for a in plain.engine.active()} == still_open
    # the MQTT retained set built from the events alone is the engine's open set
    retained: dict[str, bytes] = {}
    mqtt = MqttAlarmPublisher(lambda topic, payload, qos, retain: retained.update(
        {topic: payload}) if retain else None)
    Dispatcher([mqtt]).dispatch(plain.events)
    listed = json.loads(retained.get("packsentry/depot/7/alarm/active", b"[]"))
    assert [a["alarm_id"] for a in listed] == [a.alarm_id for a in plain.engine.active()]


# -- settings -----------------------------------------------------------------------------------

def test_settings_from_toml() -> None:
    doc = tomllib.loads("""
[alarms]
recurrence_count = 4
flood_window_s = 300
notify_events = ["raised", "escalated"]
[alarms.on_delay_s]
temp_high = 5
[alarms.thresholds.nmc.cell_overvoltage]
1 = 4150
[alarms.thresholds.all.insulation]
L1 = 600
""")
    s = AlarmSettings.from_mapping(doc["alarms"])
    assert s.recurrence_count == 4 and s.flood_window_s == 300
    assert s.on_delay_s["temp_high"] == 5 and s.on_delay_s["insulation"] == 30
    assert s.limit("nmc", "cell_overvoltage").levels == {1: 4150, 2: 4250, 3: 4300}
    assert s.limit("lfp", "insulation").levels[1] == 600
    assert s.notify_events == ("raised", "escalated")


def test_settings_errors_are_all_listed_with_their_key() -> None:
    with pytest.raises(AlarmSettingsError) as info:
        AlarmSettings.from_mapping({
            "on_delay_s": {"temp_high": -1, "smoke": 3}, "flood_count": True,
            "flood_cnt": 3, "recurrence_window_s": 0, "notify_events": ["raised", "boom"],
            "thresholds": {"nmc": {"cell_overvoltage": {"1": 4400}, "capacity_soh": {3: 60}},
                           "lto": {}}})
    got = dict(info.value.problems)
    assert got["alarms.on_delay_s.temp_high"] == "must be >= 0"
    assert "unknown rule" in got["alarms.on_delay_s.smoke"]
    assert "integer" in got["alarms.flood_count"]
    assert "unknown key" in got["alarms.flood_cnt"]
    assert got["alarms.recurrence_window_s"] == "must be > 0"
    assert "unknown event 'boom'" in got["alarms.notify_events"]
    assert "stricter" in got["alarms.thresholds.nmc.cell_overvoltage"]
    assert "not a level" in got["alarms.thresholds.nmc.capacity_soh.3"]
    assert "unknown chemistry" in got["alarms.thresholds.lto"]
    assert len(info.value.problems) == 9
    assert "alarms.on_delay_s.temp_high: must be >= 0" in str(info.value)


# -- docs ---------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "alarms.md"


def _block(name: str) -> str:
    text = DOCS.read_text()
    m = re.search(rf"<!-- begin {name}: generated by `make generate` -->\n(.*?)<!-- end {name} -->",
                  text, re.S)
    assert m, f"docs/alarms.md has no {name} block"
    return m.group(1)


def test_docs_rules_table_is_the_limits_table() -> None:
    assert _block("rules table") == limits.markdown_table(), "run `make generate`"


def test_docs_settings_table_is_the_settings_defaults() -> None:
    assert _block("settings table") == alarm_settings.markdown_keys(), "run `make generate`"


def test_an_older_sample_does_not_undo_a_newer_board_alarm_frame() -> None:
    """The daemon applies a board's L3 frame at once, ahead of a held backlog: the backlog's
    older samples, whose flags predate it, must not lower it and raise it again."""
    rig = Rig()
    rig.feed(3)
    frame_ms = rig.t + 5000
    rig.do(rig.engine.on_board_alarm(BOARD, frame_ms, _board_alarm(
        "pack_overvoltage", 3, "raised", 60_000, 58_800)))
    assert rig.level("pack_overvoltage") == 3
    rig.feed(4)  # older than the frame, flags clear
    rig.feed(2, flags=1 << 2)  # the frame's time reached: the flags carry it
    assert [e.event for e in rig.events if e.rule == "pack_overvoltage"] == ["raised"]
    rig.feed(1)  # newer than the frame and clear: the board's alarm is over
    assert rig.level("pack_overvoltage") == 0
