"""Accuracy report of the SoH estimator on the NASA PCoE cells B0005 and B0006.

    python -m packsentry.host.soh_report [--data DIR] [--plot PNG] [--json] [--bench]
    python -m packsentry.host.soh_report --make-fixtures ../shared/datasets/nasa-pcoe

The discharge samples of both cells are laid on one wall-clock time line (each discharge starts
at its `start_time_iso`) and streamed through one `SohBank` in interleaved micro-batches, as the
daemon would. Charges are not in the data: between two discharges the estimator sees a gap, and
after it the first samples of the next discharge are a settled rest near 4.2 V, which it
re-anchors from (docs/soh.md). Scored:
- capacity: the estimate right after each discharge (when the estimator has seen the discharge
  end) vs that discharge's measured `capacity_ah`, from the 11th discharge on;
- R0: the estimate just before each impedance test vs the test's EIS `re_ohm` (Pearson r).

--data: the committed fixtures (default, tests/fixtures/nasa) or the raw NASA folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from packsentry.host.soh import SohBank

CELLS = ("B0005", "B0006")
RATED_AH = 2.0
SKIP_DISCHARGES = 10  # convergence allowance: scoring starts at the 11th discharge
CHUNK_ROWS = 256  # micro-batch size of the replay
TEST_TYPES = ("charge", "discharge", "impedance")
FIXTURE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nasa"


@dataclass
class CellData:
    """One cell: its discharge samples and its test log."""

    time_s: np.ndarray  # seconds since the start of that discharge
    cycle: np.ndarray  # discharge number, 1-based
    voltage_v: np.ndarray
    current_a: np.ndarray  # as NASA measured it: negative while discharging
    temp_c: np.ndarray
    test_type: np.ndarray  # index into TEST_TYPES
    test_start_s: np.ndarray  # wall clock, s since the Unix epoch (naive times taken as UTC)
    capacity_ah: np.ndarray  # discharges: measured capacity; NaN otherwise
    re_ohm: np.ndarray  # impedance tests: EIS electrolyte resistance; NaN otherwise
    rct_ohm: np.ndarray
    discharge_cycle: np.ndarray  # discharges: their cycle number; -1 otherwise


def _epoch_s(iso: str) -> float:
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1)).total_seconds()


def load_raw(folder: Path, cell: str) -> CellData:
    """A cell from the NASA CSV files (datasets/nasa-pcoe)."""
    d = np.genfromtxt(folder / f"{cell}_discharge.csv", delimiter=",", names=True)
    with open(folder / f"{cell}_tests.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def num(r: dict[str, str], k: str) -> float:
        return float(r[k]) if r[k] else np.nan

    return CellData(
        time_s=d["Time"], cycle=d["cycle_idx"].astype(np.int64),
        voltage_v=d["Voltage_measured"], current_a=d["Current_measured"],
        temp_c=d["Temperature_measured"],
        test_type=np.array([TEST_TYPES.index(r["type"]) for r in rows]),
        test_start_s=np.array([_epoch_s(r["start_time_iso"]) for r in rows]),
        capacity_ah=np.array([num(r, "capacity_ah") for r in rows]),
        re_ohm=np.array([num(r, "re_ohm") for r in rows]),
        rct_ohm=np.array([num(r, "rct_ohm") for r in rows]),
        discharge_cycle=np.array([int(r["discharge_cycle"]) if r["discharge_cycle"] else -1
                                  for r in rows]),
    )


def save_fixture(data: CellData, path: Path) -> None:
    """Compact copy: every discharge sample kept, float32 samples (sub-microvolt, sub-ms at
    these magnitudes), the unused load columns dropped."""
    np.savez_compressed(
        path,
        time_s=data.time_s.astype(np.float32), cycle=data.cycle.astype(np.int16),
        voltage_v=data.voltage_v.astype(np.float32),
        current_a=data.current_a.astype(np.float32), temp_c=data.temp_c.astype(np.float32),
        test_type=data.test_type.astype(np.int8), test_start_s=data.test_start_s,
        capacity_ah=data.capacity_ah, re_ohm=data.re_ohm, rct_ohm=data.rct_ohm,
        discharge_cycle=data.discharge_cycle.astype(np.int16),
    )


def load_fixture(path: Path) -> CellData:
    with np.load(path) as z:
        return CellData(**{k: z[k].astype(np.float64) if z[k].dtype.kind == "f"
                           else z[k].astype(np.int64) for k in z.files})


def load(folder: Path) -> dict[str, CellData]:
    """Both cells, from the raw NASA folder or from the fixtures."""
    raw = (folder / f"{CELLS[0]}_discharge.csv").exists()
    return {c: load_raw(folder, c) if raw else load_fixture(folder / f"{c}.npz") for c in CELLS}


@dataclass
class CellResult:
    capacity_est_ah: np.ndarray  # per discharge, right after it
    capacity_sigma_ah: np.ndarray
    qmax_est_ah: np.ndarray
    capacity_meas_ah: np.ndarray
    discharge_start_s: np.ndarray
    r0_est_mohm: np.ndarray  # per impedance test, just before it
    re_mohm: np.ndarray
    impedance_start_s: np.ndarray
    impedance_after_discharge: np.ndarray  # discharges done before the test
    rul_efc: np.ndarray  # per discharge
    rul_days: np.ndarray
    efc: np.ndarray
    soc_est_pct: np.ndarray  # under load, at the end of each micro-batch, from discharge 11 on
    soc_ref_pct: np.ndarray  # 100 * (1 - Ah delivered so far / that discharge's capacity_ah)


def _stream(data: dict[str, CellData]) -> tuple[np.ndarray, ...]:
    """All discharge samples of all cells as one time-ordered stream of rows (unit, t, v, i,
    temp, cycle, reference SOC in %)."""
    parts = []
    for u, c in enumerate(CELLS):
        d = data[c]
        dis = d.test_type == TEST_TYPES.index("discharge")
        start_by_cycle = dict(zip(d.discharge_cycle[dis], d.test_start_s[dis], strict=True))
        cap_by_cycle = dict(zip(d.discharge_cycle[dis], d.capacity_ah[dis], strict=True))
        t0 = np.array([start_by_cycle[k] for k in d.cycle])
        i = -d.current_a
        ah = np.zeros_like(i)
        for k in np.unique(d.cycle):
            m = np.flatnonzero(d.cycle == k)
            step = 0.5 * (i[m][1:] + i[m][:-1]) * np.diff(d.time_s[m]) / 3600.0
            ah[m] = np.concatenate([[0.0], np.cumsum(step)]) / cap_by_cycle[k]
        parts.append((np.full(d.cycle.shape, u), t0 + d.time_s, d.voltage_v, i,
                      d.temp_c, d.cycle, 100.0 * (1.0 - ah)))
    cols = [np.concatenate([p[j] for p in parts]) for j in range(7)]
    order = np.argsort(cols[1], kind="stable")
    return tuple(c[order] for c in cols)


def run(data: dict[str, CellData], chunk_rows: int = CHUNK_ROWS,
        **config: float) -> tuple[dict[str, CellResult], float, int]:
    """Replay both cells through one SohBank (config: its settings). Returns per-cell results,
    the replay's wall time (s, compile excluded when warm) and the number of rows."""
    unit, t, v, i, temp, cycle, soc_ref = _stream(data)
    bank = SohBank(**config)
    for _ in CELLS:
        bank.add("nmc", RATED_AH)
    # snapshots: (row count to have fed, cell, kind, index)
    snaps: list[tuple[int, int, str, int]] = []
    for u, c in enumerate(CELLS):
        d = data[c]
        mine = np.flatnonzero(unit == u)
        n_dis = int(d.cycle.max())
        for k in range(1, n_dis + 1):
            # right after discharge k = once the estimator has seen its end: the first row
            # of discharge k+1 (a gap then rest) or the end of the data
            later = mine[cycle[mine] == k + 1]
            snaps.append((int(later[0]) + 1 if later.size else len(t), u, "dis", k))
        imp = np.flatnonzero(d.test_type == TEST_TYPES.index("impedance"))
        for j, row in enumerate(imp):
            snaps.append((int(np.searchsorted(t, d.test_start_s[row], side="left")), u, "imp", j))
    snaps.sort()
    res = {}
    for c in CELLS:
        d = data[c]
        dis = d.test_type == TEST_TYPES.index("discharge")
        imp = d.test_type == TEST_TYPES.index("impedance")
        n_dis = int(dis.sum())
        order = np.argsort(d.discharge_cycle[dis])
        done_before = np.array([int((d.test_start_s[dis] < ts).sum())
                                for ts in d.test_start_s[imp]])
        res[c] = CellResult(
            capacity_est_ah=np.full(n_dis, np.nan), capacity_sigma_ah=np.full(n_dis, np.nan),
            qmax_est_ah=np.full(n_dis, np.nan),
            capacity_meas_ah=d.capacity_ah[dis][order],
            discharge_start_s=d.test_start_s[dis][order],
            r0_est_mohm=np.full(int(imp.sum()), np.nan), re_mohm=1000.0 * d.re_ohm[imp],
            impedance_start_s=d.test_start_s[imp], impedance_after_discharge=done_before,
            rul_efc=np.full(n_dis, np.nan), rul_days=np.full(n_dis, np.nan),
            efc=np.full(n_dis, np.nan), soc_est_pct=np.empty(0), soc_ref_pct=np.empty(0))
    soc_pairs: list[list[tuple[float, float]]] = [[] for _ in CELLS]
    fed = 0
    elapsed = 0.0
    for upto, u, kind, k in snaps:
        while fed < upto:
            end = min(upto, fed + chunk_rows)
            t_start = time.perf_counter()
            bank.update(unit[fed:end], t[fed:end], v[fed:end], i[fed:end], temp[fed:end])
            elapsed += time.perf_counter() - t_start
            soc = bank.estimates()["soc_pct"]
            for uu in range(len(CELLS)):
                rows = np.flatnonzero(unit[fed:end] == uu)
                if rows.size:
                    j = fed + rows[-1]
                    if i[j] > 1.0 and cycle[j] > SKIP_DISCHARGES:
                        soc_pairs[uu].append((soc[uu], soc_ref[j]))
            fed = end
        est = bank.estimates(np.array([u]))
        r = res[CELLS[u]]
        if kind == "dis":
            r.capacity_est_ah[k - 1] = est["capacity_ah"][0]
            r.capacity_sigma_ah[k - 1] = est["capacity_sigma_ah"][0]
            r.qmax_est_ah[k - 1] = est["qmax_ah"][0]
            r.rul_efc[k - 1] = est["rul_efc"][0]
            r.rul_days[k - 1] = est["rul_days"][0]
            r.efc[k - 1] = est["efc"][0]
        else:
            r.r0_est_mohm[k] = est["r0_mohm"][0]
    for u, c in enumerate(CELLS):
        pairs = np.array(soc_pairs[u]).reshape(-1, 2)
        res[c].soc_est_pct, res[c].soc_ref_pct = pairs[:, 0], pairs[:, 1]
    return res, elapsed, len(t)


