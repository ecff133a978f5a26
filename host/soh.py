"""State-of-health estimator: batched numba kernels over structure-of-arrays state.

One *unit* is one cell, or one pack when its cells are not measured (then the caller passes the
average cell voltage, pack_v / n_series). For every unit the kernels run, sample by sample:

- SOC: a 1-RC equivalent-circuit extended Kalman filter (state: SOC, RC voltage) with coulomb
  counting, hard re-anchored from the OCV curve after a rest.
- R0: scalar recursive least squares with forgetting, updated only on current steps
  (|dI| >= 0.2 C between consecutive samples), normalised to 25 degC with an Arrhenius factor.
- Capacity: Plett's approximate weighted total least squares (AWTLS) on (dSOC, Ah) pairs between
  anchors, with a fading memory derived from how fast capacity may move (per equivalent full
  cycle and per day), so it follows fade and the recoveries after long rests.
- Usable capacity (reported as capacity_ah): AWTLS capacity x the SOC window the unit is used
  over, from full (a rest near the top of the curve) to empty (the end of a discharge that went
  down the end-of-discharge knee); remaining life to 80 % of rated from its trend.

docs/soh.md explains the methods, every parameter and the limits; `SohBank` is the API.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from packsentry.host.ocv import CHEMISTRIES, OCV_V, chemistry_id, docv_dsoc, soc_at

STATE_VERSION = 2  # 2: F_PAIR_DQ_AH .. F_T_FRESH added (read from a version-1 state)

# How the kernels are compiled (measured with bench/soh.py; docs/performance.md):
# - error_model="numpy": a float division is IEEE, not a Python ZeroDivisionError check and
#   branch per division (no divisor here can be 0; NaN and inf propagate as before);
# - fastmath, but only contraction to FMA, reciprocals and the sign of zero (-10 % time):
#   results move in the last bits (the NASA figures agree to 1e-14); NaN and inf keep their
#   meaning (no "nnan"/"ninf": the kernels test for NaN), nothing is reassociated.
_JIT = {"cache": True, "nogil": True, "error_model": "numpy",
        "fastmath": {"nsz", "arcp", "contract"}}

# ---- chemistry parameters: CHEM_PARAMS[chem, CP_*], rows in ocv.CHEMISTRIES order ----------
CP_R0_OHM_AH = 0  # prior R0 x rated Ah (ohm*Ah), only a starting point for the RLS
CP_R1_RATIO = 1  # RC resistance R1 as a fraction of R0 (1-RC literature fits: 0.3-0.7)
CP_TAU1_S = 2  # RC time constant, s (1-RC literature fits for 18650/21700: 10-40 s)
CP_EA_R_K = 3  # Arrhenius activation energy / gas constant for R0, K
CP_V_EMPTY_V = 4  # a discharge whose loaded cell voltage fell to this is "to empty"
CP_SIGMA_V_V = 5  # EKF voltage noise: sensor + model + generic-curve error, V
CP_SIGMA_V_ANCHOR_V = 6  # error of a rested voltage read as OCV, V
N_CP = 7

CHEM_PARAMS = np.zeros((len(CHEMISTRIES), N_CP))
# Ea = 20 kJ/mol: R0 about doubles from 25 degC to 0 degC, the usual figure for Li-ion ohmic
# resistance (electrolyte and contact). 20000 / 8.314 = 2405 K.
CHEM_PARAMS[CHEMISTRIES.index("nmc")] = (0.05, 0.5, 20.0, 2405.0, 3.0, 0.020, 0.005)
CHEM_PARAMS[CHEMISTRIES.index("lfp")] = (0.03, 0.5, 20.0, 2405.0, 2.8, 0.015, 0.005)

# ---- estimator configuration: CFG[CFG_*] (SohBank keyword arguments) -----------------------
CFG_MAX_GAP_S = 0  # a longer time step is a gap: unknown history
CFG_REST_C = 1  # |I| below this C-rate is rest
CFG_REST_S = 2  # rest this long (s) before a voltage is read as OCV
CFG_SETTLE_V = 3  # ... and consecutive rest voltages agree within this (V)
CFG_STEP_C = 4  # |dI| at least this C-rate between samples is an R0 step
CFG_STEP_MAX_DT_S = 5  # longer sample intervals mix too much polarisation into a step
CFG_R0_SOC_MIN = 6  # below this SOC the resistance rises steeply: no R0 update
CFG_R0_TAU_S = 7  # R0 forgetting time constant, s
CFG_R0_LAMBDA_MIN = 8  # lowest R0 forgetting factor per step (after a long pause)
CFG_PAIR_MIN = 9  # a pair must move at least this fraction of the capacity
CFG_CAP_DRIFT_EFC = 10  # capacity random walk, relative, per sqrt(equivalent full cycle)
CFG_CAP_DRIFT_DAY = 11  # capacity random walk, relative, per sqrt(day)
CFG_SIGMA_I_C = 12  # current-sensor offset error, C-rate
CFG_GAIN_ERR = 13  # current-sensor gain error, relative
CFG_SIGMA_X_MIN = 14  # floor of a pair's SOC-difference error (model error)
CFG_FULL_SOC_MIN = 15  # a rest anchor at or above this SOC is "full"
CFG_Q_Z_PER_S = 16  # EKF SOC process noise, variance per s
CFG_Q_V1_PER_S = 17  # EKF RC-voltage process noise, V^2 per s
CFG_TREND_EFC = 18  # memory of the capacity trend for remaining life, EFC
CFG_TREND_DAYS = 19  # ... and days
CFG_EOL_SOH = 20  # end of life: this fraction of rated capacity
CFG_ERR_CORR_S = 21  # correlation time of the EKF's voltage-model error, s
CFG_PAIR_GATE = 22  # a pair beyond this many sigmas from the prediction is rejected ...
CFG_PAIR_REJECT_MAX = 23  # ... unless this many before it were, on the same side
N_CFG = 24

DEFAULT_CONFIG: dict[str, float] = {
    "max_gap_s": 300.0,
    "rest_c": 0.02,
    "rest_s": 1800.0,
    "settle_v": 0.003,
    "step_c": 0.2,
    "step_max_dt_s": 30.0,
    "r0_soc_min": 0.2,
    "r0_tau_s": 86400.0,
    "r0_lambda_min": 0.5,
    "pair_min": 0.2,
    "cap_drift_efc": 0.005,
    "cap_drift_day": 0.005,
    "sigma_i_c": 0.0025,
    "gain_err": 0.005,
    "sigma_x_min": 0.01,
    "full_soc_min": 0.95,
    "q_z_per_s": 1e-10,
    "q_v1_per_s": 1e-7,
    "trend_efc": 100.0,
    "trend_days": 180.0,
    "eol_soh": 0.8,
    "err_corr_s": 60.0,
    "pair_gate": 6.0,
    "pair_reject_max": 2.0,
}
_CFG_ORDER = tuple(DEFAULT_CONFIG)
assert len(_CFG_ORDER) == N_CFG

# ---- per-unit state: S[F_*, unit] (one row per field: structure of arrays) ------------------
F_CHEM = 0
F_RATED_AH = 1
F_N_SERIES = 2
F_T_LAST = 3  # last sample time, s (NaN: none yet / history broken)
F_I_LAST = 4
F_V_LAST = 5  # NaN when that sample's voltage was missing
F_TC_LAST = 6  # last valid temperature, degC
F_Z = 7  # SOC fraction
F_V1 = 8  # RC voltage, V
F_P_ZZ = 9
F_P_ZV = 10
F_P_VV = 11
F_Q_AH = 12  # AWTLS capacity (between the curve's 0 and 100 %), Ah
F_Q_VAR = 13
F_R0 = 14  # R0 per cell at 25 degC, ohm
F_R0_P = 15  # RLS covariance, normalised by F_R0_S2
F_R0_S2 = 16  # RLS residual variance, V^2
F_R0_T = 17  # time of the last R0 update
F_R0_N = 18
F_R0_BASE = 19  # first converged R0, ohm
F_C1 = 20  # AWTLS sums C1..C6 (Plett 2011, pre-scaled)
F_C2 = 21
F_C3 = 22
F_C4 = 23
F_C5 = 24
F_C6 = 25
F_K = 26  # AWTLS pre-scaling constant
F_CAP_T = 27  # time of the last capacity update
F_CAP_AH_DIS = 28  # discharged Ah at the last capacity update
F_CAP_UPDATES = 29
F_PAIR_OK = 30  # a pair start (anchor) is valid
F_PAIR_Z = 31
F_PAIR_VAR = 32
F_PAIR_AH = 33  # net Ah (+ discharge) since the pair start
F_PAIR_T = 34
F_PAIR_FULL = 35  # the pair started at a full rest
F_REST_S = 36  # time at rest so far
F_IN_DIS = 37
F_DIS_MIN_V = 38  # lowest loaded voltage of the discharge under way
F_ZF_W = 39  # fading weighted sums of the SOC at full and at empty
F_ZF_S = 40
F_ZE_W = 41
F_ZE_S = 42
F_AH_DIS = 43  # total discharged Ah
F_TR_T0 = 44  # capacity-trend time origin, s
F_TD_S0 = 45  # trend sums vs days: weights, x, x^2, y, xy, y^2
F_TD_SX = 46
F_TD_SXX = 47
F_TD_SY = 48
F_TD_SXY = 49
F_TD_SYY = 50
F_TE_S0 = 51  # trend sums vs EFC
F_TE_SX = 52
F_TE_SXX = 53
F_TE_SY = 54
F_TE_SXY = 55
F_TE_SYY = 56
F_CAP_AH = 57  # usable capacity, Ah
F_CAP_VAR = 58
F_ANCHORS = 59
F_PAIRS = 60
F_PAIR_DQ_AH = 61  # since the pair start: sum of |dI| dt / 2, the charge the samples left open
F_PAIRS_REJECTED = 62  # pairs the innovation gate rejected
F_GATE_RUN = 63  # consecutive rejections, signed: + the pairs said more capacity
F_T_FRESH = 64  # when the last new reading came (a held reading repeats exactly)
N_F = 65

_AWTLS_GRID = 64


@njit(**_JIT)
def _arrhenius(ea_r_k: float, temp_c: float) -> float:
    """R(T) / R(25 degC)."""
    return math.exp(ea_r_k * (1.0 / (temp_c + 273.15) - 1.0 / 298.15))


@njit(**_JIT)
def _awtls_cost(c: np.ndarray, q: float) -> float:
    q2 = q * q
    num = c[3] * q2 * q2 - 2.0 * c[4] * q2 * q + (c[0] + c[5]) * q2 - 2.0 * c[1] * q + c[2]
    return num / ((q2 + 1.0) * (q2 + 1.0))


@njit(**_JIT)
def _awtls_poly(c: np.ndarray, q: float) -> float:
    # Its roots are the stationary points of the AWTLS cost.
    return ((((c[4] * q + (-c[0] + 2.0 * c[3] - c[5])) * q + (3.0 * c[1] - 3.0 * c[4])) * q
             + (c[0] - 2.0 * c[2] + c[5])) * q - c[1])


@njit(**_JIT)
def _awtls_solve(c: np.ndarray, q_guess: float) -> tuple[float, float]:
    """Minimiser of the (pre-scaled) AWTLS cost near q_guess, and the cost's second
    derivative there (0 if no minimum was found). Scans a geometric grid for sign changes of
    the stationary-point quartic and bisects; no allocation, unlike a companion-matrix
    eigen-solve."""
    lo_q = 0.2 * q_guess
    ratio = 25.0 ** (1.0 / (_AWTLS_GRID - 1))
    best_q = q_guess
    best_j = np.inf
    qa = lo_q
    pa = _awtls_poly(c, qa)
    for _ in range(_AWTLS_GRID - 1):
        qb = qa * ratio
        pb = _awtls_poly(c, qb)
        if (pa <= 0.0) != (pb <= 0.0):
            a, b, fa = qa, qb, pa
            for _ in range(60):
                m = 0.5 * (a + b)
                fm = _awtls_poly(c, m)
                if (fm <= 0.0) == (fa <= 0.0):
                    a, fa = m, fm
                else:
                    b = m
            root = 0.5 * (a + b)
            j = _awtls_cost(c, root)
            if j < best_j:
                best_j, best_q = j, root
        qa, pa = qb, pb
    if not np.isfinite(best_j):
        return q_guess, 0.0
    q = best_q
    h = (2.0 / (q * q + 1.0) ** 4) * (
        -2.0 * c[4] * q ** 5 + (3.0 * c[0] - 6.0 * c[3] + 3.0 * c[5]) * q ** 4
        + (-12.0 * c[1] + 16.0 * c[4]) * q ** 3
        + (-8.0 * c[0] + 10.0 * c[2] + 6.0 * c[3] - 8.0 * c[5]) * q ** 2
        + (12.0 * c[1] - 6.0 * c[4]) * q + (c[0] - 2.0 * c[2] + c[5]))
    return q, h


@njit(**_JIT)
def _forgetting(s: np.ndarray, cfg: np.ndarray, u: int, t: float) -> float:
    """Fading factor for the capacity memory: the capacity is a random walk whose variance
    grows per equivalent full cycle and per day since the last update; scaling the AWTLS
    information by var / (var + growth) is the matching covariance inflation."""
    q = s[F_Q_AH, u]
    var_rel = s[F_Q_VAR, u] / (q * q)
    d_efc = (s[F_AH_DIS, u] - s[F_CAP_AH_DIS, u]) / s[F_RATED_AH, u]
    d_day = max(t - s[F_CAP_T, u], 0.0) / 86400.0
    growth = cfg[CFG_CAP_DRIFT_EFC] ** 2 * d_efc + cfg[CFG_CAP_DRIFT_DAY] ** 2 * d_day
    if not np.isfinite(growth):
        return 1.0
    return var_rel / (var_rel + growth)


@njit(**_JIT)
def _trend_add(s: np.ndarray, u: int, base: int, gamma: float, x: float, y: float) -> None:
    s[base, u] = gamma * s[base, u] + 1.0
    s[base + 1, u] = gamma * s[base + 1, u] + x
    s[base + 2, u] = gamma * s[base + 2, u] + x * x
    s[base + 3, u] = gamma * s[base + 3, u] + y
    s[base + 4, u] = gamma * s[base + 4, u] + x * y
    s[base + 5, u] = gamma * s[base + 5, u] + y * y


@njit(**_JIT)
def _capacity_changed(s: np.ndarray, cfg: np.ndarray, u: int, t: float) -> None:
    """Recompute the usable capacity after a pair or a full/empty event; feed the trend."""
    zf = s[F_ZF_S, u] / s[F_ZF_W, u]
    ze = s[F_ZE_S, u] / s[F_ZE_W, u]
    window = min(max(zf - ze, 0.05), 1.05)
    cap = s[F_Q_AH, u] * window
    s[F_CAP_AH, u] = cap
    s[F_CAP_VAR, u] = s[F_Q_VAR, u] * window * window
    s[F_CAP_UPDATES, u] += 1.0
    # remaining-life trend: capacity vs days and vs EFC, with a long fading memory
    if np.isnan(s[F_TR_T0, u]):
        s[F_TR_T0, u] = t
        g = 1.0
    else:
        d_efc = (s[F_AH_DIS, u] - s[F_CAP_AH_DIS, u]) / s[F_RATED_AH, u]
        d_day = max(t - s[F_CAP_T, u], 0.0) / 86400.0
        g = math.exp(-(d_efc / cfg[CFG_TREND_EFC] + d_day / cfg[CFG_TREND_DAYS]))
    _trend_add(s, u, F_TD_S0, g, (t - s[F_TR_T0, u]) / 86400.0, cap)
    _trend_add(s, u, F_TE_S0, g, s[F_AH_DIS, u] / s[F_RATED_AH, u], cap)
    s[F_CAP_T, u] = t
    s[F_CAP_AH_DIS, u] = s[F_AH_DIS, u]


@njit(**_JIT)
def _pair_var_y(s: np.ndarray, cfg: np.ndarray, u: int, t: float, y: float) -> float:
    """Variance (Ah^2) of a pair's charge from the current sensor: offset over the pair's
    duration, and gain."""
    dur_h = max(t - s[F_PAIR_T, u], 0.0) / 3600.0
    var_y = (cfg[CFG_SIGMA_I_C] * s[F_RATED_AH, u] * dur_h) ** 2 + (cfg[CFG_GAIN_ERR] * y) ** 2
    return max(var_y, 1e-12)


@njit(**_JIT)
def _add_pair(s: np.ndarray, cfg: np.ndarray, u: int, t: float, x: float, y: float,
              var_x: float, gamma: float, cbuf: np.ndarray, scale: float = 1.0) -> None:
    """One AWTLS update with the pair (x = dSOC, y = Ah); `scale` multiplies both of its
    variances (AWTLS assumes one ratio of the two errors: a less certain pair is scaled as a
    whole, see _pair_to)."""
    var_y = _pair_var_y(s, cfg, u, t, y) * scale
    var_x = var_x * scale
    k = s[F_K, u]
    for j in range(6):
        s[F_C1 + j, u] *= gamma
    s[F_C1, u] += x * x / (k * k * var_y)
    s[F_C2, u] += k * x * y / (k * k * var_y)
    s[F_C3, u] += y * y / var_y
    s[F_C4, u] += x * x / var_x
    s[F_C5, u] += k * x * y / var_x
    s[F_C6, u] += k * k * y * y / var_x
    for j in range(6):
        cbuf[j] = s[F_C1 + j, u]
    q, h = _awtls_solve(cbuf, k * s[F_Q_AH, u])
    if h > 0.0:
        s[F_Q_AH, u] = q / k
        s[F_Q_VAR, u] = 2.0 / h / (k * k)
    s[F_PAIRS, u] += 1.0


@njit(**_JIT)
def _pair_to(s: np.ndarray, cfg: np.ndarray, u: int, t: float, z_end: float,
             var_end: float, cbuf: np.ndarray) -> float:
    """Close the pair from the current pair start to (z_end, now) if it is informative: both
    the charge moved and the SOC moved, the same way. Returns the forgetting factor used, or
    -1 if no pair was added."""
    if s[F_PAIR_OK, u] < 0.5:
        return -1.0
    x = s[F_PAIR_Z, u] - z_end
    y = s[F_PAIR_AH, u]
    q = s[F_Q_AH, u]
    if abs(y) < cfg[CFG_PAIR_MIN] * q or x * y <= 0.0:
        return -1.0
    var_x = s[F_PAIR_VAR, u] + var_end + cfg[CFG_SIGMA_X_MIN] ** 2
    gamma = _forgetting(s, cfg, u, t)
    # the pair's error in Ah, as total least squares sees it: the charge's own, plus the
    # SOC difference's through the capacity
    v_pair = _pair_var_y(s, cfg, u, t, y) + q * q * var_x
    # Plus the charge the samples left open (F_PAIR_DQ_AH): its bound is taken as one sigma
    # (one change at a uniform instant would give bound / sqrt(3), but an interval may hold
    # several changes, or a pulse no sample saw). Summed linearly over the pair, not
    # root-sum-square: a load that repeats at a multiple of the sample period is caught at
    # the same phase every time (aliasing: 10 s samples of a 60 s drive cycle count +22 %),
    # so these errors need not average out.
    v_open = s[F_PAIR_DQ_AH, u] ** 2
    scale = (v_pair + v_open) / v_pair
    # Innovation gate: a pair further than pair_gate sigmas from what the estimate predicts
    # (its memory faded by gamma) is not used, unless pair_reject_max pairs before it were
    # rejected on the same side: then the estimate, not the pairs, is what is wrong.
    # (r > 0: the pair says more capacity, for a charge pair, x < 0, as for a discharge)
    r = (y - q * x) * math.copysign(1.0, x) / math.sqrt(v_pair * scale
                                                        + x * x * s[F_Q_VAR, u] / gamma)
    if abs(r) > cfg[CFG_PAIR_GATE]:
        run = s[F_GATE_RUN, u]
        run = run + 1.0 if run * r > 0.0 else 1.0  # consecutive rejections on this side
        if run <= cfg[CFG_PAIR_REJECT_MAX]:
            s[F_GATE_RUN, u] = math.copysign(run, r)
            s[F_PAIRS_REJECTED, u] += 1.0
            return -1.0
    s[F_GATE_RUN, u] = 0.0
    _add_pair(s, cfg, u, t, x, y, var_x, gamma, cbuf, scale)
    if s[F_PAIR_FULL, u] > 0.5:
        s[F_ZF_W, u] = gamma * s[F_ZF_W, u] + 1.0
        s[F_ZF_S, u] = gamma * s[F_ZF_S, u] + s[F_PAIR_Z, u]
    return gamma


@njit(inline="always", **_JIT)
def _empty_anchor_possible(s: np.ndarray, p: np.ndarray, u: int, chem: int) -> bool:
    """Whether the discharge under way went down the knee with R0 learned: only then can its
    end be the empty anchor (the SOC under load at the end rests on R0)."""
    return s[F_DIS_MIN_V, u] <= p[chem, CP_V_EMPTY_V] and not s[F_R0_N, u] < 3.0


@njit(**_JIT)
def _end_discharge(s: np.ndarray, p: np.ndarray, cfg: np.ndarray, u: int, t: float,
                   z_end: float, var_end: float, cbuf: np.ndarray) -> None:
    """A discharge ended (current released, or history broken by a gap). If it went down the
    end-of-discharge knee, its end is the empty anchor: close the pair there and learn the SOC
    the unit is empty at."""
    s[F_IN_DIS, u] = 0.0
    if not _empty_anchor_possible(s, p, u, int(s[F_CHEM, u])):
        return
    gamma = _pair_to(s, cfg, u, t, z_end, var_end, cbuf)
    if gamma < 0.0:
        gamma = _forgetting(s, cfg, u, t)
    s[F_ZE_W, u] = gamma * s[F_ZE_W, u] + 1.0
    s[F_ZE_S, u] = gamma * s[F_ZE_S, u] + z_end
    _capacity_changed(s, cfg, u, t)
    # the next pair starts at this empty point
    s[F_PAIR_OK, u] = 1.0
    s[F_PAIR_Z, u] = z_end
    s[F_PAIR_VAR, u] = var_end
    s[F_PAIR_AH, u] = 0.0
    s[F_PAIR_DQ_AH, u] = 0.0
    s[F_PAIR_T, u] = t
    s[F_PAIR_FULL, u] = 0.0


@njit(**_JIT)
def _anchor(s: np.ndarray, p: np.ndarray, ocv_v: np.ndarray, cfg: np.ndarray, u: int,
            t: float, v: float, cbuf: np.ndarray) -> None:
    """A rested voltage is the OCV: reset the SOC from the curve, close a rest-to-rest pair."""
    chem = int(s[F_CHEM, u])
    z = soc_at(ocv_v, chem, v)
    slope = max(docv_dsoc(ocv_v, chem, z), 0.01)
    var_z = min((p[chem, CP_SIGMA_V_ANCHOR_V] / slope) ** 2, 0.25)
    gamma = _pair_to(s, cfg, u, t, z, var_z, cbuf)
    if gamma >= 0.0:
        _capacity_changed(s, cfg, u, t)
    s[F_Z, u] = z
    s[F_V1, u] = 0.0
    s[F_P_ZZ, u] = var_z
    s[F_P_ZV, u] = 0.0
    s[F_P_VV, u] = 1e-6
    s[F_PAIR_OK, u] = 1.0
    s[F_PAIR_Z, u] = z
    s[F_PAIR_VAR, u] = var_z
    s[F_PAIR_AH, u] = 0.0
    s[F_PAIR_DQ_AH, u] = 0.0
    s[F_PAIR_T, u] = t
    s[F_PAIR_FULL, u] = 1.0 if z >= cfg[CFG_FULL_SOC_MIN] else 0.0
    s[F_ANCHORS, u] += 1.0


@njit(**_JIT)
def _r0_lambda(cfg: np.ndarray, since_s: float) -> float:
    """The RLS forgetting factor after since_s seconds without an R0 update (NaN: none yet)."""
    if np.isnan(since_s):
        return 1.0
    return max(cfg[CFG_R0_LAMBDA_MIN], math.exp(-since_s / cfg[CFG_R0_TAU_S]))


@njit(**_JIT)
def _r0_step(s: np.ndarray, p: np.ndarray, cfg: np.ndarray, u: int, t: float, y: float,
             phi: float, lam: float) -> None:
    """Scalar RLS with forgetting on y = R0_25 * phi (y in V, phi in A); lam is
    _r0_lambda(cfg, t - s[F_R0_T, u])."""
    pn = s[F_R0_P, u] / lam
    e = y - phi * s[F_R0, u]
    denom = 1.0 + phi * phi * pn
    s2 = s[F_R0_S2, u]
    n = s[F_R0_N, u]
    # a glitch (a sample mid-transient, a contactor bounce) is not a resistance; each one
    # doubles the assumed noise, so that a lasting change is learned after a few steps
    if n >= 3.0 and e * e / denom > 25.0 * s2:
        s[F_R0_S2, u] = 2.0 * s2
        return
    g = pn * phi / denom
    s[F_R0, u] = max(s[F_R0, u] + g * e, 1e-6)
    s[F_R0_P, u] = pn / denom
    w = max(1.0 / (n + 2.0), 0.1)
    s[F_R0_S2, u] = s2 + w * (e * e / denom - s2)
    s[F_R0_T, u] = t
    s[F_R0_N, u] = n + 1.0
    if np.isnan(s[F_R0_BASE, u]) and n + 1.0 >= 3.0:
        sig = math.sqrt(s[F_R0_P, u] * s[F_R0_S2, u])
        if sig <= 0.05 * s[F_R0, u]:
            s[F_R0_BASE, u] = s[F_R0, u]


@njit(**_JIT)
def _break_history(s: np.ndarray, p: np.ndarray, cfg: np.ndarray, u: int,
                   cbuf: np.ndarray) -> None:
    """Unknown history from here (gap, missing current): close an open discharge at its last
    seen state, drop the pair start, make the SOC uncertain."""
    if s[F_IN_DIS, u] > 0.5:
        _end_discharge(s, p, cfg, u, s[F_T_LAST, u], s[F_Z, u], s[F_P_ZZ, u], cbuf)
    s[F_IN_DIS, u] = 0.0
    s[F_PAIR_OK, u] = 0.0
    s[F_P_ZZ, u] = max(s[F_P_ZZ, u], 0.09)
    s[F_P_ZV, u] = 0.0
    s[F_V1, u] = 0.0
    s[F_P_VV, u] = 0.0025
    s[F_REST_S, u] = 0.0


@njit(**_JIT)
def _ocv_and_slope(ocv_v: np.ndarray, chem: int, soc: float) -> tuple[float, float]:
    """(ocv.ocv_at, ocv.docv_dsoc) at soc, the same formulas from one segment lookup: the hot
    path of the EKF correct. int() truncates where ocv._segment floors: they differ only
    below 0, where the clamp to segment 0 makes them agree again."""
    n = ocv_v.shape[1]
    pos = soc * (n - 1)
    k = int(pos)
    if k < 0:
        k = 0
    elif k > n - 2:
        k = n - 2
    v0 = ocv_v[chem, k]
    dv = ocv_v[chem, k + 1] - v0
    return v0 + dv * (pos - k), dv * (n - 1)


@njit(**_JIT)
def _units_in_range(unit: np.ndarray, n_units: int) -> bool:
    """0 <= unit < n_units for all: one pass, half the time of numpy's min() and max() on a
    micro-batch of 10 000 rows. (In update_kernel itself the same loop made every row 5-6 ns
    slower on 2 M-row calls.)"""
    ok = True
    for r in range(unit.shape[0]):
        ok &= (unit[r] >= 0) & (unit[r] < n_units)
    return ok


@njit(**_JIT)
def update_kernel(s: np.ndarray, p: np.ndarray, ocv_v: np.ndarray, cfg: np.ndarray,
                  unit: np.ndarray, t_s: np.ndarray, cell_v: np.ndarray,
                  current_a: np.ndarray, temp_c: np.ndarray) -> None:
    """Feed rows (any units interleaved, each unit's rows in time order) into the state."""
    cbuf = np.empty(6)  # AWTLS scratch, once per call: no allocation per row or pair
    # The two exponentials of a row depend on inputs that rarely change from one row to the
    # next (the sample interval; the temperature, shared by the cells of a probe): each is
    # recomputed only when its input changes (same values; a third of a row's time saved).
    memo_dt = np.nan
    memo_tau = np.nan
    memo_a_h = 1.0
    memo_ea = np.nan
    memo_tc = np.nan
    memo_arr = 1.0
    memo_since = np.nan  # (NaN != NaN: a NaN interval is always recomputed, to 1.0)
    memo_lam = 1.0
    for r in range(unit.shape[0]):
        u = unit[r]
        t = t_s[r]
        v = cell_v[r]
        i = current_a[r]
        tc = temp_c[r]
        chem = int(s[F_CHEM, u])
        rated = s[F_RATED_AH, u]
        v_ok = not np.isnan(v)
        tc_ok = not np.isnan(tc)
        if np.isnan(i) or np.isnan(t):
            # without the current nothing can be integrated: the history breaks here
            if not np.isnan(s[F_T_LAST, u]):
                _break_history(s, p, cfg, u, cbuf)
            s[F_T_LAST, u] = np.nan
            continue
        t_last = s[F_T_LAST, u]
        dt = t - t_last
        if dt <= 0.0:
            continue  # duplicate or out of order
        if tc_ok:
            s[F_TC_LAST, u] = tc
        ea_r_k = p[chem, CP_EA_R_K]
        tc_last = s[F_TC_LAST, u]
        if tc_last != memo_tc or ea_r_k != memo_ea:
            memo_tc, memo_ea = tc_last, ea_r_k
            memo_arr = _arrhenius(ea_r_k, tc_last)
        r0_factor = memo_arr
        r0_t = s[F_R0, u] * r0_factor
        rest_a = cfg[CFG_REST_C] * rated
        resting = abs(i) <= rest_a
        i_last = s[F_I_LAST, u]
        v_last = s[F_V_LAST, u]
        # the filter's state lives in registers from here to its one write-back below
        z_prev = z = s[F_Z, u]
        v1_prev = v1 = s[F_V1, u]
        pzz = s[F_P_ZZ, u]
        pzv = s[F_P_ZV, u]
        pvv = s[F_P_VV, u]
        gap = np.isnan(t_last) or dt > cfg[CFG_MAX_GAP_S]
        a_h = 1.0
        if gap:
            if not np.isnan(t_last):
                _break_history(s, p, cfg, u, cbuf)
                v1 = s[F_V1, u]
                pzz = s[F_P_ZZ, u]
                pzv = s[F_P_ZV, u]
                pvv = s[F_P_VV, u]
            # a long enough gap ending at rest may have been a rest: credit it, still
            # requiring a settled voltage before anchoring
            s[F_REST_S, u] = dt if (resting and not np.isnan(t_last)) else 0.0
            s[F_T_FRESH, u] = t
        else:
            # ---- EKF predict: coulomb count (trapezoid) and the RC, the current being
            # assumed to change mid-interval (the switching instant is unknown) ----
            q_ah = s[F_Q_AH, u]
            dah = 0.5 * (i + i_last) * dt / 3600.0
            z = z_prev - dah / q_ah
            s[F_PAIR_AH, u] += dah
            if dah > 0.0:
                s[F_AH_DIS, u] += dah
            # The samples do not say when (or how often) the current changed between them:
            # the trapezoid may be off by up to |dI| dt / 2 (changes within the rest band
            # are sensor noise, which integrates out). A reading under load that repeats the
            # previous one exactly (voltage and current, noise and all) is a held value
            # re-sent (a board reporting faster than its sensors refresh), not a new
            # measurement: dt then runs from when the held value was first seen (at most
            # max_gap_s). At rest a steady reading is just steady.
            d_i = i - i_last
            t_fresh = s[F_T_FRESH, u]
            if abs(d_i) > rest_a:  # (a step of the pack's current: the same for its cells)
                s[F_PAIR_DQ_AH, u] += abs(d_i) * min(t - t_fresh,
                                                     cfg[CFG_MAX_GAP_S]) * (0.5 / 3600.0)
            # Branch-free: whether a cell's voltage moved by a millivolt is a coin toss, and
            # a branch on it mispredicted often enough to cost 7-8 % of a cell-update.
            # (t_fresh is loaded above, not in the select: a select on a load compiles back
            # into a branch.)
            s[F_T_FRESH, u] = t if (v != v_last) | (d_i != 0.0) | resting else t_fresh
            tau = p[chem, CP_TAU1_S]
            if dt != memo_dt or tau != memo_tau:
                memo_dt, memo_tau = dt, tau
                memo_a_h = math.exp(-0.5 * dt / tau)
            a_h = memo_a_h
            r1 = p[chem, CP_R1_RATIO] * r0_t
            v1 = a_h * a_h * v1_prev + r1 * (1.0 - a_h) * (a_h * i_last + i)
            sig_i = cfg[CFG_SIGMA_I_C] * rated * dt / 3600.0 / q_ah
            a2 = a_h * a_h
            pzz += sig_i * sig_i + cfg[CFG_Q_Z_PER_S] * dt
            pzv *= a2
            pvv = a2 * a2 * pvv + cfg[CFG_Q_V1_PER_S] * dt
            s[F_REST_S, u] = s[F_REST_S, u] + dt if resting else 0.0

            # ---- R0: RLS on an informative current step (d_i above) ----
            informative = False
            ocv_prev = ocv_now = 0.0
            if (v_ok and tc_ok and not np.isnan(v_last)
                    and abs(d_i) >= cfg[CFG_STEP_C] * rated
                    and dt <= cfg[CFG_STEP_MAX_DT_S]
                    and min(z_prev, z) >= cfg[CFG_R0_SOC_MIN]):
                ocv_prev, slope_prev = _ocv_and_slope(ocv_v, chem, z_prev)
                ocv_now, slope_now = _ocv_and_slope(ocv_v, chem, z)
                # where the curve is steep, the unknown switching instant inside the interval
                # moves the OCV by more than a tenth of the voltage step: not informative
                ocv_doubt = (0.5 * max(slope_prev, slope_now) * max(abs(i), abs(i_last)) * dt
                             / 3600.0 / q_ah)
                informative = ocv_doubt <= 0.1 * abs(v - v_last)
            if informative:
                d_ocv = ocv_now - ocv_prev
                # dV = dOCV - R0 dI - dV1, with V1 = R1 (RC) and R1 = ratio * R0
                y = d_ocv - (v - v_last) + (1.0 - a2) * v1_prev
                phi = (d_i + p[chem, CP_R1_RATIO] * (1.0 - a_h) * (a_h * i_last + i))
                # (tc is this row's temperature, so r0_factor is its Arrhenius factor)
                # (the cells of a pack step together: their forgetting factors are one)
                since_s = t - s[F_R0_T, u]
                if since_s != memo_since:
                    memo_since = since_s
                    memo_lam = _r0_lambda(cfg, since_s)
                _r0_step(s, p, cfg, u, t, y, phi * r0_factor, memo_lam)
                r0_t = s[F_R0, u] * r0_factor

        # ---- discharge bookkeeping; its end (on the predicted SOC, before this sample's
        # relaxed voltage moves it) may be the empty anchor ----
        discharging = i > rest_a
        if s[F_IN_DIS, u] > 0.5:
            if discharging:
                if v_ok:  # (branch-free min: the lowest voltage falls unpredictably)
                    s[F_DIS_MIN_V, u] = min(s[F_DIS_MIN_V, u], v)
            elif _empty_anchor_possible(s, p, u, chem):
                _end_discharge(s, p, cfg, u, t, z, pzz, cbuf)  # (leaves the filter alone)
            else:
                # _end_discharge's own early way out, taken here: nearly every discharge ends
                # above the knee, and the call alone cost 60 ns (8 ns a row, a fifth of a
                # cell-update, on a fleet whose current steps every second)
                s[F_IN_DIS, u] = 0.0
        elif discharging:
            s[F_IN_DIS, u] = 1.0
            s[F_DIS_MIN_V, u] = v if v_ok else np.inf

        # ---- EKF correct: V = OCV(z) - R0(T) I - V1 ----
        if v_ok and tc_ok:
            ocv_z, slope = _ocv_and_slope(ocv_v, chem, z)
            v_hat = ocv_z - r0_t * i - v1
            # model and curve errors are correlated over about a minute: fast sampling must
            # not count as independent information; an uncertain R0 adds its I*dR0
            r_v = p[chem, CP_SIGMA_V_V] ** 2 * max(1.0, cfg[CFG_ERR_CORR_S] / (1e9 if gap else dt))
            r_v += i * i * s[F_R0_P, u] * s[F_R0_S2, u] * r0_factor * r0_factor
            s_inn = slope * slope * pzz - 2.0 * slope * pzv + pvv + r_v
            kz = (slope * pzz - pzv) / s_inn
            kv = (slope * pzv - pvv) / s_inn
            innov = v - v_hat
            z = min(max(z + kz * innov, -0.05), 1.05)
            v1 += kv * innov
            pzz, pzv, pvv = (max(pzz - kz * kz * s_inn, 1e-10), pzv - kz * kv * s_inn,
                             max(pvv - kv * kv * s_inn, 1e-12))
        s[F_Z, u] = z
        s[F_V1, u] = v1
        s[F_P_ZZ, u] = pzz
        s[F_P_ZV, u] = pzv
        s[F_P_VV, u] = pvv

        # ---- rest: a settled voltage after a long enough rest is the OCV ----
        if (resting and v_ok and not gap and not np.isnan(v_last)
                and s[F_REST_S, u] >= cfg[CFG_REST_S]
                and abs(v - v_last) <= cfg[CFG_SETTLE_V]):
            _anchor(s, p, ocv_v, cfg, u, t, v, cbuf)

        s[F_T_LAST, u] = t
        s[F_I_LAST, u] = i
        s[F_V_LAST, u] = v


def _config_array(config: dict[str, float]) -> np.ndarray:
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise TypeError(f"unknown SohBank settings: {sorted(unknown)}")
    merged = {**DEFAULT_CONFIG, **config}
    return np.array([float(merged[k]) for k in _CFG_ORDER])


def _columns(n: int) -> int:
    """Room for at least n units, as a row length of 8 (mod 512) float64s: a row is then one
    cache line (mod 4 KiB) past the one before, so a unit's fields sit in different cache sets.
    A power-of-two length put all of them in one set: a unit's ~25 fields thrashed the L1 and
    L2 caches and a cell-update took 4-6x as long (a 9 600-cell bank grown by add(): 100 ns
    instead of 26 ns; bench/soh.py then built its banks at an exact size, so only the daemon
    saw it)."""
    return max(int(n), 1) + (8 - max(int(n), 1)) % 512


class SohBank:
    """Structure-of-arrays estimator state for many units (a unit = one cell, or one pack
    when cells are not measured)."""

    def __init__(self, capacity: int = 256, **config: float) -> None:
        self._cfg = _config_array(config)
        self._p = CHEM_PARAMS.copy()
        self._ocv = OCV_V.copy()
        self._s = np.full((N_F, _columns(capacity)), np.nan)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def config(self) -> dict[str, float]:
        return {k: float(self._cfg[j]) for j, k in enumerate(_CFG_ORDER)}

    def add(self, chemistry: str, rated_ah: float, n_series: int = 1) -> int:
        """A new unit; returns its index. chemistry: "nmc" | "lfp"; rated_ah: rated capacity
        of the unit (of one string for a pack); n_series: cells in series (pack mode)."""
        chem = chemistry_id(chemistry)
        if not rated_ah > 0 or int(n_series) < 1:
            raise ValueError("rated_ah must be > 0 and n_series >= 1")
        if self._n == self._s.shape[1]:
            grown = np.full((N_F, _columns(2 * self._n)), np.nan)
            grown[:, : self._n] = self._s[:, : self._n]
            self._s = grown
        u = self._n
        col = np.full(N_F, np.nan)
        col[F_CHEM] = chem
        col[F_RATED_AH] = rated_ah
        col[F_N_SERIES] = int(n_series)
        col[F_TC_LAST] = 25.0
        col[F_I_LAST] = 0.0
        col[F_Z] = 0.5
        col[F_V1] = 0.0
        col[F_P_ZZ] = 0.25
        col[F_P_ZV] = 0.0
        col[F_P_VV] = 0.0025
        col[F_Q_AH] = rated_ah
        # AWTLS prior: the rated capacity, weak (10 %), as one pseudo pair (Plett's init).
        # Pre-scaling K makes the scaled SOC and Ah errors comparable (K = sx/sy with
        # sx = 1 % SOC, sy = 1 % of rated).
        k = 1.0 / rated_ah
        var_y0 = (0.1 * rated_ah) ** 2
        col[F_K] = k
        col[F_C1] = col[F_C4] = 1.0 / (k * k * var_y0)
        col[F_C2] = col[F_C5] = k * rated_ah / (k * k * var_y0)
        col[F_C3] = col[F_C6] = k * k * rated_ah ** 2 / (k * k * var_y0)
        col[F_Q_VAR] = var_y0
        r0 = self._p[chem, CP_R0_OHM_AH] / rated_ah  # per cell: the string's Ah is the cell's
        col[F_R0] = r0
        s2_0 = 0.003 ** 2
        col[F_R0_S2] = s2_0
        col[F_R0_P] = r0 * r0 / s2_0  # prior sigma = 100 % of the prior value
        col[F_R0_N] = 0.0
        for f in (F_CAP_UPDATES, F_PAIR_OK, F_PAIR_AH, F_PAIR_FULL, F_REST_S, F_IN_DIS,
                  F_AH_DIS, F_ANCHORS, F_PAIRS, F_CAP_AH_DIS, F_PAIR_DQ_AH, F_PAIRS_REJECTED,
                  F_GATE_RUN):
            col[f] = 0.0
        for base in (F_TD_S0, F_TE_S0):
            col[base : base + 6] = 0.0
        # full / empty SOC priors: the ends of the curve, weight of one event
        col[F_ZF_W], col[F_ZF_S] = 1.0, 1.0
        col[F_ZE_W], col[F_ZE_S] = 1.0, 0.0
        col[F_CAP_AH] = rated_ah
        col[F_CAP_VAR] = var_y0
        self._s[:, u] = col
        self._n += 1
        return u

    def update(self, unit: np.ndarray, t_s: np.ndarray, cell_v: np.ndarray,
               current_a: np.ndarray, temp_c: np.ndarray) -> None:
        """One micro-batch: rows for many units interleaved, each unit's rows in time order.
        cell_v: per-cell volts (pack_v / n_series in pack mode); current_a: + = discharge;
        NaN voltage or temperature = missing (coulomb count only); NaN current breaks the
        history like a gap."""
        unit = np.ascontiguousarray(unit, dtype=np.int64)
        n = unit.shape[0]
        cols = [np.ascontiguousarray(a, dtype=np.float64) for a in (t_s, cell_v, current_a,
                                                                     temp_c)]
        if any(c.shape != (n,) for c in cols) or unit.ndim != 1:
            raise ValueError("unit, t_s, cell_v, current_a, temp_c must be 1-D, same length")
        if not _units_in_range(unit, self._n):
            raise IndexError("unit index out of range")
        update_kernel(self._s, self._p, self._ocv, self._cfg, unit, *cols)

    def capacity_updates(self, units: np.ndarray) -> np.ndarray:
        """How often each unit's capacity estimate has moved (cheap: one field, no RUL)."""
        return self._s[F_CAP_UPDATES, np.asarray(units, dtype=np.int64)].astype(np.int64)

    def estimates(self, units: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Current estimates for `units` (all when None), one array per key."""
        idx = np.arange(self._n) if units is None else np.asarray(units, dtype=np.int64)
        s = self._s[:, idx]
        rated = s[F_RATED_AH]
        n_ser = s[F_N_SERIES]
        cap = s[F_CAP_AH]
        cap_sig = np.sqrt(s[F_CAP_VAR])
        r0_sig = np.sqrt(s[F_R0_P] * s[F_R0_S2])
        efc = s[F_AH_DIS] / rated
        rul_days, rul_days_sig = _rul(s, F_TD_S0, cap, cap_sig, rated * self._cfg[CFG_EOL_SOH])
        rul_efc, rul_efc_sig = _rul(s, F_TE_S0, cap, cap_sig, rated * self._cfg[CFG_EOL_SOH])
        with np.errstate(invalid="ignore", divide="ignore"):
            growth = 100.0 * (s[F_R0] / s[F_R0_BASE] - 1.0)
        no_r0 = s[F_R0_N] < 1
        r0 = np.where(no_r0, np.nan, s[F_R0] * 1000.0 * n_ser)
        return {
            "soc_pct": 100.0 * np.clip(s[F_Z], 0.0, 1.0),
            "soc_sigma_pct": 100.0 * np.sqrt(s[F_P_ZZ]),
            "capacity_ah": cap,
            "capacity_sigma_ah": cap_sig,
            "soh_pct": 100.0 * cap / rated,
            "soh_sigma_pct": 100.0 * cap_sig / rated,
            "qmax_ah": s[F_Q_AH].copy(),
            "qmax_sigma_ah": np.sqrt(s[F_Q_VAR]),
            "r0_mohm": r0,
            "r0_sigma_mohm": np.where(no_r0, np.nan, r0_sig * 1000.0 * n_ser),
            "r0_growth_pct": growth,
            "rul_days": rul_days,
            "rul_sigma_days": rul_days_sig,
            "rul_efc": rul_efc,
            "rul_sigma_efc": rul_efc_sig,
            "capacity_updates": s[F_CAP_UPDATES].astype(np.int64),
            "efc": efc,
            "r0_updates": s[F_R0_N].astype(np.int64),
            "anchors": s[F_ANCHORS].astype(np.int64),
            "pairs": s[F_PAIRS].astype(np.int64),
            "pairs_rejected": s[F_PAIRS_REJECTED].astype(np.int64),
        }

    def state(self, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Everything needed to continue (arrays only: np.savez-able). lo, hi: only units
        lo..hi-1 in "s" (a save in parts: side by side, the parts' "s" is from_state's)."""
        hi = self._n if hi is None else min(hi, self._n)
        return {
            "version": np.array(STATE_VERSION),
            "s": self._s[:, lo:hi].copy(),
            "cfg": self._cfg.copy(),
            "cfg_names": np.array(_CFG_ORDER),
            "chem_params": self._p.copy(),
            "ocv_v": self._ocv.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SohBank:
        """A bank that continues exactly where `state()` was taken."""
        version = int(state["version"])
        if version not in (1, STATE_VERSION):
            raise ValueError(f"state version {version}, expected {STATE_VERSION}")
        s = np.asarray(state["s"], dtype=np.float64)
        if version == 1 and s.shape[0] == F_PAIR_DQ_AH:
            # a pair open at the save continues without the bound of its charge so far
            s = np.vstack([s, np.zeros((N_F - F_PAIR_DQ_AH, s.shape[1]))])
            s[F_T_FRESH] = s[F_T_LAST]
        if s.shape[0] != N_F:
            raise ValueError("state has the wrong number of fields")
        bank = cls(capacity=max(s.shape[1], 1))
        # settings by name: a state saved before a setting existed gets its default
        names = [str(n) for n in np.asarray(state["cfg_names"])]
        bank._cfg = _config_array({n: float(x) for n, x in zip(names, state["cfg"], strict=True)
                                   if n in DEFAULT_CONFIG})
        if np.shape(state["chem_params"]) != CHEM_PARAMS.shape:
            raise ValueError("state has chemistry parameters of another layout")
        bank._p = np.array(state["chem_params"], dtype=np.float64)
        bank._ocv = np.ascontiguousarray(state["ocv_v"], dtype=np.float64)
        bank._s[:, : s.shape[1]] = s
        bank._n = s.shape[1]
        return bank


def _rul(s: np.ndarray, base: int, cap: np.ndarray, cap_sig: np.ndarray,
         eol_ah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remaining life to eol_ah from the fading linear trend of capacity vs x (days or EFC):
    (x to go, its sigma); NaN while the fade is not yet significant (slope within 2 sigma of
    0, or fewer than 5 capacity updates); 0 once below."""
    s0, sx, sxx, sy, sxy, syy = (s[base + j] for j in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        det = s0 * sxx - sx * sx
        b = (s0 * sxy - sx * sy) / det
        a = (sy - b * sx) / s0
        resid = np.maximum(syy - a * sy - b * sxy, 0.0)
        s2 = resid / np.maximum(s0 - 2.0, 1e-9)
        sig_b = np.sqrt(s2 * s0 / det)
        margin = cap - eol_ah
        rul = margin / -b
        rel = np.sqrt((sig_b / b) ** 2 + (cap_sig / margin) ** 2)
        sig = rul * rel
    known = (s[F_CAP_UPDATES] >= 5) & (b < 0) & (b + 2.0 * sig_b < 0) & np.isfinite(rul)
    rul = np.where(known, rul, np.nan)
    sig = np.where(known, sig, np.nan)
    below = margin <= 0
    rul = np.where(below, 0.0, rul)
    sig = np.where(below, 0.0, sig)
    return rul, sig
