"""The SoH estimator on the HIL pack simulator: hil/scenarios/healthy-24h.toml without the VM.

A healthy 14S 50 Ah NMC pack (true capacity 99.3-100.4 % of rated per cell) through one depot
day (CC-CV charge, 1 h rest, 2 h drive at 0.15 C, 5 h rest, 2 h drive, 8 h rest), simulated
once at 1 s. The host sees per-cell rows as host/pipeline.py feeds them (wire units: mV, mA,
0.1 degC; the probe on the cell or else the hottest probe), sampled every 1, 10 or 60 s.

The drive is a 60 s current pattern (packsim._DRIVE). A sample every 10 s sees the same six
instants of it every minute, whose mean is 1.22 x the true mean: before the fix the host
counted 18.28 Ah for a 15.00 Ah drive and read SoH 117-120 %, as the HIL run did; at 60 s
one instant only (2.89 x here, the HIL's 222-227 %).

Band: 95-105 %, the scenario's. Expected: the usable capacity is Qmax x z_full, and the
charger's CV at 4.15 V leaves the cells at 96-97 % SOC, averaged with the prior 100 %: about
98 % of the true Qmax, so 97-99 %. The estimator's own 1-sigma after this day is 4.7 % at 1 s
(two partial pairs) and 10-13 % at 10 and 60 s (the aliased pairs carry little weight, the
prior stays): 95-105 % is about one sigma of the best case, so a pair taken at face value
(+22 %) fails it, and a sampling period may not move the answer by more than the band.
"""

from __future__ import annotations

import numpy as np
import pytest

from packsentry.hil.packsim import NOT_ON_CELL, LoadProfile, PackSim, PackSpec
from packsentry.host.soh import SohBank

SPEC = PackSpec(chemistry="nmc", cells_series=14, rated_ah=50.0, n_probes=4, initial_soc=0.5)
DAY_S = 86_400


class Day:
    """One simulated day at 1 s, in the units the board sends."""

    def __init__(self) -> None:
        sim = PackSim([SPEC], seed=1, load=LoadProfile.depot_day())
        sim.step(1e-3)  # the rig's first reading
        n, nc = DAY_S, SPEC.cells_series
        self.t_s = np.empty(n)
        cell_v, cur_a = np.empty((n, nc)), np.empty(n)
        temp_c = np.empty((n, SPEC.n_probes))
        for k in range(n):
            r = sim.step(1.0)
            self.t_s[k] = r.t_s
            cell_v[k], cur_a[k], temp_c[k] = r.cell_v[0, :nc], r.current_a[0], r.temp_c[0]
        self.true_soh_pct = 100.0 * r.capacity_ah[0, :nc] / SPEC.rated_ah
        # the wire's integers (Readings.to_board_units), as the pipeline converts them back
        self.cell_v = np.rint(cell_v * 1000.0) / 1000.0
        self.current_a = np.rint(cur_a * 1000.0) / 1000.0
        temps = np.rint(temp_c * 10.0) / 10.0
        probe_of = np.full(nc, -1)
        for probe, cell in enumerate(SPEC.probe_cell):
            if cell != NOT_ON_CELL and probe_of[cell] < 0:
                probe_of[cell] = probe
        self.cell_temp_c = np.where(probe_of >= 0, temps[:, np.clip(probe_of, 0, None)],
                                    temps.max(axis=1)[:, None])

    def estimate(self, rows: np.ndarray, t_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Feed the readings `rows` (indices into the day) at times t_s (default: theirs)."""
        nc = SPEC.cells_series
        bank = SohBank()
        units = np.array([bank.add("nmc", SPEC.rated_ah) for _ in range(nc)])
        t = self.t_s[rows] if t_s is None else t_s
        n = rows.size
        for a in range(0, n, 4096):  # micro-batches, as the daemon sends them
            b = min(a + 4096, n)
            bank.update(np.tile(units, b - a), np.repeat(t[a:b], nc),
                        self.cell_v[rows[a:b]].ravel(), np.repeat(self.current_a[rows[a:b]], nc),
                        self.cell_temp_c[rows[a:b]].ravel())
        return bank.estimates()


@pytest.fixture(scope="module")
def day() -> Day:
    return Day()


def every(day: Day, period_s: int, phase_s: int) -> np.ndarray:
    """Readings at t = phase (mod period): what a board reporting every period_s sends. The
    reading at t holds the current of the second before it; the HIL rig's reading at a
    multiple of 10 s is phase 0 here."""
    return np.flatnonzero(np.rint(day.t_s).astype(np.int64) % period_s == phase_s)


def check(est: dict[str, np.ndarray], day: Day) -> None:
    soh = est["soh_pct"]
    assert np.all(np.isfinite(soh))
    assert soh.min() >= 95.0 and soh.max() <= 105.0, (soh.min(), soh.max())
    # and the error within two of the estimator's own sigmas (truth: Qmax, see the docstring)
    assert np.all(np.abs(soh - day.true_soh_pct) <= 2.0 * est["soh_sigma_pct"])


@pytest.mark.parametrize(("period_s", "phase_s"), [(1, 0), (10, 0), (10, 7), (60, 10)])
def test_healthy_pack_reads_healthy_at_any_sample_period(day: Day, period_s: int,
                                                        phase_s: int) -> None:
    """10 s phase 0 (the rig's: +22 % counted) and 7 (-26 %); 60 s phase 10: every sample in
    the 2.5 x pulse (+189 %), which the innovation gate rejects."""
    est = day.estimate(every(day, period_s, phase_s))
    check(est, day)
    assert est["pairs"].min() + est["pairs_rejected"].min() >= 2  # both drives were seen


def test_held_readings_resent_every_second_read_as_the_10_s_readings(day: Day) -> None:
    """The HIL rig holds each reading 10 s; a board reporting every second re-sends it ten
    times. The repeats are recognised as one reading: the same answer as at 10 s."""
    rows = every(day, 10, 0)
    held = np.repeat(rows, 10)
    t = np.repeat(day.t_s[rows], 10) + np.tile(np.arange(10.0), rows.size)
    est_held = day.estimate(held, t)
    check(est_held, day)
    est_10 = day.estimate(rows)
    np.testing.assert_allclose(est_held["soh_pct"], est_10["soh_pct"], atol=0.5)


def test_sample_periods_agree(day: Day) -> None:
    soh = {p: day.estimate(every(day, p, 0 if p < 60 else 10))["soh_pct"] for p in (1, 10, 60)}
    assert np.max(np.abs(soh[10] - soh[1])) <= 5.0
    assert np.max(np.abs(soh[60] - soh[1])) <= 5.0


@pytest.mark.xfail(strict=True, reason="at 60 s every sample is at the 1.0 x level of the "
                   "drive pattern: a steady current 15.6 % above the true mean that no sample "
                   "shows (docs/soh.md, Limitations); reads 112-114 % after one day")
def test_an_alias_that_looks_like_a_steady_current_is_not_seen(day: Day) -> None:
    check(day.estimate(every(day, 60, 30)), day)
