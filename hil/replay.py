"""`packsentry replay FILE`: a trace through the daemon's own pipeline, in-process.

The frames go through `host.pipeline.Processor` (verification, dedupe, storage, state of
health, alarms) exactly as the daemon runs it, into a temporary SQLite database (or `--db`).
Time is the trace's: the processor's clock is the receive time of the frames it is working on,
so the same trace always gives the same result, whatever the machine or `--speed`.

How the replay walks the trace (docs/hil.md, "Replay"):
- micro-batches: consecutive records spanning at most `batch_s` of receive time and
  `batch_max` frames (one transaction each, as the daemon's micro-batches);
- ticks (the daemon's once-a-second `Processor.tick`): where a tick can change something
  between two batches, i.e. when a board's silence reaches `silent_periods` reporting periods,
  and when an open seq gap may settle; a batch is cut where such a time falls inside it;
- estimates: the estimator writes a row on every capacity update (and every
  `estimate_every_s`); the JSON keeps the rows where a board's capacity changed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from packsentry.host.alarm_settings import AlarmSettings
from packsentry.host.alarms import AlarmEngine, AlarmEvent
from packsentry.host.config import ConfigError, DaemonConfig
from packsentry.host.config import load as load_config
from packsentry.host.pipeline import Inbound, Processor, collect_rarely
from packsentry.host.storage import Storage
from packsentry.host.trace_file import TraceError
from packsentry.host.trace_file import read as read_trace
from packsentry.protocol import codec
from packsentry.protocol.cli import UsageError, parse_keys
from packsentry.protocol.errors import FramingError

DEFAULT_BATCH_S = 300.0  # NASA B0005 (50k samples): 6 s; 60 s: 11 s, most of it saving state
# frames a micro-batch holds at most: what bounds a replay's memory. A transaction has costs
# of its own (each board's run screened, each board's last pages written again at the next
# commit): 300 s of 100 packs' 10-sample batch frames is 3 000 frames, which the daemon's
# batch_max (2 000) cut in two: 7 % slower, 75 MB less resident (455-465 vs 520-545 MB)
DEFAULT_BATCH_MAX = 3_000
TICK_GRID_MS = 1000  # the daemon ticks about once a second: ticks land on whole seconds
LEVEL_EVENTS = ("raised", "escalated", "deescalated", "cleared")  # what the timeline shows
_DEFAULTS = DaemonConfig()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("replay", help="run a trace through the daemon's pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", type=Path, metavar="FILE", help="a trace file")
    r.add_argument("--speed", type=_speed, default=None, metavar="max|N",
                   help="max: as fast as possible (default); N: N x real time")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--db", type=Path, metavar="PATH",
                   help="keep the database here (a new file); default: a temporary one")
    r.add_argument("--config", type=Path, metavar="FILE",
                   help="take keys, [alarms], gap_settle_s and estimate_every_s from a daemon "
                        "config")
    r.add_argument("--key", action="append", default=[], metavar="BOARD=HEX",
                   help="a board's HMAC key (verifies signed frames); repeatable")
    r.add_argument("--batch-s", type=float, default=DEFAULT_BATCH_S, metavar="S",
                   help=f"receive time a micro-batch spans at most (default {DEFAULT_BATCH_S:g})")
    r.add_argument("--batch-max", type=int, default=DEFAULT_BATCH_MAX, metavar="N",
                   help=f"frames a micro-batch holds at most (default {DEFAULT_BATCH_MAX}; "
                        f"memory grows with it)")
    r.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal")
    r.set_defaults(func=cmd_replay)


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: 'max' or a factor such as 10") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: the factor must be > 0")
    return value


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    t_s: float
    capacity_ah: float | None
    soh_pct: float | None
    r0_mohm: float | None
    soc_pct: float | None


@dataclass(frozen=True)
class BoardResult:
    """A board's final estimates (its weakest cell for capacity, SoH and SOC; the sum of its
    cells for R0, i.e. the string's resistance) and their history."""

    board_id: int
    site: str
    chemistry: str | None
    cells: int | None
    rated_ah: float | None
    soh_pct: float | None
    capacity_ah: float | None
    r0_mohm: float | None
    estimates: list[Estimate]


@dataclass(frozen=True)
class AlarmRecord:
    t_s: float
    board_id: int
    rule: str
    level: int
    event: str
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class FrameCounts:
    ok: int
    rejected: int
    duplicates: int
    gaps: int


