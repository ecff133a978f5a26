"""Pack simulator: many battery packs at once, vectorised, deterministic.

What the HIL rig feeds the (virtual or fast) boards: per pack the cell voltages, current,
probe temperatures and insulation resistances that the sensors would report, and the true
values behind them (SOC, capacity, R0) to score the host's estimates against. docs/hil.md
("Pack simulator") has the equations, every parameter with its source or assumption, the
faults and the measured speed.

State is structure-of-arrays, padded to the largest pack: `(field, pack, cell)`,
`(field, pack, node)`, `(field, pack, probe)`. One numba kernel advances every pack by one
`step()` (prange over packs, so both cores work); the per-step Python work is a handful of
numpy operations over the faults, never a loop over packs.

Determinism: a pack's parameters come from its own stream `default_rng([seed, pack])` and
its sensor noise is a counter-based hash of (pack key, step number, channel), so the same
seed, specs, faults, loads and `step()` sequence give bit-identical readings, and a pack's
readings do not depend on which other packs are simulated with it.

Time: `t_s` starts at 0, which is midnight (the daily load schedules and the humidity dips
of the insulation fault follow the time of day).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit, prange

from packsentry.host.ocv import CHEMISTRIES, OCV_V, chemistry_id, ocv_at
from packsentry.protocol import layout

NOT_ON_CELL = 0xFFFF  # probe_cell entry of a probe that is not on a cell (ambient air)
INF = math.inf

# -- cell and thermal parameters, rows in host.ocv.CHEMISTRIES order (nmc, lfp) --------------
# Sources and assumptions: docs/hil.md, "Pack simulator".
assert CHEMISTRIES == ("nmc", "lfp")
MAX_CELL_V = np.array([4.20, 3.65])  # for max_pack_v (insulation limits are per volt of it)
CV_DEFAULT_V = np.array([4.15, 3.55])  # charge limit: below the L1 cell-overvoltage limit
V_MIN_DEFAULT_V = np.array([3.05, 2.85])  # discharge cut-off: above the L1 undervoltage limit
R0_OHM_AH = np.array([0.080, 0.040])  # fresh R0 at 25 degC times rated Ah (1 s DC resistance)
R1_OVER_R0 = 0.6  # RC-pair resistance relative to R0
TAU1_S = 40.0  # RC-pair time constant (diffusion/charge transfer, tens of seconds)
EA_OVER_R_K = 25_000.0 / 8.314  # Arrhenius activation energy of R0 and R1, 25 kJ/mol
HEAT_CAP_J_K_AH = np.array([17.0, 25.0])  # cell heat capacity per rated Ah
SELF_DISCHARGE_PER_MONTH = 0.02  # fraction of capacity, fresh cell at 25 degC
# Ageing (the law: docs/hil.md): calendar ~ t^0.75, cycling linear in equivalent full cycles.
CAL_FADE_1Y = np.array([0.04, 0.02])  # capacity lost after 1 year of storage
CYC_FADE_1000 = np.array([0.20, 0.067])  # capacity lost per 1000 equivalent full cycles
CAL_GROWTH_1Y = np.array([0.10, 0.05])  # R0 growth after 1 year
CYC_GROWTH_1000 = np.array([0.50, 0.15])  # R0 growth per 1000 equivalent full cycles
# Cell-to-cell spread at spread = 1 (standard deviations).
SPREAD_CAPACITY = 0.005
SPREAD_R0 = 0.02
SPREAD_SOC = 0.005  # a pack balanced when it was built
SPREAD_SELF_DISCHARGE = 0.3  # lognormal sigma
SPREAD_AGEING = 0.10  # lognormal sigma of each cell's ageing rate
TAU_AMBIENT_S = 1800.0  # default cell-to-ambient thermal time constant (PackSpec.tau_amb_s)
TAU_COUPLE_S = 1200.0  # neighbouring probe zones: conductance = cell heat capacity / this
# Sensors.
NOISE_CELL_V = 0.001
NOISE_PACK_V = 0.010
NOISE_CURRENT_A = 0.005
NOISE_TEMP_C = 0.05
PROBE_OFFSET_C = 0.2  # per-probe calibration error (standard deviation)
# Thermal runaway: a vented cell's voltage collapses with this time constant; the
# exothermic power is capped at this heating rate of its zone.
VENT_COLLAPSE_S = 2.0
RUNAWAY_MAX_K_PER_S = 20.0

# "Drive-cycle-like" current pattern (not a standard cycle): 60 s of stop, acceleration,
# cruise, regenerative braking and coasting, as multiples of the mean discharge current.
_DRIVE = ((8.0, 0.0), (12.0, 2.5), (25.0, 1.0), (6.0, -1.0), (9.0, 0.3))
DRIVE_PERIOD_S = sum(d for d, _ in _DRIVE)
_DRIVE_MEAN = sum(d * lv for d, lv in _DRIVE) / DRIVE_PERIOD_S
DRIVE_END_S = np.cumsum([d for d, _ in _DRIVE])
DRIVE_LEVEL = np.array([lv / _DRIVE_MEAN for _, lv in _DRIVE])

# -- fault kinds and their parameters (defaults) -----------------------------------------------

FAULT_PARAMS: dict[str, dict[str, float]] = {
    # Rp (side 0) or Rn (side 1) follows, in ohm per volt of max_pack_v: a dry level falling
    # geometrically from dry_start to dry_end over `days`, and humidity dips (raised cosine,
    # dip_width_h wide, dips_per_day a day, the first at first_dip_h o'clock, dip_spacing_h
    # apart) whose bottom falls from dip_start to dip_end, geometrically in
    # (time / days) ** dip_shape: the damage accelerates. Defaults: docs/hil.md.
    "insulation": {"side": 0, "days": 2.5, "dry_start_ohm_per_v": 3000.0,
                   "dry_end_ohm_per_v": 700.0, "dip_start_ohm_per_v": 450.0,
                   "dip_end_ohm_per_v": 60.0, "dip_shape": 3.0, "dips_per_day": 3,
                   "first_dip_h": 4.0, "dip_spacing_h": 3.0, "dip_width_h": 1.5},
    # A resistive path inside `cell`: r_ohm at the start, geometrically to r_end_ohm over
    # ramp_s. It drains the cell (self-discharge) and heats it (V^2/R).
    "internal_short": {"r_ohm": 20.0, "r_end_ohm": math.nan, "ramp_s": 86_400.0},
    # Exothermic self-heating of `cell`'s zone: rate0 K/s at the start, doubling every
    # doubling_s, until the zone reaches vent_c; then the cell vents: its voltage (and that
    # of the next cells_lost-1 cells) collapses and the heat decays with burn_s.
    "thermal_runaway": {"rate0_k_per_s": 0.002, "doubling_s": 60.0, "vent_c": 140.0,
                        "burn_s": 30.0, "cells_lost": 1},
    # Thermal resistance to ambient of the whole pack times factor (geometrically to
    # factor_end over ramp_s): a stopped fan, a blocked duct.
    "cooling_failure": {"factor": 5.0, "factor_end": math.nan, "ramp_s": 0.0},
    "ntc_open": {},  # `probe` reads nothing (NaN; the board's ABNORMAL marker)
    "ntc_short": {},  # same, from the other end of the divider
    # channel 0: cell voltage of `cell`, 1: temperature of `probe`, 2: pack voltage,
    # 3: current. Stuck at `value` (V, degC, V, A), or NaN: at the reading when it started.
    "adc_stuck": {"channel": 0, "value": math.nan},
    "current_offset": {"offset_a": 0.5, "gain": 1.0},  # reported = true * gain + offset
    # `cell`'s SOC moves by dsoc at start_s (once); leak_a drains it while active (e.g. a
    # balancing bleeder stuck on: the heat is on the board, not in the cell).
    "cell_imbalance": {"dsoc": -0.10, "leak_a": 0.0},
}
FAULT_KINDS = tuple(FAULT_PARAMS)
STUCK_CELL, STUCK_PROBE, STUCK_PACK, STUCK_CURRENT = 0, 1, 2, 3


@dataclass(frozen=True)
class PackSpec:
    """One pack. `probe_cell`: per probe, the cell it sits on (NOT_ON_CELL: ambient air);
    empty: n_probes spread evenly over the cells. max_pack_v: None derives it from the
    chemistry's maximum cell voltage."""

    chemistry: str
    cells_series: int
    rated_ah: float
    n_probes: int = 4
    probe_cell: tuple[int, ...] = ()
    max_pack_v: float | None = None
    ambient_c: float = 25.0
    ambient_swing_c: float = 0.0  # daily +- amplitude, warmest at 15:00
    cycles: float = 0.0  # equivalent full cycles already done (age)
    days: float = 0.0  # calendar age
    spread: float = 1.0  # scale of the cell-to-cell spread (0: identical cells)
    initial_soc: float = 0.5
    riso_pos_ohm: float = 5e6  # healthy insulation HV+ to chassis
    riso_neg_ohm: float = 5e6  # healthy insulation HV- to chassis
    y_cap_f: float = 100e-9  # Y-capacitance per side
    r0_ohm: float | None = None  # fresh R0 at 25 degC; None: R0_OHM_AH / rated_ah
    tau_amb_s: float = TAU_AMBIENT_S

    def __post_init__(self) -> None:
        chem = chemistry_id(self.chemistry)
        if self.cells_series < 1 or self.rated_ah <= 0 or self.n_probes < 0:
            raise ValueError(f"bad pack spec {self}")
        if not self.probe_cell and self.n_probes:
            step = self.cells_series / self.n_probes
            object.__setattr__(self, "probe_cell", tuple(
                min(self.cells_series - 1, int((j + 0.5) * step)) for j in range(self.n_probes)))
        if len(self.probe_cell) != self.n_probes:
            raise ValueError(f"probe_cell has {len(self.probe_cell)} entries for "
                             f"{self.n_probes} probes")
        if any(c != NOT_ON_CELL and not 0 <= c < self.cells_series for c in self.probe_cell):
            raise ValueError(f"probe_cell {self.probe_cell}: cells are 0..{self.cells_series - 1}"
                             f" or {NOT_ON_CELL:#x}")
        if self.max_pack_v is None:
            object.__setattr__(self, "max_pack_v", float(MAX_CELL_V[chem] * self.cells_series))

    @property
    def max_pack_mv(self) -> int:
        return round(float(self.max_pack_v or 0.0) * 1000)

    def birth_fields(self) -> dict[str, Any]:
        """The birth-payload fields the pack determines (the board adds firmware, periods...)."""
        return {"chemistry": self.chemistry.lower(), "cells_series": self.cells_series,
                "rated_mah": round(self.rated_ah * 1000), "max_pack_mv": self.max_pack_mv,
                "n_probes": self.n_probes, "n_cells": self.cells_series,
                "probe_cell": list(self.probe_cell)}


