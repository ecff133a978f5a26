"""AlarmEngine.on_run (a board's samples as columns, the daemon's path) against on_sample one
at a time (the reference): the same events and the same state, on seeded random fleets'
days with quiet stretches, excursions, markers, board flags, gaps, repeated and late stamps,
slow insulation decay (forecasts, with short trend intervals) and ticks between runs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from packsentry.host.alarm_settings import AlarmSettings
from packsentry.host.alarms import NOT_ON_CELL, AlarmEngine, BoardProfile

T0 = 1_764_000_000_000
SETTINGS = AlarmSettings(trend_bucket_s=20, trend_window_s=400, trend_min_points=4,
                         temp_trend_bucket_s=30, temp_trend_window_s=600,
                         temp_trend_min_points=3)


def fleet_day(seed: int) -> tuple[BoardProfile, list[tuple[np.ndarray, dict[str, np.ndarray]]]]:
    rng = np.random.default_rng(seed)
    n_cells = int(rng.choice([0, 1, 4, 12]))
    n_probes = int(rng.choice([0, 1, 2, 4]))
    probe_cell = tuple(int(c) for c in rng.choice([0, 1, NOT_ON_CELL], n_probes))
    prof = BoardProfile(board_id=7, site="depot", chemistry=str(rng.choice(["nmc", "lfp"])),
                        cells_series=max(n_cells, 4), rated_mah=50_000, max_pack_mv=60_000,
                        max_temp_dc=600, sample_period_ms=1000, n_probes=n_probes,
                        n_cells=n_cells, probe_cell=probe_cell,
                        riso_period_ms=int(rng.choice([0, 10_000])))
    n = 900
    odd = float(rng.choice([0.0, 0.1, 1.0]))  # how eventful the day is
    steps = rng.choice([1000, 0, 40_000, -2000], n,
                       p=[1 - 0.04 * odd, 0.01 * odd, 0.01 * odd, 0.02 * odd])
    ts = T0 + np.cumsum(steps).astype(np.int64)
    excursion = rng.random(n) < 0.01 * odd  # a few samples far off
    temps = (250 + rng.integers(-3, 4, (n, n_probes))
             + (np.arange(n) // 100)[:, None] * int(rng.choice([0, 1, 5])))  # a slow drift
    temps[excursion] += int(rng.choice([100, 400]))
    if n_probes and rng.random() < 0.3:  # a heating stretch: rise rate and thermal event
        a = int(rng.integers(0, n - 200))
        temps[a:a + 200, 0] += np.arange(200) * int(rng.choice([1, 3, 12]))
    temps = np.clip(temps, -400, 2000)
    cells = (3700 if prof.chemistry == "nmc" else 3300) + rng.integers(-5, 6, (n, n_cells))
    cells[excursion] += int(rng.choice([-800, 600]))
    if n_cells >= 2:  # one cell drifting from the rest: the spread rule alone
        cells[rng.random(n) < 0.01 * odd, 0] += 150
    decay = np.linspace(5000, int(rng.choice([4000, 4000, 50])), n).astype(np.int64)
    riso = np.stack([decay + rng.integers(0, 300, n), decay + 400], axis=1)
    if prof.riso_period_ms == 0:
        riso[:] = 0xFFFF  # no insulation monitor fitted: always INVALID
    current = rng.choice([0, 500, 5000, -5000], n)
    pack = np.full(n, 14_800, np.int64)
    flags = np.where(rng.random(n) < 0.005 * odd, 1 << 2, 0)
    for arr, mark in ((temps, 0x7FFE), (cells, 0xFFFF)):
        if arr.shape[1]:
            hit = rng.random(arr.shape) < 0.002 * odd
            arr[hit] = mark
    riso[rng.random((n, 2)) < 0.002 * odd] = 0xFFFE
    cols = {"pack_mv": pack, "current_ma": current, "riso_pos_kohm": riso[:, 0],
            "riso_neg_kohm": riso[:, 1], "alarm_level": np.zeros(n, np.int64),
            "alarm_flags": flags,  # the arrays in the decoder's dtypes, as the daemon passes them
            "temps_dc": temps.reshape(n, n_probes).astype("<i2"),
            "cells_mv": cells.reshape(n, n_cells).astype("<u2")}
    runs = []
    i = 0
    while i < n:
        k = int(rng.choice([1, 2, 5, 30, 120]))
        runs.append((ts[i:i + k], {name: c[i:i + k] for name, c in cols.items()}))
        i += k
    return prof, runs


def state(engine: AlarmEngine) -> str:
    return json.dumps(engine.state(), sort_keys=True)


def events(evs: list[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(e) for e in evs]


@pytest.mark.parametrize("seed", range(60))
def test_a_run_is_exactly_its_samples_one_by_one(seed: int) -> None:
    prof, runs = fleet_day(seed)
    ref, fast = AlarmEngine(SETTINGS), AlarmEngine(SETTINGS)
    ref.set_profile(prof)
    fast.set_profile(prof)
    for ts, cols in runs:
        want: list[Any] = []
        for j in range(len(ts)):
            want += ref.on_sample(prof.board_id, int(ts[j]),
                                  {k: v[j].tolist() for k, v in cols.items()})
        got = fast.on_run(prof.board_id, ts, cols)
        assert events(got) == events(want)
        tick_ms = int(ts.max()) + 500
        assert events(fast.tick(tick_ms)) == events(ref.tick(tick_ms))
        assert state(fast) == state(ref)


def test_the_quiet_path_is_taken_and_raises_nothing() -> None:
    """A healthy stretch goes through in one go (not sample by sample), and a crossing in a
    later run still raises, at its sample's time."""
    prof, _ = fleet_day(0)
    prof = dataclasses.replace(prof, n_cells=4, n_probes=2, probe_cell=(0, 2),
                               riso_period_ms=10_000)
    engine = AlarmEngine(SETTINGS)
    engine.set_profile(prof)
    calls = []
    engine.on_sample = lambda *a: calls.append(a) or []  # type: ignore[method-assign]
    k = 300
    ts = T0 + 1000 * np.arange(k, dtype=np.int64)
    cols = {"pack_mv": np.full(k, 14_800), "current_ma": np.full(k, 2000),
            "riso_pos_kohm": np.full(k, 5000), "riso_neg_kohm": np.full(k, 5000),
            "alarm_level": np.zeros(k), "alarm_flags": np.zeros(k, np.int64),
            "temps_dc": np.full((k, 2), 250), "cells_mv": np.full((k, 4), 3700)}
    assert engine.on_run(prof.board_id, ts, cols) == []
    assert calls == []
    del engine.on_sample  # the real one again
    hot = {**cols, "temps_dc": np.full((k, 2), 250)}
    hot["temps_dc"][150:, 0] = 650
    ev = engine.on_run(prof.board_id, ts + k * 1000, hot)
    raised = [e for e in ev if e.rule == "temp_high" and e.event == "raised"]
    assert raised and raised[0].ts_ms == int(ts[150]) + k * 1000