@dataclass(frozen=True)
class ReplayResult:
    boards: dict[int, BoardResult]
    alarms: list[AlarmRecord]
    frames: FrameCounts
    records: int  # trace records read (frames and damaged records)
    t0_ms: int  # t_s counts from here: the trace's first sample (board time)
    wall_s: float = field(compare=False)

    def to_json(self) -> dict[str, Any]:
        """The `--json` document; every number rounded to what it is worth, so that the
        same trace gives the same bytes."""
        return {
            "boards": {str(b.board_id): {
                "soh_pct": b.soh_pct, "capacity_ah": b.capacity_ah, "r0_mohm": b.r0_mohm,
                "estimates": [{"t_s": e.t_s, "capacity_ah": e.capacity_ah,
                               "soh_pct": e.soh_pct, "r0_mohm": e.r0_mohm,
                               "soc_pct": e.soc_pct} for e in b.estimates]}
                for b in self.boards.values()},
            "alarms": [{"t_s": a.t_s, "board_id": a.board_id, "rule": a.rule,
                        "level": a.level, "event": a.event, "value": a.value,
                        "threshold": a.threshold} for a in self.alarms],
            "frames": {"ok": self.frames.ok, "rejected": self.frames.rejected,
                       "duplicates": self.frames.duplicates, "gaps": self.frames.gaps},
        }


# -- the replay --------------------------------------------------------------------------------


class ReplayError(Exception):
    """The pipeline cannot go on with the trace (the daemon would stop on it too)."""



def replay(path: str | Path, *, db: str | Path | None = None,
           keys: dict[int, bytes] | None = None, settings: AlarmSettings | None = None,
           gap_settle_s: float = _DEFAULTS.gap_settle_s,
           estimate_every_s: float = _DEFAULTS.storage.estimate_every_s,
           batch_s: float = DEFAULT_BATCH_S, batch_max: int = DEFAULT_BATCH_MAX,
           speed: float | None = None,
           progress: Callable[[int, int, int], None] | None = None) -> ReplayResult:
    """Replay a trace; `db` None: a temporary database. `speed`: N x real time (None: as fast
    as possible). `progress(bytes done, bytes in the file, records done)` is called after
    every batch. The trace is streamed (a day of a fleet is gigabytes). Raises TraceError
    when the file is not a trace."""
    path = Path(path)
    records = read_trace(path)
    head = []  # up to the first good record: its receive time starts the clock
    for rec in records:
        head.append(rec)
        if not isinstance(rec, TraceError):
            break
    with tempfile.TemporaryDirectory(prefix="packsentry-replay-") as tmp:
        storage = Storage(db if db is not None else Path(tmp) / "replay.db",
                          synchronous="normal" if db is not None else "off",
                          background_checkpoint=True)
        try:
            return _Replay(head, records, path, storage, keys or {}, settings or AlarmSettings(),
                           gap_settle_s, estimate_every_s, batch_s, batch_max, speed,
                           progress).run()
        finally:
            storage.close()