@dataclass(frozen=True)
class Fault:
    """A fault on the timeline of one pack, active for start_s <= t < end_s. `params`
    override FAULT_PARAMS[kind] (unknown names are refused)."""

    kind: str
    start_s: float
    end_s: float = INF
    pack: int = 0
    cell: int = 0
    probe: int = 0
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_PARAMS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {FAULT_KINDS}")
        unknown = set(self.params) - set(FAULT_PARAMS[self.kind])
        if unknown:
            raise ValueError(f"fault {self.kind}: unknown parameters {sorted(unknown)}; "
                             f"known: {sorted(FAULT_PARAMS[self.kind])}")
        if not self.end_s > self.start_s:
            raise ValueError(f"fault {self.kind}: end_s must be after start_s")

    def param(self, name: str) -> float:
        return float(self.params.get(name, FAULT_PARAMS[self.kind][name]))


# -- load profiles -----------------------------------------------------------------------------

MODES = ("rest", "cc", "cccv", "drive")
M_REST, M_CC, M_CCCV, M_DRIVE = range(4)


@dataclass(frozen=True)
class Segment:
    """One stretch of a load profile. c_rate in multiples of the rated capacity per hour:
    cc: + discharge, - charge (a charge tapers at cv_v and ends below cutoff_c); cccv: the
    charge rate (magnitude), CV at cv_v per cell (0: the chemistry's CV_DEFAULT_V) until the
    current falls below cutoff_c; drive: the mean discharge rate of the pulse pattern.
    Discharge stops (until the segment ends) when a cell would fall below v_min_v (0: the
    chemistry's V_MIN_DEFAULT_V), as a BMS would."""

    duration_s: float
    mode: str = "rest"
    c_rate: float = 0.0
    cv_v: float = 0.0
    cutoff_c: float = 0.05
    v_min_v: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown load mode {self.mode!r}; known: {MODES}")
        if not self.duration_s > 0:
            raise ValueError("segment duration_s must be > 0")


@dataclass(frozen=True)
class LoadProfile:
    """Segments one after the other from the profile's time 0 (= sim time + offset_s);
    repeated if `repeat`, else rest after the last."""

    segments: tuple[Segment, ...]
    repeat: bool = False
    offset_s: float = 0.0

    @property
    def period_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @classmethod
    def rest(cls) -> LoadProfile:
        return cls((Segment(INF),))

    @classmethod
    def constant(cls, c_rate: float, **kw: float) -> LoadProfile:
        """Constant current at c_rate (+ discharge, - charge) until the cut-off."""
        return cls((Segment(INF, "cc", c_rate, **kw),))

    @classmethod
    def charge(cls, c_rate: float = 0.5, **kw: float) -> LoadProfile:
        """CC-CV charge, then rest."""
        return cls((Segment(INF, "cccv", c_rate, **kw),))

    @classmethod
    def drive(cls, c_rate: float, duration_s: float = INF) -> LoadProfile:
        return cls((Segment(duration_s, "drive", c_rate),))

    @classmethod
    def depot_day(cls, charge_c: float = 0.25, drive_c: float = 0.15,
                  offset_s: float = 0.0) -> LoadProfile:
        """Daily: CC-CV charge 00:00-06:00, drives 07:00-09:00 and 14:00-16:00, rest else."""
        h = 3600.0
        return cls((Segment(6 * h, "cccv", charge_c), Segment(1 * h),
                    Segment(2 * h, "drive", drive_c), Segment(5 * h),
                    Segment(2 * h, "drive", drive_c), Segment(8 * h)),
                   repeat=True, offset_s=offset_s)


# -- the readings ------------------------------------------------------------------------------


def _sample_markers() -> dict[str, tuple[int, int, int, int]]:
    """(lowest, highest plain value, abnormal, invalid) per sample field, from the wire schema."""
    out = {}
    for seg in layout.payload_layout("sample").segments:
        pairs = ([(f.name, f.fmt) for f in seg.fields] if isinstance(seg, layout.Fixed) else
                 [(seg.name, seg.elem_fmt)] if isinstance(seg, layout.IntArray) else [])
        for name, fmt in pairs:
            abnormal, invalid = layout.markers(fmt)
            lowest = -(invalid + 1) if fmt.islower() else 0
            out[name] = (lowest, abnormal - 1, abnormal, invalid)
    return out


