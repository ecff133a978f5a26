"""soh: cell-updates/s of the full estimator step, SohBank.update (host/soh.py), on one core.

A cell-update is one sample of one cell through everything the daemon's estimator does with
it: the SOC extended Kalman filter (predict and correct), the R0 recursive least squares on
current steps, the capacity bookkeeping (coulomb counts, discharge tracking, rest anchors).

The fleet: `n_cells` cells in packs of 96 (NMC and LFP, 50 Ah cells with +-3 % capacity and
+-10 % R0 spread), 8 probes per pack (each cell gets the temperature of the probe of its
12-cell module, as the daemon maps them), a drive-like current per pack (a new level every
5-30 s, between -0.5 C and 1 C, zero net charge over the 300 s profile), cell voltages from a
1-RC model of each cell, quantised to 1 mV like the wire. One `update` call is one micro-batch
holding one sample of every cell (1 Hz boards), as the daemon's Processor feeds it; the state
carries on from call to call (steady state: no start-up gaps).

Baseline: filterpy's ExtendedKalmanFilter doing the SOC step (predict with the coulomb count
and the RC, correct against the OCV curve) for one cell at a time, the textbook way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.harness import Context, Figure, Target
from packsentry.host import ocv
from packsentry.host.soh import CHEM_PARAMS, CP_R1_RATIO, CP_TAU1_S, SohBank

CELLS_PER_PACK = 96
PROBES_PER_PACK = 8
RATED_AH = 50.0
PROFILE_S = 300  # the drive profile repeats every this many 1 s steps


def make_fleet(n_cells: int, seed: int = 6) -> dict[str, Any]:
    """Per-step arrays for PROFILE_S steps: cell_v[k], current_a[k] (n_cells each), temp_c
    (n_cells) and each unit's chemistry."""
    rng = np.random.default_rng(seed)
    pack = np.arange(n_cells) // CELLS_PER_PACK
    n_packs = int(pack[-1]) + 1
    chem = np.where(rng.random(n_packs) < 0.5, ocv.CHEM_NMC, ocv.CHEM_LFP)[pack]
    q_ah = RATED_AH * rng.uniform(0.97, 1.03, n_cells)
    r0_ohm = CHEM_PARAMS[chem, 0] / RATED_AH * rng.uniform(0.9, 1.1, n_cells)
    r1_ohm = CHEM_PARAMS[chem, CP_R1_RATIO] * r0_ohm
    a = math.exp(-1.0 / CHEM_PARAMS[0, CP_TAU1_S])  # both chemistries: the same tau
    # drive profile per pack: levels held 5-30 s, then zero net charge
    current = np.empty((PROFILE_S, n_packs))
    for p in range(n_packs):
        k = 0
        while k < PROFILE_S:
            hold = int(rng.integers(5, 31))
            current[k:k + hold, p] = RATED_AH * rng.choice([-0.5, 0.0, 0.0, 0.2, 0.5, 1.0])
            k += hold
    current -= current.mean(axis=0)
    i_cell = current[:, pack]
    z = rng.uniform(0.4, 0.8, n_cells)
    v1 = np.zeros(n_cells)
    cell_v = np.empty((PROFILE_S, n_cells))
    grid = np.linspace(0.0, 1.0, ocv.N_GRID)
    for k in range(PROFILE_S):
        z = z - i_cell[k] / 3600.0 / q_ah
        v1 = a * v1 + r1_ohm * (1 - a) * i_cell[k]
        o = np.where(chem == ocv.CHEM_NMC, np.interp(z, grid, ocv.OCV_V[ocv.CHEM_NMC]),
                     np.interp(z, grid, ocv.OCV_V[ocv.CHEM_LFP]))
        cell_v[k] = np.round((o - r0_ohm * i_cell[k] - v1) * 1000.0) / 1000.0
    probe_t = 25.0 + rng.uniform(-5, 10, (n_packs, PROBES_PER_PACK))
    cell_probe = (np.arange(n_cells) % CELLS_PER_PACK) // (CELLS_PER_PACK // PROBES_PER_PACK)
    temp_c = np.round(probe_t[pack, cell_probe] * 10) / 10  # steady over the profile
    return {"chem": chem, "cell_v": cell_v, "current_a": np.ascontiguousarray(i_cell),
            "temp_c": temp_c}


def make_bank(chem: np.ndarray) -> SohBank:
    """A bank of len(chem) units, grown one add() at a time as the daemon grows its bank when
    boards are born (its memory layout is the daemon's: a bank sized once would hide a
    layout that only growth produces, as it once did)."""
    bank = SohBank()
    for c in chem:
        bank.add(ocv.CHEMISTRIES[int(c)], RATED_AH)
    return bank


