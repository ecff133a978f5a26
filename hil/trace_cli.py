"""`packsentry trace info` and `packsentry trace from-csv`: look into a trace, make one from a
lab log.

info: what a trace file holds (frames by type, boards, receive-time span and rate, frames that
fail the daemon's checks, damaged records, the format's overhead).

from-csv: a lab log (one row per measurement) -> the frames a board would have sent for it: a
birth, then one sample per row, one fixed boot, seqs from 0, flag time_synced, receive time =
board time. The CSV contract is in docs/hil.md ("Lab CSV -> frames"); every bad cell is
reported as `FILE, line L, column C (name): problem`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from packsentry.host import limits
from packsentry.host.trace_file import MAGIC, TraceError, TraceRecord, TraceWriter
from packsentry.host.trace_file import read as read_trace
from packsentry.protocol import codec, layout, schema
from packsentry.protocol.cli import UsageError
from packsentry.protocol.errors import ProtocolError
from packsentry.protocol.verify import Verifier

# `time_s` counts from this instant (a fixed, documented epoch: the same CSV always gives the
# same frames); ISO-8601 `timestamp`s are absolute (naive ones are UTC).
CSV_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
CSV_EPOCH_MS = int(CSV_EPOCH.timestamp()) * 1000
CSV_BOOT = 1
NO_CELL = 0xFFFF  # probe_cell: a probe whose cell is unknown (the hottest probe stands in)
RISO_COLUMNS = ("riso_pos_kohm", "riso_neg_kohm")
_INDEXED = re.compile(r"^(temp_c|cell_v)_(\d+)$")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("trace", help="look into a trace file, or make one from a lab CSV",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = t.add_subparsers(dest="trace_command", required=True, metavar="SUBCOMMAND")

    i = tsub.add_parser("info", help="frames by type, boards, time span, rejects, rate")
    i.add_argument("file", type=Path, metavar="FILE")
    i.add_argument("--json", action="store_true", help="one JSON object instead of text")
    i.set_defaults(func=cmd_info)

    c = tsub.add_parser("from-csv", help="a lab log -> the frames a board would have sent",
                        description="CSV columns: time_s (s) or timestamp (ISO-8601); pack_v; "
                        "current_a (+ = discharge); temp_c or temp_c_1..temp_c_M; optional "
                        "cell_v_1..cell_v_N, riso_pos_kohm, riso_neg_kohm. An empty field is a "
                        "missing value. See docs/hil.md.")
    c.add_argument("csv", type=Path, metavar="IN.csv")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="the trace to write (replaced if it exists)")
    c.add_argument("--board-id", type=_board_id, required=True, metavar="ID")
    c.add_argument("--cells", type=int, required=True, metavar="N",
                   help="cells in series (with 1, the one cell is the pack)")
    c.add_argument("--rated-ah", type=float, required=True, metavar="X")
    c.add_argument("--chemistry", choices=limits.CHEMISTRIES, required=True)
    c.add_argument("--probes", type=int, metavar="M",
                   help="temperature probes (default: the temp_c columns found)")
    c.add_argument("--max-pack-v", type=float, metavar="V",
                   help="maximum pack voltage (default: cells x the chemistry's charge limit)")
    c.add_argument("--site", default="lab", help="site name in the trace (default: lab)")
    c.set_defaults(func=cmd_from_csv)


def _board_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 0xFFFF_FFFF:
        raise argparse.ArgumentTypeError(f"{value} does not fit the wire's 32-bit board id")
    return value


# -- info ------------------------------------------------------------------------------------


@dataclass
class BoardInfo:
    board_id: int
    sites: set[str] = field(default_factory=set)
    frames: int = 0
    boots: dict[int, tuple[int, int]] = field(default_factory=dict)  # boot -> (first, last seq)
    seqs: dict[int, set[int]] = field(default_factory=dict)  # boot -> seqs seen

    def missing(self) -> int:
        """Seqs inside each boot's first..last range that no frame carried."""
        return sum(hi - lo + 1 - len(self.seqs[boot]) for boot, (lo, hi) in self.boots.items())