MARKERS = _sample_markers()


def _to_int(x: np.ndarray, scale: float, name: str) -> np.ndarray:
    """Wire integers of a field: rounded, clamped below its markers, NaN -> INVALID."""
    lo, hi, _, invalid = MARKERS[name]
    v = np.clip(np.rint(np.nan_to_num(x * scale, nan=0.0)), lo, hi).astype(np.int64)
    return np.where(np.isnan(x), invalid, v)


@dataclass
class Readings:
    """One instant, all packs. Reported values (what the sensors give, noise and sensor
    faults included; NaN where a sensor reads nothing) and the true values behind them.
    Arrays are padded to the largest pack (NaN beyond a pack's cells / probes)."""

    t_s: float
    pack_v: np.ndarray  # (n,) reported
    current_a: np.ndarray  # (n,) reported, + = discharge
    cell_v: np.ndarray  # (n, cells) reported
    temp_c: np.ndarray  # (n, probes) reported; NaN: open/shorted probe
    riso_pos_ohm: np.ndarray  # (n,) true (the board's bridge measures it)
    riso_neg_ohm: np.ndarray  # (n,)
    riso_tau_s: np.ndarray  # (n,) Y-capacitance time constant, bridge open
    true_pack_v: np.ndarray
    true_current_a: np.ndarray
    true_cell_v: np.ndarray
    true_temp_c: np.ndarray  # at the probe locations
    soc: np.ndarray  # (n, cells)
    capacity_ah: np.ndarray  # (n, cells) now, after ageing
    r0_ohm: np.ndarray  # (n, cells) at 25 degC, after ageing
    vented: np.ndarray  # (n,) bool
    ntc_open: np.ndarray  # (n, probes) bool
    ntc_short: np.ndarray
    probe_stuck: np.ndarray
    cell_stuck: np.ndarray  # (n, cells) bool
    pack_v_stuck: np.ndarray  # (n,) bool
    current_stuck: np.ndarray
    current_offset_a: np.ndarray  # (n,) offset of the current sensor now
    n_cells: np.ndarray  # (n,) int
    n_probes: np.ndarray
    _board: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def board_arrays(self) -> dict[str, np.ndarray]:
        """All packs in wire units and markers at once (int64 arrays, padded)."""
        if self._board is None:
            # an open or shorted NTC is what firmware/ntc.py reports as ABNORMAL
            bad_ntc = self.ntc_open | self.ntc_short
            temps = _to_int(self.temp_c, 10.0, "temps_dc")
            temps = np.where(bad_ntc, MARKERS["temps_dc"][2], temps)
            self._board = {
                "pack_mv": _to_int(self.pack_v, 1000.0, "pack_mv"),
                "current_ma": _to_int(self.current_a, 1000.0, "current_ma"),
                "riso_pos_kohm": _to_int(self.riso_pos_ohm, 1e-3, "riso_pos_kohm"),
                "riso_neg_kohm": _to_int(self.riso_neg_ohm, 1e-3, "riso_neg_kohm"),
                "temps_dc": temps,
                "cells_mv": _to_int(self.cell_v, 1000.0, "cells_mv"),
            }
        return self._board

    def to_board_units(self, pack: int) -> dict[str, Any]:
        """The Sample payload of one pack (alarm_level/alarm_flags 0: the board's to set)."""
        b = self.board_arrays()
        nc, npr = int(self.n_cells[pack]), int(self.n_probes[pack])
        return {"n_probes": npr, "n_cells": nc,
                "pack_mv": int(b["pack_mv"][pack]), "current_ma": int(b["current_ma"][pack]),
                "riso_pos_kohm": int(b["riso_pos_kohm"][pack]),
                "riso_neg_kohm": int(b["riso_neg_kohm"][pack]),
                "alarm_level": 0, "alarm_flags": 0,
                "temps_dc": b["temps_dc"][pack, :npr].tolist(),
                "cells_mv": b["cells_mv"][pack, :nc].tolist()}


# -- insulation --------------------------------------------------------------------------------


def _insulation_ohm_per_v(p: Mapping[str, np.ndarray], since_s: np.ndarray,
                          t_s: np.ndarray | float) -> np.ndarray:
    """Target insulation (ohm/V) of insulation faults, vectorised over the faults."""
    progress = np.clip(since_s / (p["days"] * 86_400.0), 0.0, 1.0)
    log_dry = np.log(p["dry_start_ohm_per_v"]) + progress * np.log(
        p["dry_end_ohm_per_v"] / p["dry_start_ohm_per_v"])
    log_dip = np.log(p["dip_start_ohm_per_v"]) + progress ** p["dip_shape"] * np.log(
        p["dip_end_ohm_per_v"] / p["dip_start_ohm_per_v"])
    hour = (np.asarray(t_s) / 3600.0) % 24.0
    bump = np.zeros(np.shape(since_s))
    for j in range(int(np.max(p["dips_per_day"], initial=0))):
        x = ((hour - p["first_dip_h"] - j * p["dip_spacing_h"]) % 24.0) / p["dip_width_h"]
        inside = (x < 1.0) & (j < p["dips_per_day"])
        bump = np.maximum(bump, np.where(inside, 0.5 - 0.5 * np.cos(2 * np.pi * x), 0.0))
    return np.exp(log_dry + bump * (log_dip - log_dry))


def insulation_ohm_per_v(fault: Fault, t_s: np.ndarray | float) -> np.ndarray:
    """The insulation an "insulation" fault aims for at time(s) t_s, in ohm per volt of
    max_pack_v (before it is combined with the healthy value): for scenario expectations."""
    if fault.kind != "insulation":
        raise ValueError("not an insulation fault")
    p = {k: np.asarray(fault.param(k)) for k in FAULT_PARAMS["insulation"]}
    t = np.asarray(t_s, dtype=float)
    out = _insulation_ohm_per_v(p, t - fault.start_s, t)
    return np.where((t >= fault.start_s) & (t < fault.end_s), out, np.inf)


def bridge_v(pack_v: np.ndarray | float, rp_ohm: np.ndarray | float,
             rn_ohm: np.ndarray | float, r0_ohm: float, rd_ohm: float, state: int,
             y_cap_f: float = 100e-9) -> tuple[Any, Any, Any]:
    """The switched-resistor bridge (DESIGN.md section 6), settled: (Vp, Vn, tau_s) with
    state 0 (R0 open), 1 (R0 from HV+ to chassis) or 2 (from HV- to chassis); the measuring
    dividers rd_ohm sit across Rp and Rn always. tau_s: how the chassis node settles after a
    switch (Y-capacitance y_cap_f per side), for a virtual board's settle time."""
    gp = 1.0 / np.asarray(rp_ohm) + 1.0 / rd_ohm + (1.0 / r0_ohm if state == 1 else 0.0)
    gn = 1.0 / np.asarray(rn_ohm) + 1.0 / rd_ohm + (1.0 / r0_ohm if state == 2 else 0.0)
    vp = np.asarray(pack_v) * gn / (gp + gn)  # series conductances: the smaller takes more
    return vp, np.asarray(pack_v) - vp, 2.0 * y_cap_f / (gp + gn)


