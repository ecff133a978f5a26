"""The estimator's rows from sample columns: board units in, one row per unit (a cell, or the
pack) and sample out, in volts, amperes, seconds and °C, markers as NaN.

Compiled, because it is a hot path: a micro-batch of 2 000 batch frames of 10 samples of 96
cells is two million rows, and building them with numpy (ten passes over the arrays) cost more
than the estimator's own kernel. The arithmetic is the numpy version's, operation for
operation, so the rows are the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from packsentry.protocol.layout import sample_markers

# the lowest marker value (abnormal) of each field: at or above it, no reading
MARKS = {name: abnormal for name, (abnormal, _) in sample_markers().items()}


@njit(cache=True, nogil=True)
def fill_rows(ts_ms: np.ndarray, current_ma: np.ndarray, volt: np.ndarray, volt_mark: int,
              series: np.ndarray, temps_dc: np.ndarray, run_of: np.ndarray,
              units: np.ndarray, probe: np.ndarray, out_unit: np.ndarray, out_t_s: np.ndarray,
              out_v: np.ndarray, out_a: np.ndarray, out_c: np.ndarray, at: int,
              current_mark: int, temp_mark: int) -> int:
    """Rows for k samples from `at` on; returns where the next would go.

    volt (k, n): cell mV (n cells), or pack mV (n = 1) with `series` the cells in series per
    sample (1 for cells); temps_dc (k, n_probes); run_of (k): the sample's run, whose units
    (R, n) and probe per unit (R, n; < 0: the hottest probe stands in) apply. A sample without
    a current is skipped: without it nothing can be coulomb-counted. The markers come in as
    arguments (MARKS), so a cached compilation never holds stale ones."""
    k, n = volt.shape
    n_probes = temps_dc.shape[1]
    for j in range(k):
        cur = current_ma[j]
        if cur >= current_mark:
            continue
        hot = -np.inf
        for q in range(n_probes):
            tq = temps_dc[j, q]
            if tq < temp_mark and tq > hot:
                hot = float(tq)
        t_hot = np.nan if hot == -np.inf else hot / 10
        t_s = ts_ms[j] / 1000.0
        amps = cur / 1000.0
        r = run_of[j]
        for x in range(n):
            raw = volt[j, x]
            out_unit[at] = units[r, x]
            out_t_s[at] = t_s
            out_v[at] = np.nan if raw >= volt_mark else raw / 1000.0 / series[j]
            out_a[at] = amps
            pq = probe[r, x]
            if pq < 0 or pq >= n_probes:
                out_c[at] = t_hot
            else:
                tq = temps_dc[j, pq]
                out_c[at] = np.nan if tq >= temp_mark else tq / 10
            at += 1
    return at
