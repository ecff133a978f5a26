"""`packsentry hil list|run` (hil/cli.py) and the scenario files (hil/scenario.py): every
scenario loads, a bad file is refused by key with a "did you mean", real-board mode asks for
the board's config, and the pass/fail table reads as it should."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from packsentry.hil import cli, rig, scenario


def hil(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="packsentry")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["hil", *args])
    code = ns.func(ns)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = hil(["list"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(scenario.available())
    assert {"healthy-24h", "insulation-3d", "thermal-runaway", "runaway-link-faults",
            "ntc-open"} <= set(names)
    assert "broken" not in out


def test_every_scenario_loads() -> None:
    for name, path in scenario.available().items():
        sc = scenario.load(path)
        assert sc.name == name and sc.duration_s > 0 and sc.transports
        for a in sc.alarms + sc.board_alarms:
            assert a.earliest_s <= a.latest_s <= sc.duration_s + sc.drain_s or \
                math.isinf(a.latest_s)


def test_a_real_board_needs_its_config(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Real-board mode itself: tests/test_hil_real_board.py."""
    code, _, err = hil(["run", "ntc-open", "--board", "/dev/ttyUSB0"], capsys)
    assert code == 2 and "needs --board-config FILE" in err and "Traceback" not in err
    code, _, err = hil(["run", "ntc-open", "--board", "/dev/ttyUSB0", "--transport", "mqtt",
                        "--board-config", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "runs over the serial link" in err


def test_unknown_scenario_and_keys_are_named(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = hil(["run", "healthy-24"], capsys)
    assert code == 2 and "did you mean 'healthy-24h'" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('duration_s = 10\n[pack]\nchemistry = "nmc"\ncells_series = 4\n'
                   'rated_ah = 1.0\n[expect]\nonly_expectd = true\n')
    with pytest.raises(scenario.ScenarioError, match="did you mean 'only_expected'"):
        scenario.load(bad)
    bad.write_text('duration_s = 10\n[pack]\nchemistry = "nmc"\ncells_series = 4\n'
                   'rated_ah = 1.0\n[[expect.alarm]]\nrule = "insulaton"\nlevel = 1\n')
    with pytest.raises(scenario.ScenarioError, match="did you mean 'insulation'"):
        scenario.load(bad)
    bad.write_text('duration_s = 10\n[pack]\nchemistry = "nmc"\ncells_series = 4\n'
                   'rated_ah = 1.0\n[[link_fault]]\nkind = "unplug"\nstart_s = 1\nend_s = 2\n')
    with pytest.raises(scenario.ScenarioError, match="serial_unplug"):
        scenario.load(bad)


def test_the_table_and_the_first_matching_alarm() -> None:
    seen = [rig.AlarmSeen(100.0, "insulation", 1, 0, "raised", "host", 1, ""),
            rig.AlarmSeen(200.0, "insulation", 2, 1, "escalated", "host", 1, ""),
            rig.AlarmSeen(300.0, "insulation", 2, 0, "raised", "predicted", 2, "")]
    l2 = scenario.AlarmExpectation("insulation", 2)
    assert rig.match(l2, seen) is seen[1]
    assert rig.match(scenario.AlarmExpectation("insulation", 2, source="predicted"),
                     seen) is seen[2]
    assert rig.match(scenario.AlarmExpectation("insulation", 1, at_least=True,
                                               event="escalated"), seen) is seen[1]
    assert rig.match(scenario.AlarmExpectation("insulation", 3), seen) is None
    result = rig.RunResult("x", "serial", 1000.0, 30.0, checks=[
        rig.Check("insulation L2", "0:00:00 .. 1:00:00", "0:03:20 (escalated, host)", True),
        rig.Check("boot", "none", "board_silent L1", None),
        rig.Check("SoH", "95 .. 105 %", "118 %", False)])
    table = result.table()
    assert not result.passed and [c.name for c in result.failures()] == ["SoH"]
    assert "FAIL" in table.splitlines()[0] and "INFO" in table and "PASS" in table