class Feeder:
    """Feeds the fleet's profile step after step (1 s apart), forever."""

    def __init__(self, fleet: dict[str, Any]) -> None:
        self.fleet = fleet
        self.bank = make_bank(fleet["chem"])
        self.unit = np.arange(len(fleet["chem"]), dtype=np.int64)
        self.k = 0

    def steps(self, n: int) -> None:
        f, bank, unit = self.fleet, self.bank, self.unit
        for _ in range(n):
            j = self.k % PROFILE_S
            bank.update(unit, np.full(unit.size, float(self.k)), f["cell_v"][j],
                        f["current_a"][j], f["temp_c"])
            self.k += 1


def filterpy_steps(fleet: dict[str, Any], n: int) -> Any:
    """The baseline: filterpy's EKF, SOC step for one cell (unit 0), n samples."""
    from filterpy.kalman import ExtendedKalmanFilter

    chem = int(fleet["chem"][0])
    r0 = CHEM_PARAMS[chem, 0] / RATED_AH
    r1 = CHEM_PARAMS[chem, CP_R1_RATIO] * r0
    tau = CHEM_PARAMS[chem, CP_TAU1_S]
    table = ocv.OCV_V[chem]
    grid = np.linspace(0.0, 1.0, ocv.N_GRID)

    def hx(x: np.ndarray, i: float) -> np.ndarray:
        return np.array([[np.interp(x[0, 0], grid, table) - r0 * i - x[1, 0]]])

    def jacobian(x: np.ndarray, i: float) -> np.ndarray:
        k = min(max(int(x[0, 0] * (ocv.N_GRID - 1)), 0), ocv.N_GRID - 2)
        return np.array([[(table[k + 1] - table[k]) * (ocv.N_GRID - 1), -1.0]])

    ekf = ExtendedKalmanFilter(dim_x=2, dim_z=1, dim_u=1)
    ekf.x = np.array([[0.5], [0.0]])
    ekf.P = np.diag([0.25, 0.0025])
    ekf.R = np.array([[0.02 ** 2]])
    ekf.Q = np.diag([1e-10, 1e-7])
    dt = 1.0
    a = math.exp(-dt / tau)
    cell_v, current = fleet["cell_v"][:, 0], fleet["current_a"][:, 0]

    def run() -> None:
        for k in range(n):
            j = k % PROFILE_S
            i = float(current[j])
            ekf.F = np.array([[1.0, 0.0], [0.0, a]])
            ekf.B = np.array([[-dt / 3600.0 / RATED_AH], [r1 * (1.0 - a)]])
            ekf.predict(u=np.array([[i]]))
            ekf.update(np.array([[cell_v[j, ]]]), jacobian, hx, args=(i,), hx_args=(i,))

    return run


def run(ctx: Context) -> list[Figure]:
    sizes = (500, 2_000) if ctx.smoke else (10_000, 100_000)
    # steps per timed run: ~1-2 M cell-updates, a few tenths of a second
    steps = {sizes[0]: 3 if ctx.smoke else 100, sizes[1]: 2 if ctx.smoke else 20}
    fp_n = 20 if ctx.smoke else 1_000
    out: list[Figure] = []
    for n in sizes:
        ctx.log(f"soh: fleet of {n} cells")
        fleet = make_fleet(n)
        feeder = Feeder(fleet)
        feeder.steps(PROFILE_S if not ctx.smoke else 2)  # through the start-up gap, JIT warm
        fp = filterpy_steps(fleet, fp_n)
        t = ctx.compare({"kernel": (lambda f=feeder, n=n: f.steps(steps[n]), n * steps[n]),
                         "filterpy": (fp, fp_n)}, runs=15)
        est = feeder.bank.estimates()
        details = {"candidate": t["kernel"].details(), "baseline": t["filterpy"].details(),
                   "soc_pct_range": [float(np.nanmin(est["soc_pct"])),
                                     float(np.nanmax(est["soc_pct"]))],
                   "r0_updates_per_cell": float(np.mean(est["r0_updates"]))}
        name = f"SohBank.update, {n:,} cells"
        unit = "cell-updates/s"
        out.append(Figure(name, t["kernel"].rate, unit, baseline="filterpy EKF, one cell",
                          baseline_value=t["filterpy"].rate, target=Target(">=", 1000.0),
                          details=details,
                          note=f"{steps[n]} micro-batches of {n:,} rows per run (1 sample of "
                               f"every cell each); cpu/wall {t['kernel'].cores:.2f}"))
        out.append(Figure(name, t["kernel"].rate, unit,
                          target=Target(">=", 20e6, of="value", unit=unit)))
    return out
