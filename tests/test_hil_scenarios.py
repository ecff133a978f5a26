"""The HIL scenarios (hil/scenarios), each over serial and over MQTT: the unchanged firmware in
the MicroPython VM, fed by the pack simulator in compressed time, reporting to the real
daemon (a process of its own, with its own database; a private Mosquitto for MQTT). The
checks are the scenario's own (hil/rig.py prints them as a table).

The two transports of a scenario run at the same time, each in a process of its own (its VM,
its daemon, its broker): on this 2-core box that takes the HIL part of the suite from 6 min 54 s
to 4 min 17 s. The checks are in board time, and a busy machine slows a compressed board's
clock rather than making it late (hil/mpvm.py charges a callback its own run time).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from packsentry.hil import rig, scenario


def _run(name: str, transport: str, workdir: Path) -> tuple[rig.RunResult, float]:
    t0 = time.monotonic()
    result = rig.run(scenario.load(scenario.find(name)), transport=transport, workdir=workdir)
    return result, time.monotonic() - t0


def run_checked(tmp_path: Path, name: str) -> dict[str, rig.RunResult]:
    """The scenario over serial and over MQTT at once; every check of both must pass."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        runs = {t: pool.submit(_run, name, t, tmp_path / t) for t in ("serial", "mqtt")}
        done = {t: f.result() for t, f in runs.items()}
    for transport, (result, wall_s) in done.items():
        print(result.table())
        print(f"{name} over {transport}: {wall_s:.1f} s wall")
    failed = {t: r.table() for t, (r, _) in done.items() if r.failures()}
    assert not failed, "\n".join(f"over {t}:\n{table}" for t, table in failed.items())
    return {t: r for t, (r, _) in done.items()}


def test_healthy_pack_a_day_without_an_alarm(tmp_path: Path) -> None:
    """24 h of board time, a depot day: not one alarm, the watchdog fed, every frame the
    board stored in the database and acknowledged."""
    run_checked(tmp_path, "healthy-24h")


def test_insulation_degrading_over_three_days(tmp_path: Path) -> None:
    """L1 at the first dip, escalation by recurrence, the forecast L2 before any L3, L3,
    and the board's own L3 below 100 ohm/V: 72 h of board time."""
    for result in run_checked(tmp_path, "insulation-3d").values():
        kinds = {(e.rule, e.level, e.source) for e in result.alarms if e.t_s >= 0}
        assert ("insulation", 2, "predicted") in kinds


def test_thermal_runaway_onset_l3_then_l4_with_pre_event_data(tmp_path: Path) -> None:
    run_checked(tmp_path, "thermal-runaway")


def test_link_lost_during_a_runaway_loses_no_frame(tmp_path: Path) -> None:
    """Serial: the cable pulled for 3 min around the first L3; MQTT: the broker down as
    long. Every frame the board stored reaches the daemon; the board's alarms keep their
    times."""
    run_checked(tmp_path, "runaway-link-faults")


def test_open_ntc_is_a_data_quality_alarm_not_a_thermal_one(tmp_path: Path) -> None:
    run_checked(tmp_path, "ntc-open")