# -- hashing (noise, link faults) --------------------------------------------------------------

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser, on Python ints (same as the kernel's _mix)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _gauss(key: np.uint64, step_k: np.uint64, channel: np.uint64) -> float:
    """About N(0, 1), from (key, step, channel) alone: Irwin-Hall sum of four 16-bit parts."""
    x = _mix(key ^ (step_k * np.uint64(0x9E3779B97F4A7C15))
             ^ (channel * np.uint64(0xD1B54A32D192ED03)))
    m = np.uint64(0xFFFF)
    s = (x & m) + ((x >> np.uint64(16)) & m) + ((x >> np.uint64(32)) & m) + (x >> np.uint64(48))
    return (float(s) / 65535.0 - 2.0) * 1.7320508075688772


@dataclass(frozen=True)
class LinkAction:
    drop: bool
    corrupt_bit: int | None  # bit to flip (modulo the frame's length in bits), None: intact
    duplicate: bool
    delay_s: float


@dataclass(frozen=True)
class LinkFaults:
    """Per-frame link faults for the scenario runner, decided by a hash of (seed, stream,
    frame number) alone: the same frame gets the same fate whatever order it is asked in."""

    seed: int
    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    max_delay_s: float = 2.0

    def _u(self, stream: int, frame: int, k: int) -> int:
        return _mix64(_mix64(_mix64(self.seed & _M64) ^ stream & _M64) ^ ((frame << 3) | k)
                      & _M64)

    def decide(self, frame: int, stream: int = 0) -> LinkAction:
        u = [self._u(stream, frame, k) / 2.0**64 for k in range(5)]
        if u[0] < self.drop:
            return LinkAction(True, None, False, 0.0)
        bit = self._u(stream, frame, 5) & 0xFFFFFFFF if u[1] < self.corrupt else None
        delay_s = u[4] * self.max_delay_s if u[3] < self.delay else 0.0
        return LinkAction(False, bit, u[2] < self.duplicate, delay_s)

    def apply(self, data: bytes, frame: int, stream: int = 0) -> list[tuple[float, bytes]]:
        """What reaches the other end: (delay_s, bytes) per copy; [] if dropped."""
        a = self.decide(frame, stream)
        if a.drop:
            return []
        if a.corrupt_bit is not None and data:
            bit = a.corrupt_bit % (8 * len(data))
            buf = bytearray(data)
            buf[bit >> 3] ^= 1 << (bit & 7)
            data = bytes(buf)
        return [(a.delay_s, data)] * (2 if a.duplicate else 1)


# -- the kernel --------------------------------------------------------------------------------

# Rows of the state blocks (module constants: numba folds them).
PF_RATED, PF_AMB, PF_SWING, PF_CYC0, PF_DAYS0, PF_THR, PF_COOL, PF_IOFF, PF_IGAIN = range(9)
PF_VSTUCK, PF_VSTUCK_V, PF_ISTUCK, PF_ISTUCK_V, PF_NOISE = range(9, 14)
N_PF = 14
PI_CHEM, PI_NCELL, PI_NNODE, PI_NPROBE, PI_PROF, PI_LATCH = range(6)
N_PI = 6
CF_SOC, CF_V1, CF_CAPM, CF_R0F, CF_AGEM, CF_SD, CF_GSHORT, CF_LEAK = range(8)
CF_XSTART, CF_XRATE, CF_XK, CF_XVENT, CF_XBURN, CF_XLOST, CF_TVENT, CF_PVENT = range(8, 16)
CF_TDEAD, CF_STUCK, CF_STUCK_V, CF_OCV, CF_ALIVE, CF_PX = range(16, 22)
N_CF = 22
NF_T, NF_C, NF_GAMB, NF_GLEFT, NF_Q, NF_ARR = range(6)
N_NF = 6
QF_OFF, QF_BAD, QF_STUCK, QF_STUCK_V = range(4)  # QF_BAD: 0 ok, 1 open, 2 shorted
N_QF = 4
OP_V, OP_I, OP_TV, OP_TI, OP_VENT = range(5)
N_OP = 5
OC_V, OC_TV, OC_SOC, OC_CAP, OC_R0 = range(5)
N_OC = 5
OQ_T, OQ_TT = range(2)
N_OQ = 2
SG_T0, SG_T1, SG_MODE, SG_C, SG_CV, SG_CUT, SG_VMIN = range(7)
N_SG = 7
PR_LO, PR_HI, PR_PERIOD, PR_REPEAT, PR_OFFSET = range(5)
N_PR = 5


@njit(cache=True)
def _ambient_c(pf: np.ndarray, i: int, t_s: float) -> float:
    return pf[PF_AMB, i] + pf[PF_SWING, i] * math.cos(2.0 * math.pi * (t_s / 86_400.0 - 0.625))


@njit(cache=True)
def _drive_level(t_in_s: float) -> float:
    x = t_in_s % DRIVE_PERIOD_S
    for m in range(DRIVE_END_S.shape[0]):
        if x < DRIVE_END_S[m]:
            return DRIVE_LEVEL[m]
    return DRIVE_LEVEL[-1]


@njit(cache=True)
def _advance_pack(i: int, t0: float, dt: float, n_sub: int, step_k: np.uint64,
                  ocv_v: np.ndarray, keys: np.ndarray, pi: np.ndarray, pf: np.ndarray,
                  cf: np.ndarray, cell_node: np.ndarray, nf: np.ndarray, qf: np.ndarray,
                  probe_node: np.ndarray, seg: np.ndarray, prof: np.ndarray,
                  out_p: np.ndarray, out_c: np.ndarray, out_q: np.ndarray) -> None:
    ch = pi[PI_CHEM, i]
    nc = pi[PI_NCELL, i]
    nn = pi[PI_NNODE, i]
    rated = pf[PF_RATED, i]
    h = dt / n_sub
    # ageing at the start of the step (it moves by ppm per step)
    days = pf[PF_DAYS0, i] + t0 / 86_400.0
    cycles = pf[PF_CYC0, i] + pf[PF_THR, i] / (2.0 * rated)
    cal = (max(days, 0.0) / 365.0) ** 0.75
    fade = CAL_FADE_1Y[ch] * cal + CYC_FADE_1000[ch] * cycles / 1000.0
    grow = CAL_GROWTH_1Y[ch] * cal + CYC_GROWTH_1000[ch] * cycles / 1000.0
    for k in range(nc):
        m = cf[CF_AGEM, i, k]
        out_c[OC_CAP, i, k] = rated * cf[CF_CAPM, i, k] * max(0.05, 1.0 - m * fade)
        out_c[OC_R0, i, k] = cf[CF_R0F, i, k] * (1.0 + m * grow)
    # load: the segment at the start of the step
    p = pi[PI_PROF, i]
    lo = int(prof[PR_LO, p])
    hi = int(prof[PR_HI, p])
    per = prof[PR_PERIOD, p]
    tl = t0 + prof[PR_OFFSET, p]
    cyc_idx = 0
    if prof[PR_REPEAT, p] > 0.0 and per > 0.0 and per < INF:
        cyc_idx = math.floor(tl / per)
        tl -= cyc_idx * per
    mode = M_REST
    s_at = -1
    for s in range(lo, hi):
        if seg[SG_T0, s] <= tl < seg[SG_T1, s]:
            s_at = s
            break
    occurrence = -1
    c_rate = cv = cut = v_min = t_in = 0.0
    if s_at >= 0:
        occurrence = cyc_idx * (hi - lo) + (s_at - lo)
        if pi[PI_LATCH, i] != occurrence:
            mode = int(seg[SG_MODE, s_at])
        c_rate = seg[SG_C, s_at]
        cv = seg[SG_CV, s_at] if seg[SG_CV, s_at] > 0.0 else CV_DEFAULT_V[ch]
        cut = seg[SG_CUT, s_at]
        v_min = seg[SG_VMIN, s_at] if seg[SG_VMIN, s_at] > 0.0 else V_MIN_DEFAULT_V[ch]
        t_in = tl - seg[SG_T0, s_at]
    e1 = math.exp(-h / TAU1_S)
    i_a = 0.0
    for j in range(n_sub):
        t = t0 + j * h
        for d in range(nn):
            nf[NF_ARR, i, d] = math.exp(EA_OVER_R_K * (1.0 / (nf[NF_T, i, d] + 273.15)
                                                       - 1.0 / 298.15))
            nf[NF_Q, i, d] = 0.0
        for k in range(nc):
            cf[CF_OCV, i, k] = max(0.0, ocv_at(ocv_v, ch, cf[CF_SOC, i, k]))
            td = cf[CF_TDEAD, i, k]
            cf[CF_ALIVE, i, k] = 1.0 if t < td else math.exp(-(t - td) / VENT_COLLAPSE_S)
        # the current the load asks for, then what the cells allow (as the BMS/charger would)
        if mode == M_CC:
            i_a = c_rate * rated
        elif mode == M_CCCV:
            i_a = -abs(c_rate) * rated
        elif mode == M_DRIVE:
            i_a = c_rate * rated * _drive_level(t_in + j * h)
        else:
            i_a = 0.0
        if i_a < 0.0:
            limit = INF
            for k in range(nc):
                if cf[CF_ALIVE, i, k] < 0.5:
                    continue
                arr = nf[NF_ARR, i, cell_node[i, k]]
                r_eff = out_c[OC_R0, i, k] * arr * (1.0 + R1_OVER_R0 * (1.0 - e1))
                head = (cv - cf[CF_OCV, i, k] + cf[CF_V1, i, k] * e1) / r_eff
                limit = min(limit, head)
            if -i_a > limit:
                i_a = -max(limit, 0.0)
            if mode != M_DRIVE and -i_a < cut * rated:  # charged: taper below the cut-off
                pi[PI_LATCH, i] = occurrence
                mode = M_REST
                i_a = 0.0
        elif i_a > 0.0:
            for k in range(nc):
                arr = nf[NF_ARR, i, cell_node[i, k]]
                r_eff = out_c[OC_R0, i, k] * arr * (1.0 + R1_OVER_R0 * (1.0 - e1))
                v_next = cf[CF_ALIVE, i, k] * (cf[CF_OCV, i, k] - cf[CF_V1, i, k] * e1
                                               - i_a * r_eff)
                if v_next < v_min:  # empty: the BMS opens until the segment ends
                    pi[PI_LATCH, i] = occurrence
                    mode = M_REST
                    i_a = 0.0
                    break
        for k in range(nc):
            d = cell_node[i, k]
            arr = nf[NF_ARR, i, d]
            r0 = out_c[OC_R0, i, k] * arr
            r1 = r0 * R1_OVER_R0
            v1 = cf[CF_V1, i, k] * e1 + r1 * i_a * (1.0 - e1)
            ocv = cf[CF_OCV, i, k]
            cap = out_c[OC_CAP, i, k]
            i_short = cf[CF_GSHORT, i, k] * ocv
            i_int = i_a + cf[CF_SD, i, k] * cap * 3600.0 + cf[CF_LEAK, i, k] + i_short
            cf[CF_SOC, i, k] = max(-0.1, cf[CF_SOC, i, k] - i_int * h / (3600.0 * cap))
            cf[CF_V1, i, k] = v1
            heat = i_a * i_a * r0 + v1 * v1 / r1 + i_short * ocv
            t_vent = cf[CF_TVENT, i, k]
            if t_vent < INF:
                heat += cf[CF_PVENT, i, k] * math.exp(-(t - t_vent) / cf[CF_XBURN, i, k])
            elif cf[CF_XRATE, i, k] > 0.0 and t >= cf[CF_XSTART, i, k]:
                c_zone = nf[NF_C, i, d]
                px = c_zone * min(RUNAWAY_MAX_K_PER_S, cf[CF_XRATE, i, k] * math.exp(
                    cf[CF_XK, i, k] * (t - cf[CF_XSTART, i, k])))
                cf[CF_PX, i, k] = px
                heat += px
            nf[NF_Q, i, d] += heat
        # zones: heat in, to ambient (through the cooling), to the neighbouring zones
        ta = _ambient_c(pf, i, t)
        cool = pf[PF_COOL, i]
        for d in range(nn):
            temp = nf[NF_T, i, d]
            q = nf[NF_Q, i, d] + nf[NF_GAMB, i, d] / cool * (ta - temp)
            if d > 0:
                q += nf[NF_GLEFT, i, d] * (nf[NF_T, i, d - 1] - temp)
            if d < nn - 1:
                q += nf[NF_GLEFT, i, d + 1] * (nf[NF_T, i, d + 1] - temp)
            nf[NF_Q, i, d] = q
        for d in range(nn):
            nf[NF_T, i, d] += nf[NF_Q, i, d] * h / nf[NF_C, i, d]
        for k in range(nc):  # venting
            if cf[CF_XRATE, i, k] > 0.0 and cf[CF_TVENT, i, k] == INF and t >= cf[
                    CF_XSTART, i, k] and nf[NF_T, i, cell_node[i, k]] >= cf[CF_XVENT, i, k]:
                cf[CF_TVENT, i, k] = t + h
                cf[CF_PVENT, i, k] = cf[CF_PX, i, k]
                for m in range(k, min(nc, k + int(cf[CF_XLOST, i, k]))):
                    cf[CF_TDEAD, i, m] = min(cf[CF_TDEAD, i, m], t + h)
        pf[PF_THR, i] += abs(i_a) * h / 3600.0
    # readings at t0 + dt
    t1 = t0 + dt
    key = keys[i]
    noise = pf[PF_NOISE, i]
    vented = 0.0
    v_sum = 0.0
    for k in range(nc):
        ocv = max(0.0, ocv_at(ocv_v, ch, cf[CF_SOC, i, k]))
        td = cf[CF_TDEAD, i, k]
        alive = 1.0 if t1 < td else math.exp(-(t1 - td) / VENT_COLLAPSE_S)
        r0 = out_c[OC_R0, i, k] * nf[NF_ARR, i, cell_node[i, k]]
        v = alive * (ocv - cf[CF_V1, i, k] - i_a * r0)
        v_sum += v
        out_c[OC_TV, i, k] = v
        out_c[OC_SOC, i, k] = cf[CF_SOC, i, k]
        r = v + noise * NOISE_CELL_V * _gauss(key, step_k, np.uint64(k))
        if cf[CF_STUCK, i, k] > 0.0:
            if math.isnan(cf[CF_STUCK_V, i, k]):
                cf[CF_STUCK_V, i, k] = r
            r = cf[CF_STUCK_V, i, k]
        out_c[OC_V, i, k] = r
        if cf[CF_TVENT, i, k] < INF:
            vented = 1.0
    for k in range(nc, out_c.shape[2]):
        for row in range(N_OC):
            out_c[row, i, k] = math.nan
    out_p[OP_TV, i] = v_sum
    r = v_sum + noise * NOISE_PACK_V * _gauss(key, step_k, np.uint64(1000))
    if pf[PF_VSTUCK, i] > 0.0:
        if math.isnan(pf[PF_VSTUCK_V, i]):
            pf[PF_VSTUCK_V, i] = r
        r = pf[PF_VSTUCK_V, i]
    out_p[OP_V, i] = r
    out_p[OP_TI, i] = i_a
    r = (i_a * pf[PF_IGAIN, i] + pf[PF_IOFF, i]
         + noise * NOISE_CURRENT_A * _gauss(key, step_k, np.uint64(1001)))
    if pf[PF_ISTUCK, i] > 0.0:
        if math.isnan(pf[PF_ISTUCK_V, i]):
            pf[PF_ISTUCK_V, i] = r
        r = pf[PF_ISTUCK_V, i]
    out_p[OP_I, i] = r
    out_p[OP_VENT, i] = vented
    ta = _ambient_c(pf, i, t1)
    for jp in range(out_q.shape[2]):
        d = probe_node[i, jp]
        if d == -2:  # no such probe in this pack
            out_q[OQ_T, i, jp] = math.nan
            out_q[OQ_TT, i, jp] = math.nan
            continue
        temp = nf[NF_T, i, d] if d >= 0 else ta
        out_q[OQ_TT, i, jp] = temp
        r = temp + qf[QF_OFF, i, jp] + noise * NOISE_TEMP_C * _gauss(
            key, step_k, np.uint64(2000 + jp))
        if qf[QF_STUCK, i, jp] > 0.0:
            if math.isnan(qf[QF_STUCK_V, i, jp]):
                qf[QF_STUCK_V, i, jp] = r
            r = qf[QF_STUCK_V, i, jp]
        if qf[QF_BAD, i, jp] > 0.0:
            r = math.nan
        out_q[OQ_T, i, jp] = r


@njit(cache=True, parallel=True)
def _advance_parallel(t0: float, dt: float, n_sub: int, step_k: np.uint64, ocv_v: np.ndarray,
                      keys: np.ndarray, pi: np.ndarray, pf: np.ndarray, cf: np.ndarray,
                      cell_node: np.ndarray, nf: np.ndarray, qf: np.ndarray,
                      probe_node: np.ndarray, seg: np.ndarray, prof: np.ndarray,
                      out_p: np.ndarray, out_c: np.ndarray, out_q: np.ndarray) -> None:
    for i in prange(pf.shape[1]):  # packs are independent: any thread order, same result
        _advance_pack(i, t0, dt, n_sub, step_k, ocv_v, keys, pi, pf, cf, cell_node, nf, qf,
                      probe_node, seg, prof, out_p, out_c, out_q)


@njit(cache=True)
def _advance_serial(t0: float, dt: float, n_sub: int, step_k: np.uint64, ocv_v: np.ndarray,
                    keys: np.ndarray, pi: np.ndarray, pf: np.ndarray, cf: np.ndarray,
                    cell_node: np.ndarray, nf: np.ndarray, qf: np.ndarray,
                    probe_node: np.ndarray, seg: np.ndarray, prof: np.ndarray,
                    out_p: np.ndarray, out_c: np.ndarray, out_q: np.ndarray) -> None:
    for i in range(pf.shape[1]):
        _advance_pack(i, t0, dt, n_sub, step_k, ocv_v, keys, pi, pf, cf, cell_node, nf, qf,
                      probe_node, seg, prof, out_p, out_c, out_q)


# -- the simulator -----------------------------------------------------------------------------


@dataclass
class _Faults:
    """The faults of one kind as arrays (one entry per fault), and their per-fault state."""

    pack: np.ndarray
    cell: np.ndarray
    probe: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    p: dict[str, np.ndarray]
    was_active: np.ndarray


class PackSim:
    """Many packs, advanced together by step(). See the module docstring."""

    def __init__(self, specs: Sequence[PackSpec], seed: int, faults: Sequence[Fault] = (),
                 load: LoadProfile | Sequence[LoadProfile] | None = None, *,
                 noise: bool = True, max_substep_s: float = 1.0,
                 parallel: bool = False, stream_ids: Sequence[int] | None = None) -> None:
        self.specs = tuple(specs)
        if not self.specs:
            raise ValueError("no packs")
        # Threads (prange over packs) are opt-in: they pay off only for many packs on an idle
        # machine; next to the daemon and the VMs of a scenario a waiting thread costs more
        # than it saves (docs/hil.md has the figures).
        self.parallel = parallel
        self.seed = seed
        self.t_s = 0.0
        self.max_substep_s = max_substep_s
        self._k = 0
        n = self.n_packs = len(self.specs)
        nc_max = max(s.cells_series for s in self.specs)
        np_max = max(1, max(s.n_probes for s in self.specs))
        nn_max = max(1, max(len({c for c in s.probe_cell if c != NOT_ON_CELL})
                            for s in self.specs))
        self._pi = np.zeros((N_PI, n), np.int64)
        self._pf = np.zeros((N_PF, n))
        self._cf = np.zeros((N_CF, n, nc_max))
        self._nf = np.zeros((N_NF, n, nn_max))
        self._nf[NF_C] = 1.0  # padding zones: any finite heat capacity
        self._qf = np.zeros((N_QF, n, np_max))
        self._cell_node = np.zeros((n, nc_max), np.int64)
        self._probe_node = np.full((n, np_max), -2, np.int64)
        self._keys = np.zeros(n, np.uint64)
        self._riso0 = np.zeros((2, n))
        self._max_v = np.array([s.max_pack_v for s in self.specs], dtype=float)
        self._y_cap = np.array([s.y_cap_f for s in self.specs])
        # stream_ids: which pack of a fleet each pack is (default: its index), so that a pack
        # simulated alone can be the very pack it is in a fleet
        ids = list(range(n)) if stream_ids is None else [int(s) for s in stream_ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} stream ids for {n} packs")
        for i, spec in enumerate(self.specs):
            self._init_pack(i, spec, np.random.default_rng([seed, ids[i]]))
        self._pf[PF_NOISE] = 1.0 if noise else 0.0
        self._cf[CF_TVENT] = INF
        self._cf[CF_TDEAD] = INF
        self._cf[CF_XBURN] = 1.0
        self._faults: dict[str, _Faults] = {}
        self._fault_list: list[Fault] = []
        self.add_faults(faults)
        self.set_load(load)

    def _init_pack(self, i: int, spec: PackSpec, rng: np.random.Generator) -> None:
        chem = chemistry_id(spec.chemistry)
        nc, sp = spec.cells_series, spec.spread
        self._keys[i] = np.uint64(rng.integers(0, 2**63))
        self._pi[PI_CHEM, i], self._pi[PI_NCELL, i] = chem, nc
        self._pi[PI_NPROBE, i] = spec.n_probes
        pf = self._pf[:, i]
        pf[PF_RATED], pf[PF_AMB], pf[PF_SWING] = spec.rated_ah, spec.ambient_c, \
            spec.ambient_swing_c
        pf[PF_CYC0], pf[PF_DAYS0], pf[PF_COOL], pf[PF_IGAIN] = spec.cycles, spec.days, 1.0, 1.0
        cf = self._cf[:, i, :nc]
        r0 = spec.r0_ohm if spec.r0_ohm is not None else R0_OHM_AH[chem] / spec.rated_ah
        # draws in a fixed order, so that a pack's cells depend on (seed, pack) only
        cf[CF_CAPM] = 1.0 + SPREAD_CAPACITY * sp * rng.standard_normal(nc)
        cf[CF_R0F] = r0 * (1.0 + SPREAD_R0 * sp * rng.standard_normal(nc))
        cf[CF_SOC] = np.clip(spec.initial_soc + SPREAD_SOC * sp * rng.standard_normal(nc),
                             0.0, 1.0)
        cf[CF_SD] = SELF_DISCHARGE_PER_MONTH / (30 * 86_400.0) * np.exp(
            SPREAD_SELF_DISCHARGE * sp * rng.standard_normal(nc))
        cf[CF_AGEM] = np.exp(SPREAD_AGEING * sp * rng.standard_normal(nc))
        self._qf[QF_OFF, i, :spec.n_probes] = PROBE_OFFSET_C * rng.standard_normal(
            spec.n_probes)
        # thermal zones: one per distinct cell a probe sits on; each cell heats the nearest
        positions = sorted({c for c in spec.probe_cell if c != NOT_ON_CELL}) or [nc // 2]
        pos = np.array(positions)
        node_of_cell = np.argmin(np.abs(np.arange(nc)[:, None] - pos[None, :]), axis=1)
        self._cell_node[i, :nc] = node_of_cell
        nn = len(positions)
        self._pi[PI_NNODE, i] = nn
        c_cell = HEAT_CAP_J_K_AH[chem] * spec.rated_ah
        c_node = c_cell * np.bincount(node_of_cell, minlength=nn)
        self._nf[NF_C, i, :nn] = c_node
        self._nf[NF_GAMB, i, :nn] = c_node / spec.tau_amb_s
        self._nf[NF_GLEFT, i, 1:nn] = c_cell / TAU_COUPLE_S  # one cell-to-cell interface
        self._nf[NF_T, i, :nn] = spec.ambient_c + spec.ambient_swing_c * math.cos(
            2.0 * math.pi * -0.625)
        self._probe_node[i, :spec.n_probes] = [
            -1 if c == NOT_ON_CELL else positions.index(c) for c in spec.probe_cell]
        self._riso0[:, i] = spec.riso_pos_ohm, spec.riso_neg_ohm

    # -- configuration --------------------------------------------------------------------------

    def set_load(self, load: LoadProfile | Sequence[LoadProfile] | None,
                 packs: Sequence[int] | None = None) -> None:
        """Give packs (all by default) a load profile (None: rest). A pack whose profile
        changes starts it afresh (a discharge that had hit its cut-off may run again)."""
        if not hasattr(self, "_loads"):
            self._loads: list[LoadProfile] = [LoadProfile.rest()] * self.n_packs
        idx = list(range(self.n_packs)) if packs is None else list(packs)
        if load is None or isinstance(load, LoadProfile):
            new = [load or LoadProfile.rest()] * len(idx)
        else:
            new = list(load)
            if len(new) != len(idx):
                raise ValueError(f"{len(new)} load profiles for {len(idx)} packs")
        for i, lp in zip(idx, new, strict=True):
            self._loads[i] = lp
            self._pi[PI_LATCH, i] = -1
        profiles: dict[LoadProfile, int] = {}
        for lp in self._loads:
            profiles.setdefault(lp, len(profiles))
        segs: list[list[float]] = []
        prof = np.zeros((N_PR, len(profiles)))
        for lp, p in profiles.items():
            prof[PR_LO, p] = len(segs)
            t = 0.0
            for s in lp.segments:
                segs.append([t, t + s.duration_s, MODES.index(s.mode), s.c_rate, s.cv_v,
                             s.cutoff_c, s.v_min_v])
                t += s.duration_s
            prof[PR_HI, p], prof[PR_PERIOD, p] = len(segs), t
            prof[PR_REPEAT, p], prof[PR_OFFSET, p] = float(lp.repeat), lp.offset_s
        self._seg = np.ascontiguousarray(np.array(segs, dtype=float).T.reshape(N_SG, -1))
        self._prof = prof
        self._pi[PI_PROF] = [profiles[lp] for lp in self._loads]

    def add_faults(self, faults: Sequence[Fault]) -> None:
        """Put more faults on the timeline (e.g. from a scenario step)."""
        for f in faults:
            spec = self.specs[f.pack] if 0 <= f.pack < self.n_packs else None
            if spec is None:
                raise ValueError(f"fault {f.kind}: no pack {f.pack}")
            if not 0 <= f.cell < spec.cells_series:
                raise ValueError(f"fault {f.kind}: pack {f.pack} has no cell {f.cell}")
            uses_probe = f.kind in ("ntc_open", "ntc_short") or (
                f.kind == "adc_stuck" and f.param("channel") == STUCK_PROBE)
            if uses_probe and not 0 <= f.probe < spec.n_probes:
                raise ValueError(f"fault {f.kind}: pack {f.pack} has no probe {f.probe}")
            if f.kind == "insulation" and f.param("side") not in (0, 1):
                raise ValueError("insulation fault: side is 0 (HV+, Rp) or 1 (HV-, Rn)")
            if f.kind == "adc_stuck" and f.param("channel") not in (0, 1, 2, 3):
                raise ValueError("adc_stuck: channel 0 cell, 1 probe, 2 pack voltage, 3 current")
        self._fault_list += list(faults)
        by_kind: dict[str, list[Fault]] = {}
        for f in self._fault_list:
            by_kind.setdefault(f.kind, []).append(f)
        old = self._faults
        self._faults = {}
        for kind, fs in by_kind.items():
            n_old = len(old[kind].pack) if kind in old else 0
            was = np.zeros(len(fs), bool)
            if n_old:
                was[:n_old] = old[kind].was_active
            self._faults[kind] = _Faults(
                pack=np.array([f.pack for f in fs]), cell=np.array([f.cell for f in fs]),
                probe=np.array([f.probe for f in fs]),
                start_s=np.array([f.start_s for f in fs]), end_s=np.array([f.end_s for f in fs]),
                p={k: np.array([f.param(k) for f in fs]) for k in FAULT_PARAMS[kind]},
                was_active=was)

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(self._fault_list)

    # -- stepping -------------------------------------------------------------------------------

    def _apply_faults(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Set the fault-driven state for the interval [t0, t1); return (Rp, Rn) at t1."""
        fk = self._faults
        cf, pf, qf = self._cf, self._pf, self._qf

        def active(f: _Faults, t: float) -> np.ndarray:
            return (f.start_s <= t) & (t < f.end_s)

        def ramp(a: np.ndarray, b: np.ndarray, f: _Faults, t: float) -> np.ndarray:
            b = np.where(np.isnan(b), a, b)
            x = np.clip((t - f.start_s) / np.maximum(f.p["ramp_s"], 1e-9), 0.0, 1.0)
            return a * (b / a) ** x

        if (f := fk.get("internal_short")) is not None:
            on = active(f, t0)
            cf[CF_GSHORT, f.pack, f.cell] = 0.0
            r = ramp(f.p["r_ohm"], f.p["r_end_ohm"], f, t0)
            np.add.at(cf[CF_GSHORT], (f.pack[on], f.cell[on]), 1.0 / r[on])
        if (f := fk.get("cooling_failure")) is not None:
            on = active(f, t0)
            pf[PF_COOL, f.pack] = 1.0
            np.multiply.at(pf[PF_COOL], f.pack[on],
                           ramp(f.p["factor"], f.p["factor_end"], f, t0)[on])
        if (f := fk.get("thermal_runaway")) is not None:
            on = active(f, t0)
            cf[CF_XRATE, f.pack, f.cell] = np.where(on, f.p["rate0_k_per_s"], 0.0)
            cf[CF_XSTART, f.pack, f.cell] = f.start_s
            cf[CF_XK, f.pack, f.cell] = math.log(2.0) / f.p["doubling_s"]
            cf[CF_XVENT, f.pack, f.cell] = f.p["vent_c"]
            cf[CF_XBURN, f.pack, f.cell] = f.p["burn_s"]
            cf[CF_XLOST, f.pack, f.cell] = f.p["cells_lost"]
        if (f := fk.get("cell_imbalance")) is not None:
            on = active(f, t0)
            first = on & ~f.was_active
            f.was_active |= on  # the SOC step happens once
            np.add.at(cf[CF_SOC], (f.pack[first], f.cell[first]), f.p["dsoc"][first])
            cf[CF_LEAK, f.pack, f.cell] = 0.0
            np.add.at(cf[CF_LEAK], (f.pack[on], f.cell[on]), f.p["leak_a"][on])
        if (f := fk.get("current_offset")) is not None:
            on = active(f, t1)
            pf[PF_IOFF, f.pack], pf[PF_IGAIN, f.pack] = 0.0, 1.0
            np.add.at(pf[PF_IOFF], f.pack[on], f.p["offset_a"][on])
            np.multiply.at(pf[PF_IGAIN], f.pack[on], f.p["gain"][on])
        qf[QF_BAD] = 0.0
        for kind, code in (("ntc_open", 1.0), ("ntc_short", 2.0)):
            if (f := fk.get(kind)) is not None:
                on = active(f, t1)
                qf[QF_BAD, f.pack[on], f.probe[on]] = code
        if (f := fk.get("adc_stuck")) is not None:
            on = active(f, t1)
            start = on & ~f.was_active
            f.was_active = on
            ch = f.p["channel"].astype(int)
            for channel, flag, val, idx in (
                    (STUCK_CELL, cf[CF_STUCK], cf[CF_STUCK_V], (f.pack, f.cell)),
                    (STUCK_PROBE, qf[QF_STUCK], qf[QF_STUCK_V], (f.pack, f.probe)),
                    (STUCK_PACK, pf[PF_VSTUCK], pf[PF_VSTUCK_V], (f.pack,)),
                    (STUCK_CURRENT, pf[PF_ISTUCK], pf[PF_ISTUCK_V], (f.pack,))):
                sel = ch == channel
                if not sel.any():
                    continue
                at = tuple(a[sel] for a in idx)
                flag[at] = 0.0
                flag[tuple(a[on[sel]] for a in at)] = 1.0
                new = start[sel]
                val[tuple(a[new] for a in at)] = f.p["value"][sel][new]  # NaN: capture
        # insulation at t1: leakage conductances add to the healthy ones
        g = 1.0 / self._riso0
        if (f := fk.get("insulation")) is not None:
            on = active(f, t1)
            if on.any():
                p = {k: v[on] for k, v in f.p.items()}
                target = _insulation_ohm_per_v(p, t1 - f.start_s[on], t1) * self._max_v[
                    f.pack[on]]
                g = g.copy()
                leak = np.maximum(0.0, 1.0 / target - 1.0 / self._riso0[
                    p["side"].astype(int), f.pack[on]])
                np.add.at(g, (p["side"].astype(int), f.pack[on]), leak)
        return 1.0 / g[0], 1.0 / g[1]

    def step(self, dt_s: float) -> Readings:
        """Advance every pack by dt_s (internally in sub-steps of at most max_substep_s);
        return the readings at the new time."""
        if not dt_s > 0:
            raise ValueError("dt_s must be > 0")
        t0, t1 = self.t_s, self.t_s + dt_s
        rp, rn = self._apply_faults(t0, t1)
        n, nc, npr = self.n_packs, self._cf.shape[2], self._qf.shape[2]
        out_p = np.empty((N_OP, n))
        out_c = np.empty((N_OC, n, nc))
        out_q = np.empty((N_OQ, n, npr))
        n_sub = max(1, math.ceil(dt_s / self.max_substep_s - 1e-9))
        kernel = _advance_parallel if self.parallel else _advance_serial
        kernel(t0, dt_s, n_sub, np.uint64(self._k), OCV_V, self._keys, self._pi, self._pf,
                 self._cf, self._cell_node, self._nf, self._qf, self._probe_node, self._seg,
                 self._prof, out_p, out_c, out_q)
        self.t_s = t1
        self._k += 1
        bad = self._qf[QF_BAD]
        nc_of = self._pi[PI_NCELL]
        cells = np.arange(nc)[None, :] < nc_of[:, None]
        return Readings(
            t_s=t1, pack_v=out_p[OP_V], current_a=out_p[OP_I], cell_v=out_c[OC_V],
            temp_c=out_q[OQ_T], riso_pos_ohm=rp, riso_neg_ohm=rn,
            riso_tau_s=rp * rn / (rp + rn) * 2.0 * self._y_cap,
            true_pack_v=out_p[OP_TV], true_current_a=out_p[OP_TI], true_cell_v=out_c[OC_TV],
            true_temp_c=out_q[OQ_TT], soc=out_c[OC_SOC], capacity_ah=out_c[OC_CAP],
            r0_ohm=out_c[OC_R0], vented=out_p[OP_VENT] > 0.0, ntc_open=bad == 1.0,
            ntc_short=bad == 2.0, probe_stuck=self._qf[QF_STUCK] > 0.0,
            cell_stuck=(self._cf[CF_STUCK] > 0.0) & cells,
            pack_v_stuck=self._pf[PF_VSTUCK] > 0.0, current_stuck=self._pf[PF_ISTUCK] > 0.0,
            current_offset_a=self._pf[PF_IOFF].copy(), n_cells=nc_of.copy(),
            n_probes=self._pi[PI_NPROBE].copy())

    def run(self, duration_s: float, dt_s: float = 1.0, every: int = 1) -> list[Readings]:
        """step() until duration_s has passed; keep every `every`-th reading."""
        out = []
        for k in range(1, round(duration_s / dt_s) + 1):
            r = self.step(dt_s)
            if k % every == 0:
                out.append(r)
        return out


# -- benchmark ---------------------------------------------------------------------------------


def bench(packs: int = 1000, hours: float = 24.0, dt_s: float = 1.0, *, parallel: bool = False,
          board_units: bool = False, seed: int = 1) -> dict[str, float]:
    """A fleet of 16-cell, 4-probe packs (half NMC, half LFP, staggered depot days, one in ten
    with an insulation fault) for `hours` at dt_s; the wall time of the steps."""
    import time

    specs = [PackSpec("nmc" if i % 2 else "lfp", 16, 4.0 + i % 5, cycles=float(i % 800))
             for i in range(packs)]
    loads = [LoadProfile.depot_day(offset_s=37.0 * i) for i in range(packs)]
    faults = [Fault("insulation", 0.0, pack=i) for i in range(0, packs, 10)]
    sim = PackSim(specs, seed, faults, loads, parallel=parallel)
    sim.step(dt_s)  # compile (or load from the cache) outside the clock
    steps = round(hours * 3600 / dt_s)
    t0 = time.perf_counter()
    for _ in range(steps):
        r = sim.step(dt_s)
        if board_units:
            r.board_arrays()
    wall = time.perf_counter() - t0
    return {"packs": packs, "hours": hours, "steps": steps, "wall_s": wall,
            "ms_per_step": 1000 * wall / steps, "pack_hours_per_wall_s": packs * hours / wall}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m packsentry.hil.packsim",
                                 description="Measure the pack simulator's speed.")
    ap.add_argument("--packs", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--dt", type=float, default=1.0, help="step, s")
    ap.add_argument("--parallel", action="store_true", help="threads over packs")
    ap.add_argument("--board-units", action="store_true",
                    help="also convert every step to wire units (Readings.board_arrays)")
    a = ap.parse_args(argv)
    res = bench(a.packs, a.hours, a.dt, parallel=a.parallel, board_units=a.board_units)
    print(f"{res['packs']} packs x {res['hours']:g} h at {a.dt:g} s: {res['wall_s']:.1f} s wall,"
          f" {res['ms_per_step']:.3f} ms/step, {res['pack_hours_per_wall_s']:.0f} pack-hours "
          f"per wall second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