def metrics(res: dict[str, CellResult]) -> dict[str, dict[str, float]]:
    out = {}
    for c, r in res.items():
        sel = slice(SKIP_DISCHARGES, None)
        err = r.capacity_est_ah[sel] - r.capacity_meas_ah[sel]
        qerr = r.qmax_est_ah[sel] - r.capacity_meas_ah[sel]
        after = (r.impedance_after_discharge >= SKIP_DISCHARGES) & np.isfinite(r.r0_est_mohm)
        out[c] = {
            "discharges_scored": int(err.size),
            "capacity_mae_ah": float(np.mean(np.abs(err))),
            "capacity_mae_pct_rated": float(100.0 * np.mean(np.abs(err)) / RATED_AH),
            "capacity_max_err_ah": float(np.max(np.abs(err))),
            "capacity_bias_ah": float(np.mean(err)),
            "qmax_mae_ah": float(np.mean(np.abs(qerr))),
            "impedance_tests_scored": int(after.sum()),
            "r0_re_pearson_r": float(np.corrcoef(r.r0_est_mohm[after], r.re_mohm[after])[0, 1]),
            "soc_rmse_pct": float(np.sqrt(np.mean((r.soc_est_pct - r.soc_ref_pct) ** 2))),
            "soc_max_err_pct": float(np.max(np.abs(r.soc_est_pct - r.soc_ref_pct))),
        }
    return out