@dataclass
class TraceInfo:
    path: Path
    size_bytes: int
    records: int = 0
    frame_bytes: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # frames the daemon would refuse
    duplicates: int = 0
    damaged: int = 0  # records the trace format itself could not read
    torn_tail: bool = False  # the writer died mid-record (that record is lost)
    rx_first_ms: int | None = None
    rx_last_ms: int | None = None
    boards: dict[int, BoardInfo] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(self.by_type.values())

    @property
    def span_s(self) -> float:
        if self.rx_first_ms is None or self.rx_last_ms is None:
            return 0.0
        return (self.rx_last_ms - self.rx_first_ms) / 1000.0

    @property
    def overhead_bytes_per_record(self) -> float:
        return (self.size_bytes - len(MAGIC) - self.frame_bytes) / self.records \
            if self.records else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path), "size_bytes": self.size_bytes, "records": self.records,
            "frames": dict(sorted(self.by_type.items())),
            "rejected": dict(sorted(self.rejected.items())), "duplicates": self.duplicates,
            "damaged_records": self.damaged, "torn_tail": self.torn_tail,
            "rx_first_ms": self.rx_first_ms, "rx_last_ms": self.rx_last_ms,
            "span_s": self.span_s,
            "rate_frames_per_s": round(self.records / self.span_s, 3) if self.span_s else None,
            "overhead_bytes_per_frame": round(self.overhead_bytes_per_record, 2),
            "boards": {str(b.board_id): {"sites": sorted(b.sites), "frames": b.frames,
                                         "boots": {str(k): list(v) for k, v in b.boots.items()},
                                         "missing_seqs": b.missing()}
                       for b in sorted(self.boards.values(), key=lambda b: b.board_id)},
        }


def trace_info(path: Path) -> TraceInfo:
    """Reads the whole trace; frames are checked as the daemon would without keys (CRC,
    version, lengths, schema fingerprint of births), not their tags."""
    try:
        size = path.stat().st_size
        records = read_trace(path)
        first = next(records, None)  # the header check happens on the first step
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    info = TraceInfo(path, size)
    verifier = Verifier(None, replay_window=None)
    seen: set[tuple[int, int, int]] = set()
    for rec in _chain(first, records):
        if isinstance(rec, TraceError):
            info.damaged += 1
            continue
        info.records += 1
        info.frame_bytes += len(rec.frame)
        info.rx_first_ms = rec.rx_ms if info.rx_first_ms is None else min(info.rx_first_ms,
                                                                          rec.rx_ms)
        info.rx_last_ms = rec.rx_ms if info.rx_last_ms is None else max(info.rx_last_ms,
                                                                        rec.rx_ms)
        try:
            f = verifier.verify(rec.frame)
        except ProtocolError as exc:
            info.rejected[exc.reason] += 1
            continue
        key = (f["board_id"], f["boot"], f["seq"])
        if key in seen:
            info.duplicates += 1
        seen.add(key)
        info.by_type[f["msg_type"]] += 1
        b = info.boards.setdefault(f["board_id"], BoardInfo(f["board_id"]))
        b.sites.add(rec.site)
        b.frames += 1
        last = f["seq"] + codec.seq_span(f) - 1
        lo, hi = b.boots.get(f["boot"], (f["seq"], last))
        b.boots[f["boot"]] = (min(lo, f["seq"]), max(hi, last))
        b.seqs.setdefault(f["boot"], set()).update(range(f["seq"], last + 1))
    if size > len(MAGIC):
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            info.torn_tail = fh.read(1) != b"\0"
    return info


def _chain(first: TraceRecord | TraceError | None,
           rest: Iterator[TraceRecord | TraceError]) -> Iterator[TraceRecord | TraceError]:
    if first is not None:
        yield first
        yield from rest


def cmd_info(args: argparse.Namespace) -> int:
    info = trace_info(args.file)
    if args.json:
        print(json.dumps(info.to_json()))
        return 0
    print(f"{info.path}: {info.records} frames, {info.size_bytes} bytes "
          f"({info.overhead_bytes_per_record:.1f} bytes per frame over the raw frames)")
    if info.rx_first_ms is not None and info.rx_last_ms is not None:
        rate = f", {info.records / info.span_s:.3g} frames/s" if info.span_s else ""
        print(f"received {_iso(info.rx_first_ms)} .. {_iso(info.rx_last_ms)} "
              f"({_duration(info.span_s)}{rate})")
    if info.by_type:
        print("frames: " + ", ".join(f"{k} {v}" for k, v in sorted(info.by_type.items())))
    bad = sum(info.rejected.values())
    print(f"rejected: {bad}" + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(info.rejected.items())) + ")"
                                if bad else "") + f"; duplicates: {info.duplicates}")
    print(f"damaged records: {info.damaged}"
          + ("; torn last record (the writer stopped mid-record)" if info.torn_tail else ""))
    for b in sorted(info.boards.values(), key=lambda b: b.board_id):
        boots = ", ".join(f"boot {k} seq {lo}..{hi}" for k, (lo, hi) in sorted(b.boots.items()))
        print(f"board {b.board_id} (site {', '.join(sorted(b.sites))}): {b.frames} frames, "
              f"{boots}, {b.missing()} seqs missing")
    return 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _duration(s: float) -> str:
    d, rest = divmod(round(s), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d} d " if d else "") + f"{h:02d}:{m:02d}:{sec:02d}"


