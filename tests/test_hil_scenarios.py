"""The HIL scenarios (hil/scenarios), each over serial and over MQTT: the unchanged firmware in
the MicroPython VM, fed by the pack simulator in compressed time, reporting to the real
daemon (a process of its own, with its own database; a private Mosquitto for MQTT). The
checks are the scenario's own (hil/rig.py prints them as a table).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from packsentry.hil import rig, scenario


def run_checked(tmp_path: Path, name: str, transport: str) -> rig.RunResult:
    sc = scenario.load(scenario.find(name))
    t0 = time.monotonic()
    result = rig.run(sc, transport=transport, workdir=tmp_path / "run")
    print(result.table())
    print(f"{name} over {transport}: {time.monotonic() - t0:.1f} s wall")
    assert not result.failures(), "\n" + result.table()
    return result


@pytest.mark.parametrize("transport", ["serial", "mqtt"])
def test_healthy_pack_a_day_without_an_alarm(tmp_path: Path, transport: str) -> None:
    """24 h of board time, a depot day: not one alarm, the watchdog fed, every frame the
    board stored in the database and acknowledged."""
    run_checked(tmp_path, "healthy-24h", transport)


@pytest.mark.parametrize("transport", ["serial", "mqtt"])
def test_insulation_degrading_over_three_days(tmp_path: Path, transport: str) -> None:
    """L1 at the first dip, escalation by recurrence, the forecast L2 before any L3, L3,
    and the board's own L3 below 100 ohm/V: 72 h of board time."""
    result = run_checked(tmp_path, "insulation-3d", transport)
    kinds = {(e.rule, e.level, e.source) for e in result.alarms if e.t_s >= 0}
    assert ("insulation", 2, "predicted") in kinds


@pytest.mark.parametrize("transport", ["serial", "mqtt"])
def test_thermal_runaway_onset_l3_then_l4_with_pre_event_data(tmp_path: Path,
                                                              transport: str) -> None:
    run_checked(tmp_path, "thermal-runaway", transport)


@pytest.mark.parametrize("transport", ["serial", "mqtt"])
def test_link_lost_during_a_runaway_loses_no_frame(tmp_path: Path, transport: str) -> None:
    """Serial: the cable pulled for 3 min around the first L3; MQTT: the broker down as
    long. Every frame the board stored reaches the daemon; the board's alarms keep their
    times."""
    run_checked(tmp_path, "runaway-link-faults", transport)


@pytest.mark.parametrize("transport", ["serial", "mqtt"])
def test_open_ntc_is_a_data_quality_alarm_not_a_thermal_one(tmp_path: Path,
                                                            transport: str) -> None:
    run_checked(tmp_path, "ntc-open", transport)
