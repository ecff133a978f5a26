"""The alarm-limits table: defaults as designed, one row per rule and chemistry, sources
named, and the firmware's local copy generated fresh from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from packsentry.host import limits


def test_firmware_limits_are_fresh() -> None:
    res = subprocess.run([sys.executable, "-m", "packsentry.host.limits", "--check"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("chemistry", limits.CHEMISTRIES)
def test_one_row_per_rule_and_every_row_sourced(chemistry: str) -> None:
    rows = limits.limits_for(chemistry)
    assert len({r.rule for r in rows}) == len(rows)
    assert all(r.source and r.levels for r in rows)
    levels = {r.rule: r.levels for r in rows}
    assert levels["insulation"] == {1: 500, 2: 250, 3: 100}
    assert levels["thermal_event"] == {4: 10}


def test_chemistry_profiles_differ_where_the_cells_do() -> None:
    nmc = {r.rule: r.levels for r in limits.limits_for("nmc")}
    lfp = {r.rule: r.levels for r in limits.limits_for("lfp")}
    assert nmc["cell_overvoltage"][3] == 4300 and lfp["cell_overvoltage"][3] == 3750
    assert nmc["cell_undervoltage"][3] == 2500 and lfp["cell_undervoltage"][3] == 2000
    with pytest.raises(ValueError, match="unknown chemistry 'lto'"):
        limits.limits_for("lto")


def test_a_limit_must_name_a_wire_rule() -> None:
    with pytest.raises(ValueError, match="not an alarm rule"):
        limits.Limit("smoke", "ppm", above=True, levels={3: 1}, clear="", source="x")