# -- from-csv --------------------------------------------------------------------------------


def _sample_markers() -> dict[str, int]:
    """The invalid marker of each sample field, from the wire schema (not retyped here)."""
    out: dict[str, int] = {}
    for seg in layout.payload_layout("sample").segments:
        if isinstance(seg, layout.Fixed):
            out.update({f.name: layout.markers(f.fmt)[1] for f in seg.fields})
        elif isinstance(seg, layout.IntArray):
            out[seg.name] = layout.markers(seg.elem_fmt)[1]
    return out


INVALID = _sample_markers()


@dataclass(frozen=True)
class _Quantity:
    """How a CSV value becomes a wire integer: scale, then the valid range (below the field's
    abnormal/invalid markers)."""

    scale: float
    lo: int
    hi: int
    unit: str
    saturate: bool = False  # above hi: hi (a reading "at least this"), not an error


_PACK = _Quantity(1000, 0, INVALID["pack_mv"] - 2, "V")
_CURRENT = _Quantity(1000, -(1 << 31), INVALID["current_ma"] - 2, "A")
_TEMP = _Quantity(10, -(1 << 15), INVALID["temps_dc"] - 2, "degC")
_CELL = _Quantity(1000, 0, INVALID["cells_mv"] - 2, "V")
_RISO = _Quantity(1, 0, INVALID["riso_pos_kohm"] - 2, "kOhm", saturate=True)


@dataclass(frozen=True)
class CsvBoard:
    """The board the CSV's frames come from (the birth's profile)."""

    board_id: int
    cells: int
    rated_ah: float
    chemistry: str
    probes: int | None = None
    max_pack_v: float | None = None
    site: str = "lab"


@dataclass
class _Columns:
    time: int
    iso_time: bool
    pack: int
    current: int
    temps: list[int]
    cells: list[int]
    riso: list[int | None]
    names: list[str]


class CsvError(UsageError):
    pass


def _columns(path: Path, header: list[str], board: CsvBoard) -> _Columns:
    names = [h.strip() for h in header]
    where: dict[str, int] = {}
    for j, name in enumerate(names):
        if name in where:
            raise CsvError(f"{path}, line 1, column {j + 1}: {name!r} appears twice (also "
                           f"column {where[name] + 1})")
        where[name] = j

    def need(name: str, alt: str | None = None) -> int:
        if name in where:
            return where[name]
        raise CsvError(f"{path}, line 1: no {name!r} column" + (f" (nor {alt!r})" if alt else ""))

    if "time_s" in where and "timestamp" in where:
        raise CsvError(f"{path}, line 1, column {where['timestamp'] + 1}: both time_s and "
                       f"timestamp; keep one")
    iso = "timestamp" in where
    time_col = where["timestamp"] if iso else need("time_s", "timestamp")
    indexed: dict[str, dict[int, int]] = {"temp_c": {}, "cell_v": {}}
    for name, j in where.items():
        if m := _INDEXED.match(name):
            indexed[m.group(1)][int(m.group(2))] = j
    temps = _indexed_run(path, where, indexed["temp_c"], "temp_c")
    if "temp_c" in where:
        if temps:
            raise CsvError(f"{path}, line 1, column {where['temp_c'] + 1}: both temp_c and "
                           f"temp_c_1...; use one form")
        temps = [where["temp_c"]]
    if board.probes is not None and board.probes != len(temps):
        have = f"{len(temps)} temperature column(s)" if temps else "no temperature column"
        raise CsvError(f"{path}, line 1: --probes {board.probes} but the header has {have}")
    if not temps and board.probes is None:
        raise CsvError(f"{path}, line 1: no temperature column (temp_c or temp_c_1...; "
                       f"--probes 0 for a log without one)")
    cells = _indexed_run(path, where, indexed["cell_v"], "cell_v")
    if cells and len(cells) != board.cells:
        raise CsvError(f"{path}, line 1: {len(cells)} cell_v columns but --cells {board.cells} "
                       f"(give all of cell_v_1..cell_v_{board.cells}, or none)")
    known = {"time_s", "timestamp", "pack_v", "current_a", "temp_c", *RISO_COLUMNS}
    ignored = [n for n in names if n not in known and not _INDEXED.match(n)]
    if ignored:
        print(f"{path}: ignoring column(s) {', '.join(ignored)}", file=sys.stderr)
    return _Columns(time=time_col, iso_time=iso, pack=need("pack_v"), current=need("current_a"),
                    temps=temps, cells=cells, riso=[where.get(n) for n in RISO_COLUMNS],
                    names=names)