def fleet(seed: int, n_boards: int = 6) -> list[tuple[BoardProfile, np.ndarray,
                                                      dict[str, np.ndarray]]]:
    """n_boards boards' days (fleet_day's), as whole columns."""
    out = []
    for j in range(n_boards):
        prof, runs = fleet_day(seed * 100 + j)
        prof = dataclasses.replace(prof, board_id=100 + j)
        ts = np.concatenate([r[0] for r in runs])
        cols = {k: np.concatenate([r[1][k] for r in runs]) for k in runs[0][1]}
        if j == 0 and prof.n_probes:  # heating at once: a dT/dt before any rise reference
            # 1.6 K/s for 4 s, short of every other temperature rule, and the pack voltage
            # down 32 %: a thermal event (L4) only the dT/dt hold can see
            cols["temps_dc"][:5, 0] += np.arange(5) * 16
            cols["pack_mv"][2:5] = 10_000
        if j == 1 and prof.n_probes:  # a reading flickering by 1 K/s (0.1 K at 10 Hz does)
            cols["temps_dc"][1::2, -1] += 10
        out.append((prof, ts, cols))
    return out


def in_rounds(runs: list[tuple[int, np.ndarray, dict[str, np.ndarray]]]
              ) -> list[tuple[int, int, dict[str, Any]]]:
    """The order on_runs promises: runs long enough for on_run's own screen first, then the
    short ones round by round (every board's first sample, then its second, ...)."""
    def samples(run: Any, j: int) -> tuple[int, int, dict[str, Any]]:
        board_id, ts, cols = run
        return board_id, int(ts[j]), {c: v[j].tolist() for c, v in cols.items()}
    long = [r for r in runs if len(r[1]) >= 6]
    short = [r for r in runs if len(r[1]) < 6]
    if len(short) < 4:
        long, short = runs, []
    out = [samples(r, j) for r in long for j in range(len(r[1]))]
    for j in range(max((len(r[1]) for r in short), default=0)):
        out += [samples(r, j) for r in short if len(r[1]) > j]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_fleets_short_runs_are_exactly_their_samples(seed: int) -> None:
    """on_runs, the daemon's path: one to a few samples per board per call, as a fleet at
    10 Hz gives the processor (now and then a longer run), against on_sample in the order
    on_runs promises."""
    boards = fleet(seed)
    ref, fast = AlarmEngine(SETTINGS), AlarmEngine(SETTINGS)
    for prof, _, _ in boards:
        ref.set_profile(prof)
        fast.set_profile(prof)
    rng = np.random.default_rng(seed)
    n = len(boards[0][1])
    at = [0] * len(boards)
    while min(at) < n:
        runs = []
        for j, (prof, ts, cols) in enumerate(boards):
            k = int(rng.choice([1, 2, 3, 7], p=[0.6, 0.2, 0.1, 0.1]))
            lo, hi = at[j], min(at[j] + k, n)
            at[j] = hi
            if lo < hi:
                runs.append((prof.board_id, ts[lo:hi], {c: v[lo:hi] for c, v in cols.items()}))
        want: list[Any] = []
        for board_id, ts_ms, m in in_rounds(runs):
            want += ref.on_sample(board_id, ts_ms, m)
        assert events(fast.on_runs(runs)) == events(want)
        tick_ms = max(int(ts.max()) for _, ts, _ in runs) + 500
        assert events(fast.tick(tick_ms)) == events(ref.tick(tick_ms))
        assert state(fast) == state(ref)