def bench(n_units: int = 4096, rows_per_unit: int = 1000, seed: int = 1) -> dict[str, float]:
    """Kernel throughput on synthetic rows (random steps of current, plausible voltages)."""
    rng = np.random.default_rng(seed)
    bank = SohBank(capacity=n_units)
    for j in range(n_units):
        bank.add("nmc" if j % 2 else "lfp", 2.0 + (j % 5))
    n = n_units * rows_per_unit
    unit = np.tile(np.arange(n_units), rows_per_unit)
    t = np.repeat(np.arange(rows_per_unit, dtype=np.float64) * 1.0, n_units)
    level = rng.choice([0.0, 0.5, 1.0, 2.0, -1.0], size=(rows_per_unit // 50 + 1, n_units))
    current = np.repeat(level, 50, axis=0)[:rows_per_unit].ravel()
    v = 3.7 - 0.05 * current + rng.normal(0.0, 0.002, n)
    temp = np.full(n, 25.0)
    bank.update(unit[:n_units], t[:n_units], v[:n_units], current[:n_units], temp[:n_units])
    t0 = time.perf_counter()
    bank.update(unit[n_units:], t[n_units:], v[n_units:], current[n_units:], temp[n_units:])
    dt = time.perf_counter() - t0
    return {"units": n_units, "rows": n - n_units, "seconds": dt,
            "cell_updates_per_s": (n - n_units) / dt}


def plot(res: dict[str, CellResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), constrained_layout=True)
    for col, (c, r) in enumerate(res.items()):
        ax = axes[0, col]
        k = np.arange(1, r.capacity_meas_ah.size + 1)
        ax.plot(k, r.capacity_meas_ah, "k.", ms=4, label="measured capacity_ah")
        ax.plot(k, r.capacity_est_ah, "-", color="tab:blue", lw=1.2,
                label="estimate after the discharge")
        ax.fill_between(k, r.capacity_est_ah - 2 * r.capacity_sigma_ah,
                        r.capacity_est_ah + 2 * r.capacity_sigma_ah, color="tab:blue",
                        alpha=0.2, lw=0, label="+/- 2 sigma")
        ax.axvline(SKIP_DISCHARGES + 0.5, color="grey", ls=":", lw=1)
        ax.axhline(0.8 * RATED_AH, color="tab:red", ls="--", lw=0.8, label="80 % of rated")
        ax.set(title=f"{c}: capacity", xlabel="discharge", ylabel="Ah")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        days = (r.impedance_start_s - r.discharge_start_s[0]) / 86400.0
        ax.plot(days, r.re_mohm, ".", color="tab:orange", ms=4, label="EIS Re")
        ax.set(xlabel="days since the first discharge", ylabel="Re, mOhm")
        ax2 = ax.twinx()
        ax2.plot(days, r.r0_est_mohm, "-", color="tab:green", lw=1.2,
                 label="R0 estimate (25 degC)")
        ax2.set_ylabel("R0 estimate, mOhm")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        ax.set_title(f"{c}: R0 estimate just before each impedance test vs EIS Re")
    fig.savefig(path, dpi=110)


def make_fixtures(raw: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for c in CELLS:
        save_fixture(load_raw(raw, c), out / f"{c}.npz")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m packsentry.host.soh_report",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=FIXTURE_DIR,
                    help="fixtures folder (default) or the raw NASA folder")
    ap.add_argument("--plot", type=Path, help="write the estimate-vs-measured figure here")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--bench", action="store_true", help="also time the kernel (synthetic)")
    ap.add_argument("--make-fixtures", type=Path, metavar="RAW_DIR",
                    help="derive tests/fixtures/nasa from the raw NASA folder and exit")
    args = ap.parse_args(argv)
    if args.make_fixtures:
        make_fixtures(args.make_fixtures, FIXTURE_DIR)
        print(f"fixtures written to {FIXTURE_DIR}")
        return 0
    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    warm_up = SohBank()
    warm_up.add("nmc", RATED_AH)
    one = np.zeros(1)
    warm_up.update(np.zeros(1, dtype=np.int64), one, one, one, one)
    kernel_load_s = time.perf_counter() - t0  # numba cache load, or compile when cold
    data = load(args.data)
    res, replay_s, rows = run(data)
    total_s = time.perf_counter() - t0
    out: dict[str, object] = {"cells": metrics(res), "rows": rows, "kernel_load_s": kernel_load_s,
                              "replay_s": replay_s, "total_s": total_s}
    if args.bench:
        out["bench"] = bench()
    if args.plot:
        plot(res, args.plot)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for c, m in out["cells"].items():  # type: ignore[union-attr]
            print(f"{c}: capacity MAE {m['capacity_mae_ah']:.4f} Ah "
                  f"({m['capacity_mae_pct_rated']:.2f} % of rated), max "
                  f"{m['capacity_max_err_ah']:.4f} Ah, bias {m['capacity_bias_ah']:+.4f} Ah "
                  f"over {m['discharges_scored']} discharges; R0 vs Re Pearson r "
                  f"{m['r0_re_pearson_r']:.3f} over {m['impedance_tests_scored']} tests; "
                  f"SOC RMSE {m['soc_rmse_pct']:.1f} % (max {m['soc_max_err_pct']:.1f} %); "
                  f"Qmax MAE {m['qmax_mae_ah']:.3f} Ah")
        print(f"{rows} rows; kernel load {kernel_load_s:.2f} s, replay {replay_s:.3f} s "
              f"({CHUNK_ROWS}-row micro-batches), total {total_s:.2f} s")
        if "bench" in out:
            b = out["bench"]
            print(f"kernel: {b['rows']} rows over {b['units']} units in "  # type: ignore[index]
                  f"{b['seconds']:.3f} s = {b['cell_updates_per_s'] / 1e6:.1f} M "  # type: ignore[index]
                  "cell-updates/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
