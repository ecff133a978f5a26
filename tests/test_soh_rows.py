"""The estimator's rows from sample columns (host/soh_rows.py, compiled) against the same rows
built with numpy, as the processor built them before: the same bits, markers included."""

from __future__ import annotations

import numpy as np
import pytest

from packsentry.host.soh_rows import MARKS, fill_rows


def reference(ts, cur, volt, mark, series, temps, units, probe):  # type: ignore[no-untyped-def]
    ok = cur < MARKS["current_ma"]
    n = volt.shape[1]
    t = temps.astype(np.float64)[ok]
    t[t >= MARKS["temps_dc"]] = np.nan
    hottest = np.where(np.isnan(t), -np.inf, t).max(axis=1, initial=-np.inf)
    t_hot = np.where(np.isinf(hottest), np.nan, hottest / 10)
    v = np.where(volt >= mark, np.nan, volt.astype(np.float64) / 1000.0 / series[:, None])[ok]
    on = np.take_along_axis(t, np.clip(probe[ok], 0, max(t.shape[1] - 1, 0)), axis=1) / 10 \
        if t.shape[1] else np.full(v.shape, np.nan)
    tc = np.where(probe[ok] >= 0, on, t_hot[:, None])
    kk = int(ok.sum())
    return (units[ok].ravel(), np.repeat(ts[ok] / 1000.0, n), v.ravel(),
            np.repeat(cur[ok] / 1000.0, n), tc.reshape(kk, n).ravel())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pack", [False, True])
def test_rows_are_the_numpy_rows(seed: int, pack: bool) -> None:
    rng = np.random.default_rng(seed)
    runs, n_probes = int(rng.integers(1, 5)), int(rng.choice([0, 1, 4]))
    n = 1 if pack else int(rng.choice([1, 16, 96]))
    k_of = rng.integers(1, 12, runs)
    k = int(k_of.sum())
    run_of = np.repeat(np.arange(runs), k_of)
    ts = 1_790_000_000_000 + np.cumsum(rng.integers(1, 2000, k))
    cur = rng.integers(-60_000, 60_000, k).astype(np.int32)
    cur[rng.random(k) < 0.1] = MARKS["current_ma"] + int(rng.integers(0, 2))
    temps = rng.integers(-200, 900, (k, n_probes)).astype(np.int16)
    temps[rng.random((k, n_probes)) < 0.1] = MARKS["temps_dc"] + int(rng.integers(0, 2))
    if pack:
        volt = rng.integers(40_000, 400_000, (k, 1)).astype(np.uint32)
        mark = MARKS["pack_mv"]
        series = np.repeat(rng.integers(4, 200, runs).astype(np.float64), k_of)
    else:
        volt = rng.integers(2500, 4300, (k, n)).astype(np.uint16)
        mark = MARKS["cells_mv"]
        series = np.ones(k)
    volt[rng.random(volt.shape) < 0.05] = mark
    units = rng.permutation(runs * n).reshape(runs, n).astype(np.int64)
    probe = rng.integers(-1, n_probes, (runs, n)) if n_probes and not pack \
        else np.full((runs, n), -1)
    out = [np.full(k * n + 3, -7, np.int64)] + [np.full(k * n + 3, -7.0) for _ in range(4)]
    end = fill_rows(ts, cur, volt, mark, series, temps, run_of, units, probe, *out, 3,
                    MARKS["current_ma"], MARKS["temps_dc"])
    want = reference(ts, cur, volt, mark, series, temps, units[run_of], probe[run_of])
    assert end == 3 + len(want[0])
    assert (out[0][:3] == -7).all()  # it writes from `at` on
    for got, exp in zip(out, want, strict=True):
        np.testing.assert_array_equal(got[3:end], exp)  # NaN where NaN, else the same bits
