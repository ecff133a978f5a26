"""The benchmark harness: runs the registered benchmarks, writes the JSON and the table.

    python -m bench                  # everything: bench/results/latest.json + latest.md
    python -m bench --only decode    # a subset (still writes the files)
    python -m bench --smoke          # tiny sizes, one run: the harness end to end, no timing
                                     # claims (make test); writes to a temporary directory

Absolute times drift on a shared machine, so every speed figure is a ratio against a baseline
timed in the same run, interleaved with it: `Context.compare` runs the candidates round-robin
(the order rotating each round) after one warm-up call each, and reports each one's median.
CPU time is recorded next to wall time: cpu/wall of a single-threaded candidate stays <= 1,
which is the evidence for "one core".
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.registry import BENCHMARKS

TIMES, DASH, GE, LE = "\u00d7", "\u2013", "\u2265", "\u2264"  # x, -, >=, <= for the table
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


@dataclass(frozen=True)
class Target:
    """A pass/fail bound. of="ratio": value / baseline; "value": the figure itself;
    "over_baseline": value - baseline (a latency allowed that much above its baseline)."""

    op: str  # ">=" or "<="
    bound: float
    of: str = "ratio"
    unit: str = ""

    def met(self, fig: Figure) -> bool:
        x = {"ratio": fig.ratio, "value": fig.value,
             "over_baseline": None if fig.baseline_value is None
             else fig.value - fig.baseline_value}[self.of]
        if x is None:
            return False
        return x >= self.bound if self.op == ">=" else x <= self.bound

    def text(self) -> str:
        sign = GE if self.op == ">=" else LE
        if self.of == "ratio":
            return f"{sign} {self.bound:g}{TIMES}"
        if self.of == "over_baseline":
            return f"{sign} baseline + {fmt_value(self.bound, self.unit)}"
        return f"{sign} {fmt_value(self.bound, self.unit)}"


@dataclass
class Figure:
    """One row of the table. Without a target the figure is reported, not judged."""

    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    target: Target | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    failed: str = ""  # the run itself failed its premise (e.g. samples lost): the figure fails

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "baseline": self.baseline, "baseline_value": self.baseline_value,
                "ratio": self.ratio,
                "target": None if self.target is None else self.target.text(),
                "pass": False if self.failed else
                None if self.target is None else self.target.met(self),
                "note": f"FAILED: {self.failed}. {self.note}" if self.failed else self.note,
                "details": self.details}


@dataclass
class Timing:
    """Timed calls of one candidate; `units` = work per call (frames, cell-updates, ...)."""

    name: str
    units: float
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def rate(self) -> float:
        """Work units per second, at the median run."""
        return self.units / self.median_s

    @property
    def cores(self) -> float:
        return statistics.median(c / w for c, w in zip(self.cpu_s, self.wall_s, strict=True))

    def details(self) -> dict[str, Any]:
        return {"runs": len(self.wall_s), "units_per_run": self.units,
                "median_s": self.median_s, "min_s": min(self.wall_s), "max_s": max(self.wall_s),
                "cpu_per_wall": round(self.cores, 3)}


@dataclass
class Context:
    smoke: bool
    scratch: Path  # a temporary directory for the run, removed afterwards
    repo: Path = REPO

    def log(self, msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    def runs(self, full: int) -> int:
        return 1 if self.smoke else full

    def compare(self, candidates: dict[str, tuple[Callable[[], object], float]], *,
                runs: int = 7, warmup: int = 1) -> dict[str, Timing]:
        """Time each candidate `runs` times, interleaved round-robin after `warmup` calls
        each. candidates: name -> (call, work units per call)."""
        runs = self.runs(runs)
        timings = {name: Timing(name, units) for name, (_, units) in candidates.items()}
        names = list(candidates)
        for name in names:
            for _ in range(warmup):
                candidates[name][0]()
        for r in range(runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                call = candidates[name][0]
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                call()
                t1, c1 = time.perf_counter(), time.process_time()
                timings[name].wall_s.append(t1 - t0)
                timings[name].cpu_s.append(c1 - c0)
        return timings


# -- formatting ----------------------------------------------------------------------------------


def fmt_value(v: float | None, unit: str = "") -> str:
    if v is None:
        return DASH
    if unit.endswith("/s") or unit in ("frames", "samples"):
        for scale, prefix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
            if abs(v) >= scale:
                return f"{v / scale:.3g}{prefix}{unit}"
        return f"{v:.3g} {unit}"
    if unit == "B":
        return f"{v:,.0f} B"
    if unit in ("s", "ms", "us", "ns", ""):
        return f"{v:.3g} {unit}".strip()
    return f"{v:.4g} {unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return DASH
    return f"{r:,.0f}{TIMES}" if r >= 100 else f"{r:.3g}{TIMES}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"`make bench` of {results['started']} on {m['cpu']} ({m['cpus']} CPUs, shared; load "
        f"{m['load_before']} before, {m['load_after']} after), commit {m['commit']}, total "
        f"{results['elapsed_s']:.0f} s."
        + (" SMOKE RUN: tiny sizes, one run; not figures." if results["smoke"] else ""),
        "",
        "| benchmark | figure | value | baseline | ratio | target | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for bname, b in results["benchmarks"].items():
        if b.get("error"):
            lines.append(f"| {bname} | ERROR: {b['error'].splitlines()[-1]} | | | | | ✗ |")
            continue
        for f in b["figures"]:
            base = DASH
            if f["baseline"]:
                base = f"{f['baseline']}: {fmt_value(f['baseline_value'], f['unit'])}"
            ok = {None: "report", True: "✓", False: "✗ FAIL"}[f["pass"]]
            lines.append(f"| {bname} | {f['name']} | {fmt_value(f['value'], f['unit'])} | "
                         f"{base} | {fmt_ratio(f['ratio'])} | {f['target'] or DASH} | {ok} |")
            if f["note"]:
                notes.append(f"- {bname} / {f['name']}: {f['note']}")
    judged = [f for b in results["benchmarks"].values() for f in b.get("figures", [])
              if f["pass"] is not None]
    if results["smoke"]:
        lines += ["", "Smoke run: targets not judged."]
    else:
        lines += ["", f"{sum(f['pass'] for f in judged)} of {len(judged)} targets met."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# -- running ---------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    import numba
    import numpy

    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(), "load_before": _load(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "commit": head + ("+dirty" if dirty else "")}


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="packsentry-bench-") as tmp:
        yield Path(tmp)


def run(names: list[str], *, smoke: bool, out: Path) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results: dict[str, Any] = {"started": started, "smoke": smoke, "machine": machine_info(),
                               "benchmarks": {}}
    t_all = time.perf_counter()
    with _scratch() as scratch:
        ctx = Context(smoke=smoke, scratch=scratch)
        for name in names:
            module, func = BENCHMARKS[name].split(":")
            ctx.log(f"{name} ...")
            t0 = time.perf_counter()
            entry: dict[str, Any] = {}
            try:
                figures = getattr(importlib.import_module(module), func)(ctx)
                entry["figures"] = [f.to_json() for f in figures]
                if smoke:  # tiny sizes prove the harness, not the product: nothing judged
                    for f in entry["figures"]:
                        f["pass"] = None
            except Exception:
                entry["error"] = traceback.format_exc()
                ctx.log(f"{name} FAILED:\n{entry['error']}")
            entry["elapsed_s"] = round(time.perf_counter() - t0, 1)
            ctx.log(f"{name} done in {entry['elapsed_s']} s")
            results["benchmarks"][name] = entry
    results["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    results["machine"]["load_after"] = _load()
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, one run: checks the harness, not the speed")
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for latest.json / latest.md (default: bench/results; "
                         "with --smoke a temporary directory)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="packsentry-bench-smoke-")) if args.smoke \
            else RESULTS_DIR
    results = run(names, smoke=args.smoke, out=out)
    print(markdown(results), end="")
    print(f"\nwritten: {out / 'latest.json'}, {out / 'latest.md'}", file=sys.stderr)
    return 1 if any(b.get("error") for b in results["benchmarks"].values()) else 0
