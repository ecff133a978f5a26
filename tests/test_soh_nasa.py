"""Acceptance of the SoH estimator on real ageing data: NASA PCoE cells B0005 and B0006.

Both cells are streamed as samples on one wall-clock time line through one SohBank (see
packsentry.host.soh_report and docs/soh.md). From the 11th discharge on:
1. capacity right after each discharge vs its measured capacity_ah: MAE <= 2 % of rated;
2. R0 just before each impedance test vs its EIS Re: Pearson r >= 0.8.
Uses the committed fixtures (tests/fixtures/nasa), never ../shared.
"""

from __future__ import annotations

import numpy as np
import pytest

from packsentry.host import soh_report

RATED_AH = 2.0


@pytest.fixture(scope="module")
def replay() -> dict[str, soh_report.CellResult]:
    data = soh_report.load(soh_report.FIXTURE_DIR)
    res, _, rows = soh_report.run(data)
    assert rows == sum(d.cycle.size for d in data.values())
    return res


def test_fixtures_hold_every_discharge_sample() -> None:
    data = soh_report.load(soh_report.FIXTURE_DIR)
    for cell, d in data.items():
        assert d.cycle.size == 50285, cell  # every row of B000N_discharge.csv
        assert int(d.cycle.max()) == 168
        discharge = d.test_type == soh_report.TEST_TYPES.index("discharge")
        impedance = d.test_type == soh_report.TEST_TYPES.index("impedance")
        assert discharge.sum() == 168 and impedance.sum() == 278
        assert np.all(np.isfinite(d.capacity_ah[discharge]))
        assert np.all(np.isfinite(d.re_ohm[impedance]))


@pytest.mark.parametrize("cell", soh_report.CELLS)
def test_capacity_tracks_measured_capacity(replay, cell: str) -> None:
    r = replay[cell]
    err = (r.capacity_est_ah - r.capacity_meas_ah)[soh_report.SKIP_DISCHARGES:]
    assert err.size == 158
    assert np.mean(np.abs(err)) <= 0.02 * RATED_AH


@pytest.mark.parametrize("cell", soh_report.CELLS)
def test_capacity_follows_the_recoveries_after_long_rests(replay, cell: str) -> None:
    """The measured capacity jumps up after long rests: the estimate must jump too."""
    r = replay[cell]
    jump_meas = np.diff(r.capacity_meas_ah)
    jump_est = np.diff(r.capacity_est_ah)
    rec = np.flatnonzero(jump_meas > 0.03)
    rec = rec[rec >= soh_report.SKIP_DISCHARGES]
    assert rec.size >= 4
    assert np.all(jump_est[rec] > 0)
    assert np.mean(jump_est[rec] / jump_meas[rec]) >= 0.3


@pytest.mark.parametrize("cell", soh_report.CELLS)
def test_r0_rises_with_eis_re(replay, cell: str) -> None:
    r = replay[cell]
    scored = r.impedance_after_discharge >= soh_report.SKIP_DISCHARGES
    assert np.all(np.isfinite(r.r0_est_mohm[scored]))
    assert scored.sum() == 278
    pearson = np.corrcoef(r.r0_est_mohm[scored], r.re_mohm[scored])[0, 1]
    assert pearson >= 0.8


def test_report_command_runs(tmp_path) -> None:
    png = tmp_path / "soh.png"
    assert soh_report.main(["--json", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
