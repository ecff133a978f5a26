"""Open-circuit voltage (OCV) of one cell versus state of charge, per chemistry.

Generic curves, not the curve of any pack we monitor: they are what the SoH estimator
(`packsentry.host.soh`) knows about a chemistry before it has seen a unit. A cell whose real
curve differs (another cathode blend, another maker) gets a biased SOC in the middle of the
curve; docs/soh.md says what that costs.

Source of both curves (measured pseudo-OCV, C/20 to C/32 at room temperature, published as
piecewise-linear SOC->OCV breakpoints):
  S. Sunil, K. R. Pattipati, B. Balasingam, "Piecewise Linear Approximation of Battery
  Open-Circuit Voltage Characteristics Using Dynamic Programming", IEEE Transactions on
  Instrumentation and Measurement, 2025; data and breakpoint tables in
  github.com/soorajsunil/Piecewise-Battery-OCV (README).
- NMC: Samsung INR21700-40T (NMC/graphite, 2.5-4.2 V), C/20 discharge-charge. Within about
  40 mV of the LG M50 curve of Chen et al., J. Electrochem. Soc. 167 (2020) 080534, so it is
  a fair "typical NMC".
- LFP: Lithium Werks APR18650M1B (LFP/graphite, the A123 design, 2.0-3.6 V), C/32.

The breakpoints are resampled (linear interpolation, which is how they are meant to be used)
onto a uniform 1 % SOC grid, so that a lookup is an index computation, O(1) inside the numba
kernels. SOC is a fraction 0..1 here; outside 0..1 the end segments are extended linearly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CHEMISTRIES: tuple[str, ...] = ("nmc", "lfp")  # row order of OCV_V
CHEM_NMC = 0
CHEM_LFP = 1

# (SOC fraction, OCV V) breakpoints as published (see the module docstring).
_NMC_BREAKPOINTS = np.array([
    (0.0000, 2.5000), (0.0050, 2.8080), (0.0352, 3.1179), (0.0854, 3.3182),
    (0.1357, 3.4193), (0.2915, 3.5826), (0.4523, 3.6941), (0.8392, 4.0664),
    (0.9548, 4.1121), (1.0000, 4.2000),
])
_LFP_BREAKPOINTS = np.array([
    (0.0000, 2.0102), (0.0033, 2.4177), (0.0117, 2.7405), (0.0267, 2.9299),
    (0.0534, 3.0872), (0.0885, 3.1942), (0.2972, 3.2772), (0.9833, 3.3511),
    (0.9950, 3.4180), (1.0000, 3.5981),
])

N_GRID = 101
SOC_GRID = np.linspace(0.0, 1.0, N_GRID)
# OCV_V[chem, k] = OCV at SOC k/100, volts; one row per entry of CHEMISTRIES.
OCV_V = np.ascontiguousarray(np.vstack([
    np.interp(SOC_GRID, _NMC_BREAKPOINTS[:, 0], _NMC_BREAKPOINTS[:, 1]),
    np.interp(SOC_GRID, _LFP_BREAKPOINTS[:, 0], _LFP_BREAKPOINTS[:, 1]),
]))


def chemistry_id(chemistry: str) -> int:
    """Row of OCV_V for a chemistry name ("nmc" or "lfp")."""
    try:
        return CHEMISTRIES.index(chemistry.lower())
    except ValueError:
        raise ValueError(f"unknown chemistry {chemistry!r}; known: {CHEMISTRIES}") from None


@njit(cache=True, nogil=True)
def _segment(ocv_v: np.ndarray, chem: int, soc: float) -> tuple[int, float]:
    """Index of the grid segment holding soc (end segments extend outside 0..1), and the
    position inside it."""
    n = ocv_v.shape[1]
    pos = soc * (n - 1)
    k = int(np.floor(pos))
    if k < 0:
        k = 0
    elif k > n - 2:
        k = n - 2
    return k, pos - k


@njit(cache=True, nogil=True)
def ocv_at(ocv_v: np.ndarray, chem: int, soc: float) -> float:
    """OCV in volts at SOC fraction soc."""
    k, frac = _segment(ocv_v, chem, soc)
    v0 = ocv_v[chem, k]
    return v0 + (ocv_v[chem, k + 1] - v0) * frac


@njit(cache=True, nogil=True)
def docv_dsoc(ocv_v: np.ndarray, chem: int, soc: float) -> float:
    """Slope dOCV/dSOC in volts per unit SOC (per 100 %) at soc."""
    k, _ = _segment(ocv_v, chem, soc)
    return (ocv_v[chem, k + 1] - ocv_v[chem, k]) * (ocv_v.shape[1] - 1)


@njit(cache=True, nogil=True)
def soc_at(ocv_v: np.ndarray, chem: int, ocv: float) -> float:
    """Inverse of ocv_at, clamped to 0..1: the SOC fraction whose OCV is ocv volts (the rows
    are strictly increasing)."""
    n = ocv_v.shape[1]
    if ocv <= ocv_v[chem, 0]:
        return 0.0
    if ocv >= ocv_v[chem, n - 1]:
        return 1.0
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ocv_v[chem, mid] <= ocv:
            lo = mid
        else:
            hi = mid
    v0 = ocv_v[chem, lo]
    return (lo + (ocv - v0) / (ocv_v[chem, hi] - v0)) / (n - 1)