class _Replay:
    def __init__(self, head: list[Any], rest: Iterator[Any], path: Path, storage: Storage,
                 keys: dict[int, bytes], settings: AlarmSettings, gap_settle_s: float,
                 estimate_every_s: float, batch_s: float, batch_max: int, speed: float | None,
                 progress: Callable[[int, int, int], None] | None) -> None:
        self.records = itertools.chain(head, rest)
        self.n_records = 0
        self.file_bytes = path.stat().st_size
        self.offset = 0  # bytes of the file read so far (a record's offset)
        self.source = f"trace:{path}"
        self.storage = storage
        self.settings = settings
        self.batch_ms = max(0, int(batch_s * 1000))
        self.batch_max = max(1, batch_max)
        self.gap_settle_ms = int(gap_settle_s * 1000)
        self.speed = speed
        self.progress = progress
        first_rx = next((r.rx_ms for r in head if not isinstance(r, TraceError)), 0)
        self.now_ms = first_rx  # the processor's clock
        self.first_rx_ms = first_rx
        self.events: list[AlarmEvent] = []
        self.processor = Processor(storage, AlarmEngine(settings), keys=keys,
                                   gap_settle_s=gap_settle_s, estimate_every_s=estimate_every_s,
                                   notify=self.events.extend, clock_ms=lambda: self.now_ms,
                                   state_every_ms=1 << 62)  # nothing resumes a replay
        self.heard_ms: dict[int, int] = {}  # board -> newest of receive and board time
        self.wall_start = time.perf_counter()

    # -- walking the trace -------------------------------------------------------------------

    def run(self) -> ReplayResult:
        batch: list[Inbound] = []
        start_rx = 0
        deadline = self._next_deadline()
        for n, rec in enumerate(self.records):
            self.n_records = n + 1
            if isinstance(rec, TraceError):  # quarantined like a stream's framing error
                rx = batch[-1].rx_ms if batch else self.now_ms
                item = Inbound(b"", rx, self.source, "local", error=FramingError(str(rec)))
            else:
                rx = rec.rx_ms
                item = Inbound(rec.frame, rx, self.source, rec.site or "local")
                self.offset = rec.offset
            cut = False
            if batch:
                if len(batch) >= self.batch_max or rx - start_rx >= self.batch_ms:
                    cut = True
                elif rx > deadline:  # a board may have gone silent before this record
                    deadline = self._next_deadline()
                    cut = rx > deadline
            if cut:
                self._process(batch, n)
                batch = []
                self._ticks_before(rx)
                deadline = self._next_deadline()
            if not batch:
                start_rx = rx
            batch.append(item)
            self._heard(item)
        self.offset = self.file_bytes
        if batch:
            self._process(batch, self.n_records)
        elif self.progress is not None:
            self.progress(self.offset, self.file_bytes, self.n_records)
        return self._result()

    def _heard(self, item: Inbound) -> None:
        if len(item.raw) < codec.HEADER_SIZE:
            return
        board_id = codec.HEADER.unpack_from(item.raw, 0)[3]
        # the engine ages a board on the host's clock: the receive time
        self.heard_ms[board_id] = max(self.heard_ms.get(board_id, 0), item.rx_ms)

    def _silent_ms(self, board_id: int) -> int | None:
        return self.processor.engine.silent_after_ms(board_id)

    def _next_deadline(self) -> float:
        """The earliest time a known board turns silent (inf: none)."""
        out = math.inf
        for board_id, heard in self.heard_ms.items():
            silent = self._silent_ms(board_id)
            if silent is not None:
                out = min(out, heard + silent)
        return out

    def _ticks_before(self, next_rx: int) -> None:
        """The daemon's ticks between the last batch and `next_rx` that can change something:
        a board's silence reaching its limit, an open gap settling."""
        due = set()
        for board_id, heard in self.heard_ms.items():
            silent = self._silent_ms(board_id)
            if silent is not None:
                due.add(_grid(heard + silent))
        if any(self.processor.delivery.unsettled(b) for b in self.processor.boards):
            due.add(_grid(self.now_ms + self.gap_settle_ms))
        for t in sorted(due):
            if self.now_ms < t < next_rx:
                self._pace(t)
                self.now_ms = t
                self.processor.tick()

    def _process(self, batch: list[Inbound], done: int) -> None:
        self.now_ms = max(self.now_ms, max(item.rx_ms for item in batch))
        self._pace(self.now_ms)
        try:
            self.processor.process(batch)
        except ValueError as exc:  # e.g. a birth the alarm engine refuses: the daemon stops too
            raise ReplayError(f"records {done - len(batch) + 1}..{done} (received up to "
                              f"{self.now_ms} ms): the daemon's pipeline fails on them: "
                              f"{exc}") from None
        if self.progress is not None:
            self.progress(self.offset, self.file_bytes, done)

    def _pace(self, t_ms: int) -> None:
        if self.speed is None:
            return
        due = self.wall_start + (t_ms - self.first_rx_ms) / 1000.0 / self.speed
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    # -- the result ------------------------------------------------------------------------------

    def _result(self) -> ReplayResult:
        # the first sample's time: a seek per board in the time index (min(ts_ms) over the
        # whole table reads all of it: 0.4 s after a day of 100 packs); every board whose
        # samples were stored is one of the processor's boards
        firsts = [t for (t,) in (self.storage.db.execute(
            "SELECT min(ts_ms) FROM samples WHERE board_id = ?", (board_id,)).fetchone()
            for board_id in self.processor.boards) if t is not None]
        t0 = min(firsts) if firsts else self.first_rx_ms
        boards = {board_id: self._board(board_id, t0)
                  for board_id in sorted(self.processor.boards)}
        alarms = [AlarmRecord(t_s=_t(e.ts_ms, t0), board_id=e.board_id, rule=e.rule,
                              level=e.level, event=e.event, value=_round(e.value, 3),
                              threshold=_round(e.threshold, 3), message=e.message)
                  for e in self.events if e.event in LEVEL_EVENTS]
        s = self.processor.stats
        frames = FrameCounts(ok=sum(s.frames.values()), rejected=sum(s.rejected.values()),
                             duplicates=s.duplicates, gaps=s.gaps_opened)
        return ReplayResult(boards, alarms, frames, self.n_records, t0,
                            wall_s=time.perf_counter() - self.wall_start)

    def _board(self, board_id: int, t0: int) -> BoardResult:
        bs = self.processor.boards[board_id]
        p = bs.profile
        final = Estimate(t_s=0.0, capacity_ah=None, soh_pct=None, r0_mohm=None, soc_pct=None)
        if p is not None and len(bs.units):  # the estimator's now, as one time's rows
            est = self.processor.soh.estimates(bs.units)
            final = _history(list(zip([0] * len(bs.units), range(len(bs.units)),
                                      *(est[k].tolist() for k in _HISTORY_KEYS),
                                      strict=True)), 0)[0]
        rows = self.storage.db.execute(
            f"SELECT ts_ms, unit, {', '.join(_HISTORY_KEYS)} FROM estimates "
            "WHERE board_id = ? ORDER BY ts_ms, unit", (board_id,)).fetchall()
        return BoardResult(board_id=board_id, site=bs.site,
                           chemistry=p.chemistry if p else None,
                           cells=p.cells_series if p else None,
                           rated_ah=p.rated_mah / 1000 if p else None,
                           soh_pct=final.soh_pct, capacity_ah=final.capacity_ah,
                           r0_mohm=final.r0_mohm, estimates=_history(rows, t0))