def _indexed_run(path: Path, where: dict[str, int], found: dict[int, int],
                 prefix: str) -> list[int]:
    """Columns prefix_1..prefix_K, complete and in order of index."""
    if not found:
        return []
    want = range(1, max(found) + 1)
    missing = [i for i in want if i not in found]
    if missing or 0 in found:
        bad = f"{prefix}_0" if 0 in found else f"{prefix}_{missing[0]}"
        what = "numbering starts at 1" if 0 in found else "missing"
        raise CsvError(f"{path}, line 1: {bad} {what} ({prefix}_1..{prefix}_{max(found)} "
                       f"expected)")
    return [found[i] for i in want]


def read_csv(path: Path, board: CsvBoard) -> tuple[list[int], list[dict[str, Any]], bool]:
    """(ts_ms per row, sample payloads, whether insulation is measured). Raises CsvError
    naming the line and column of the first bad value."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: {exc.strerror}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise CsvError(f"{path}: empty file (a header row is expected)")
            cols = _columns(path, header, board)
            times: list[int] = []
            samples: list[dict[str, Any]] = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                r = _Row(path, reader.line_num, cols.names, row)
                ts = _time(r, cols)
                if times and ts <= times[-1]:
                    raise CsvError(f"{r.where(cols.time)}: {row[cols.time].strip()!r} is not "
                                   f"after the previous row's time (times must increase, to "
                                   f"the millisecond)")
                pack_mv = r.value(cols.pack, _PACK, "pack_mv")
                if cols.cells:
                    cells = [r.value(j, _CELL, "cells_mv") for j in cols.cells]
                elif board.cells == 1:  # one cell: the pack voltage is the cell's
                    cells = [INVALID["cells_mv"] if pack_mv == INVALID["pack_mv"] else
                             min(pack_mv, _CELL.hi)]
                else:
                    cells = []
                riso = [INVALID[n] if j is None else r.value(j, _RISO, n)
                        for n, j in zip(RISO_COLUMNS, cols.riso, strict=True)]
                times.append(ts)
                samples.append({
                    "pack_mv": pack_mv, "current_ma": r.value(cols.current, _CURRENT,
                                                              "current_ma"),
                    "riso_pos_kohm": riso[0], "riso_neg_kohm": riso[1], "alarm_level": 0,
                    "alarm_flags": 0, "temps_dc": [r.value(j, _TEMP, "temps_dc")
                                                   for j in cols.temps],
                    "cells_mv": cells})
        except csv.Error as exc:
            raise CsvError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise CsvError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
    if not samples:
        raise CsvError(f"{path}: no data rows after the header")
    return times, samples, any(j is not None for j in cols.riso)


@dataclass(frozen=True, slots=True)
class _Row:
    """One data row, for values with their place named in errors."""

    path: Path
    line: int
    names: list[str]
    fields: list[str]

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.names):
            raise CsvError(f"{self.path}, line {self.line}: {len(self.fields)} fields, the "
                           f"header has {len(self.names)}")

    def where(self, j: int) -> str:
        return f"{self.path}, line {self.line}, column {j + 1} ({self.names[j]})"

    def value(self, j: int, q: _Quantity, marker: str) -> int:
        text = self.fields[j].strip()
        if not text:
            return INVALID[marker]  # a missing value: the protocol's invalid marker
        try:
            x = float(text)
        except ValueError:
            raise CsvError(f"{self.where(j)}: {text!r} is not a number") from None
        if not math.isfinite(x):
            raise CsvError(f"{self.where(j)}: {text!r} is not a finite number (leave the field "
                           f"empty for a missing value)")
        v = round(x * q.scale)
        if v > q.hi and q.saturate:
            return q.hi
        if not q.lo <= v <= q.hi:
            raise CsvError(f"{self.where(j)}: {text} {q.unit} is outside what the wire carries "
                           f"({q.lo / q.scale:g} .. {q.hi / q.scale:g} {q.unit})")
        return v


def _time(r: _Row, cols: _Columns) -> int:
    text = r.fields[cols.time].strip()
    where = r.where(cols.time)
    if not text:
        raise CsvError(f"{where}: empty (every row needs its time)")
    if cols.iso_time:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise CsvError(f"{where}: {text!r} is not an ISO-8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        ms = (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        if ms < 0:
            raise CsvError(f"{where}: {text!r} is before 1970 (the wire's ts_ms is unsigned)")
        return ms
    try:
        s = float(text)
    except ValueError:
        raise CsvError(f"{where}: {text!r} is not a number of seconds") from None
    if not math.isfinite(s) or s < 0:
        raise CsvError(f"{where}: {text!r}: time_s must be a finite number >= 0")
    return CSV_EPOCH_MS + round(s * 1000)


def csv_frames(path: Path, board: CsvBoard) -> list[tuple[int, bytes]]:
    """(rx_ms, frame) of the birth and every sample of the CSV, in order."""
    times, samples, riso_seen = read_csv(path, board)
    if board.cells < 1 or board.cells > 0xFFFF:
        raise CsvError(f"--cells {board.cells}: 1..65535 cells in series")
    if board.cells > schema.COUNT_LIMITS["n_cells"] and samples[0]["cells_mv"]:
        raise CsvError(f"--cells {board.cells}: a sample carries at most "
                       f"{schema.COUNT_LIMITS['n_cells']} cell voltages")
    n_probes = len(samples[0]["temps_dc"])
    if n_probes > schema.COUNT_LIMITS["n_probes"]:
        raise CsvError(f"{n_probes} probes: a sample carries at most "
                       f"{schema.COUNT_LIMITS['n_probes']}")
    if not (board.rated_ah > 0 and round(board.rated_ah * 1000) <= 0xFFFF_FFFF):
        raise CsvError(f"--rated-ah {board.rated_ah:g}: must be > 0")
    charge_mv = next(lim.levels[1] for lim in limits.limits_for(board.chemistry)
                     if lim.rule == "cell_overvoltage")
    max_pack_mv = round(board.max_pack_v * 1000) if board.max_pack_v is not None \
        else board.cells * charge_mv
    if not 0 < max_pack_mv <= 0xFFFF_FFFF:
        raise CsvError(f"--max-pack-v {board.max_pack_v:g}: must be > 0")
    steps = [b - a for a, b in itertools.pairwise(times)]
    period_ms = max(1, round(statistics.median(steps))) if steps else 1000
    temp_l3 = next(lim.levels[3] for lim in limits.LIMITS if lim.rule == "temp_high")
    synced = codec.FLAGS["time_synced"]
    birth = {
        "msg_type": "birth", "flags": synced, "board_id": board.board_id, "boot": CSV_BOOT,
        "seq": 0, "ts_ms": times[0],
        "payload": {
            "fw_major": 0, "fw_minor": 0, "fw_patch": 0,
            "schema_fingerprint": layout.schema_fingerprint(), "chemistry": board.chemistry,
            "cells_series": board.cells, "rated_mah": round(board.rated_ah * 1000),
            "max_pack_mv": max_pack_mv, "max_temp_dc": temp_l3,
            "sample_period_ms": period_ms,
            # 0: no insulation monitor in the log (the wire has no "not fitted")
            "riso_period_ms": period_ms if riso_seen else 0,
            "current_sensor": "shunt", "config_error": 0, "n_probes": n_probes,
            "n_cells": len(samples[0]["cells_mv"]), "probe_cell": [NO_CELL] * n_probes}}
    out = [(times[0], codec.encode_frame(birth))]
    for seq, (ts, payload) in enumerate(zip(times, samples, strict=True), start=1):
        out.append((ts, codec.encode_frame({
            "msg_type": "sample", "flags": synced, "board_id": board.board_id,
            "boot": CSV_BOOT, "seq": seq, "ts_ms": ts, "payload": payload})))
    return out


def write_trace(path: Path, site: str, frames: list[tuple[int, bytes]]) -> None:
    """Atomically: a temporary file next to `path`, renamed over it when complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        w = TraceWriter(tmp)
        try:
            for rx_ms, frame in frames:
                w.append(rx_ms, site, frame)
        finally:
            w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_from_csv(args: argparse.Namespace) -> int:
    board = CsvBoard(board_id=args.board_id, cells=args.cells, rated_ah=args.rated_ah,
                     chemistry=args.chemistry, probes=args.probes, max_pack_v=args.max_pack_v,
                     site=args.site)
    if args.probes is not None and args.probes < 0:
        raise UsageError(f"--probes {args.probes}: must be >= 0")
    frames = csv_frames(args.csv, board)
    write_trace(args.output, board.site, frames)
    first, last = frames[0][0], frames[-1][0]
    print(f"{args.output}: birth + {len(frames) - 1} samples of board {board.board_id}, "
          f"{_iso(first)} .. {_iso(last)} ({_duration((last - first) / 1000)})")
    return 0