def test_a_quiet_fleet_is_screened_together() -> None:
    """A healthy fleet's one-sample runs never reach on_sample; a crossing on one board
    still raises at its sample's time."""
    boards = fleet(0, n_boards=8)
    engine = AlarmEngine(SETTINGS)
    calls = []
    for prof, _, _ in boards:
        engine.set_profile(dataclasses.replace(prof, chemistry="nmc", n_cells=4, n_probes=2,
                                               probe_cell=(0, 2), riso_period_ms=10_000))
    real = engine.on_sample
    engine.on_sample = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]

    def cols(temp_dc: int) -> dict[str, np.ndarray]:
        return {"pack_mv": np.full(1, 14_800), "current_ma": np.full(1, 2000),
                "riso_pos_kohm": np.full(1, 5000), "riso_neg_kohm": np.full(1, 5000),
                "alarm_level": np.zeros(1), "alarm_flags": np.zeros(1, np.int64),
                "temps_dc": np.array([[250, temp_dc]]), "cells_mv": np.full((1, 4), 3700)}
    for i in range(120):
        ts = np.array([T0 + 1000 * i], np.int64)
        hot = 650 if i >= 100 else 250
        ev = engine.on_runs([(prof.board_id, ts, cols(hot if j == 3 else 250))
                             for j, (prof, _, _) in enumerate(boards)])
        if i == 100:
            raised = [e for e in ev if e.rule == "temp_high" and e.event == "raised"]
            assert [(e.board_id, e.ts_ms) for e in raised] == [(boards[3][0].board_id,
                                                                 int(ts[0]))]
    assert calls and {c[0] for c in calls} == {boards[3][0].board_id}