_HISTORY_KEYS = ("capacity_ah", "soh_pct", "r0_mohm", "soc_pct")


def _history(rows: list[tuple[Any, ...]], t0: int) -> list[Estimate]:
    """A board's estimate history from its estimate rows (ts_ms, unit, *_HISTORY_KEYS) in
    time order: after each time's rows, the board's values from every unit's newest row so
    far (the weakest cell limits a series string: capacity, SoH, SOC; resistances in series
    add up: R0, only when every unit has one); an entry wherever the capacity changed. In
    numpy, over a (time, unit) table of each unit's newest row (one by one, a day of 100
    packs' 1.4 M rows took 0.9 s; the same entries, checked on that day with gaps and NULLs
    added)."""
    if not rows:
        return []
    ts_ms, unit, *values = zip(*rows, strict=True)
    times, t_idx = np.unique(np.array(ts_ms, np.int64), return_inverse=True)
    _, u_idx = np.unique(np.array(unit, np.int64), return_inverse=True)
    newest = np.full((len(times), u_idx.max() + 1), -1, np.int64)
    newest[t_idx, u_idx] = np.arange(len(rows))
    newest = np.maximum.accumulate(newest, axis=0)  # (rows come in time order)
    seen = newest >= 0
    table = {k: np.array(v, np.float64)[newest]  # (None -> NaN; unseen cells are masked)
             for k, v in zip(_HISTORY_KEYS, values, strict=True)}
    known = {k: seen & np.isfinite(v) for k, v in table.items()}

    def weakest(k: str) -> list[float | None]:  # the weakest cell limits the string
        low = np.where(known[k], table[k], np.inf).min(axis=1)
        return [None if x == math.inf else x for x in low.tolist()]

    cap, soh, soc = weakest("capacity_ah"), weakest("soh_pct"), weakest("soc_pct")
    r0 = np.where(known["r0_mohm"], table["r0_mohm"], 0.0).sum(axis=1).tolist()
    r0_whole = (known["r0_mohm"].sum(axis=1) == seen.sum(axis=1)).tolist()  # every unit's
    history: list[Estimate] = []
    for i, t in enumerate(times.tolist()):
        capacity_ah = _round(cap[i], 4)
        if history and capacity_ah == history[-1].capacity_ah:
            continue
        history.append(Estimate(t_s=_t(t, t0), capacity_ah=capacity_ah,
                                soh_pct=_round(soh[i], 2), soc_pct=_round(soc[i], 2),
                                r0_mohm=_round(r0[i], 3) if r0_whole[i] else None))
    return history


def _grid(t_ms: int) -> int:
    return -(-t_ms // TICK_GRID_MS) * TICK_GRID_MS  # the next whole second


def _t(ts_ms: int, t0_ms: int) -> float:
    return round((ts_ms - t0_ms) / 1000.0, 3)


def _round(x: float | None, digits: int) -> float | None:
    if x is None:
        return None
    f = float(x)
    return round(f, digits) if math.isfinite(f) else None


# -- the command ---------------------------------------------------------------------------------


class _Progress:
    """`replay  42 %  21000 records  9800 records/s` (the share of the file's bytes) on one
    line, at most 10 times a second; on a terminal only once it has run for half a second."""

    def __init__(self, stream: TextIO, forced: bool) -> None:
        self.stream = stream
        self.forced = forced
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def __call__(self, done_bytes: int, total_bytes: int, records: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.1 and done_bytes < total_bytes:
            return
        if not self.forced and now - self.start < 0.5:
            return
        self.last = now
        rate = records / max(now - self.start, 1e-9)
        pct = 100 * done_bytes // max(total_bytes, 1)
        self.stream.write(f"\rreplay {pct:3d} %  {records} records  {rate:.0f} records/s")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    keys, default_key = parse_keys(args.key)
    if default_key is not None:
        raise UsageError("--key: give each key with its board (BOARD=HEX)")
    kw: dict[str, Any] = {}
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise UsageError(f"{exc.lines()[0]} (packsentry config check {args.config} lists "
                             f"every problem)") from None
        keys = {**cfg.keys, **keys}
        kw = {"settings": cfg.alarms, "gap_settle_s": cfg.gap_settle_s,
              "estimate_every_s": cfg.storage.estimate_every_s}
    if args.db is not None and args.db.exists():
        raise UsageError(f"--db {args.db}: exists; a replay writes a new database (remove it "
                         f"or choose another path)")
    if not args.batch_s >= 0:
        raise UsageError(f"--batch-s {args.batch_s:g}: must be >= 0")
    if args.batch_max < 1:
        raise UsageError(f"--batch-max {args.batch_max}: must be at least 1")
    show = args.progress or sys.stderr.isatty()
    bar = _Progress(sys.stderr, args.progress) if show else None
    collect_rarely()
    try:
        result = replay(args.file, db=args.db, keys=keys, batch_s=args.batch_s,
                        batch_max=args.batch_max, speed=args.speed, progress=bar, **kw)
    except (TraceError, ReplayError) as exc:
        raise UsageError(f"{args.file}: {exc}" if isinstance(exc, ReplayError) else str(exc)) \
            from None
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(summary(result, args.file))
        print(f"{result.records} records in {result.wall_s:.2f} s "
              f"({result.records / max(result.wall_s, 1e-9):.0f} records/s)", file=sys.stderr)
    return 0


def summary(result: ReplayResult, path: Path | str) -> str:
    """The readable form: frame counts, a state-of-health table per board, the alarm
    timeline (times from the first sample, d hh:mm:ss)."""
    f = result.frames
    out = [f"{path}: {f.ok} frames ok, {f.rejected} rejected, {f.duplicates} duplicates, "
           f"{f.gaps} seq gaps", ""]
    head = ("board", "site", "chem", "cells", "rated Ah", "SoH %", "capacity Ah", "R0 mOhm",
            "changes")
    rows = [head] + [(str(b.board_id), b.site, b.chemistry or "-", _s(b.cells),
                      _s(b.rated_ah, 2), _s(b.soh_pct, 1), _s(b.capacity_ah, 3),
                      _s(b.r0_mohm, 1), str(len(b.estimates)))
                     for b in result.boards.values()]
    out += _table(rows)
    out += ["", f"alarms: {len(result.alarms)} events"]
    out += _table([("time", "board", "level", "event", "rule", "message")] + [
        (_clock(a.t_s), str(a.board_id), f"L{a.level}", a.event, a.rule, a.message)
        for a in result.alarms])
    return "\n".join(out)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    if len(rows) == 1:
        return []
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _s(x: float | int | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if digits else str(x)


def _clock(t_s: float) -> str:
    sign = "-" if t_s < 0 else "+"
    d, rest = divmod(abs(t_s), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{int(d)}d {int(h):02d}:{int(m):02d}:{s:06.3f}"
