"""The processor: verified frames in, one transaction out, acknowledgements after the commit.

`Processor.process(items)` takes a micro-batch of received frames from any source, and for it:

1. verifies each frame (CRC, the board's tag, version, lengths; `protocol.verify`), and sorts
   out duplicates (already committed: acknowledged again, not stored twice) and replays;
2. learns board profiles from births, stores samples (batch frames unrolled), alarm, status
   and command-ack frames, and the rejected frames with their reason (the quarantine);
3. feeds the samples to the state-of-health estimator (one batched call) and the alarm engine;
4. commits all of it in ONE transaction, and only then acknowledges: the MQTT PUBACKs, and
   the boards' store-and-forward acks (cumulative, up to the point `delivery.py` allows);
5. hands the alarm events to the notifiers (after the commit, so a crash never announces an
   alarm the database does not have).

It runs on one thread (the daemon's processor, or the caller's for a replay). Time comes from
`clock_ms`, so a replay is deterministic.
"""

from __future__ import annotations

import gc
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from packsentry.protocol import batch, codec
from packsentry.protocol.errors import BadValue, ProtocolError
from packsentry.protocol.replay import SeenSeqs
from packsentry.protocol.verify import check_birth

from .alarms import AlarmEngine, AlarmEvent, BoardProfile
from .commands import MUST_SIGN, BoardLink, CommandError, Commands
from .delivery import Delivery, GapChange
from .soh import SohBank
from .soh_rows import MARKS, fill_rows
from .storage import SAMPLE_COLUMNS, Storage, now_ms

log = logging.getLogger("packsentry.pipeline")

NO_CELL = 0xFFFF  # probe_cell: probe not on a cell

STATE_EVERY_MS = 10_000  # estimator and alarm state saved at least this often (default)
# ... a tenth of it each STATE_EVERY_MS / STATE_SLICES (the alarm engine's boards, the
# estimator's unit parts): a 1 000-board fleet's state is megabytes, and one transaction
# writing it all stalled the micro-batch behind it by 0.1-0.8 s (see _save_slice)
STATE_SLICES = 10
ALARM_PART = "alarms/board/"  # + board id: one engine_state row per board
SOH_PART = "soh/units/"  # + k: the estimator's units k*SOH_PART_UNITS.. (a row each, ~1 MB)
SOH_PART_UNITS = 2048
# After a link outage the board's live frames arrive before its re-sent backlog. Evaluating
# them first would make the alarm engine skip the backlog (rates and latches only move
# forward), so the host would learn what happened during the outage only from what is still
# true after it. A board with an open sequence gap therefore has its evaluation held until
# the gap fills or stops shrinking for HOLD_STALL_MS (what never comes was never stored:
# status frames, command acks, a full store) - HOLD_MAX_MS at most. Storage and acks do not
# wait, and a board's own L3/L4 alarm frame is applied at once.
HOLD_STALL_MS = 2_000
HOLD_MAX_MS = 10_000
_FEW = 8  # samples of a board's run up to which _plan_board checks their order in Python
# the sample payload's measurement fields, as storage keeps them
SAMPLE_FIELDS = tuple(c for c in SAMPLE_COLUMNS
                      if c not in ("board_id", "boot", "seq", "ts_ms", "rx_ms", "flags"))
_Run = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]  # ts_ms, seq, columns
TIME_SYNC_EVERY_MS = 3_600_000
SOH_THREAD_ROWS = 50_000  # estimator rows of a batch from which its own thread is worth it
REBIRTH_EVERY_MS = 10_000  # at most one re-send request per board this often
# A board's delivery ack at most this often: it releases the board's flash store (64 KiB by
# default, a minute of 16-cell frames at 10 Hz), so seconds are plenty. Every 0.5 s a fleet of
# 1 000 boards took 2 000 signed commands a second through the broker: in the latency
# benchmark (AMD EPYC) the daemon kept up with 4.0-4.5 k frames/s of its 10 000; every 2 s,
# 5.4 k.
ACK_EVERY_MS = 2_000


@dataclass(slots=True)
class Inbound:
    """One received item. `on_stored` runs after the commit that made it durable (or
    quarantined it): the MQTT PUBACK."""

    raw: bytes
    rx_ms: int
    source: str  # "serial:/dev/ttyUSB0", "mqtt", "trace:FILE"
    site: str
    link: BoardLink | None = None
    on_stored: Callable[[], None] | None = None
    error: ProtocolError | None = None  # the byte stream's own framing error
    offline_board: int | None = None  # an MQTT last will: board went away (raw is empty)


# The processor makes ~100 000 short-lived containers a micro-batch (storage rows, runs,
# events); a batch lives long enough for CPython's default thresholds (700, 10, 10) to
# promote it and then re-scan the whole heap again and again: 20-30 % of the processing time
# of a 10 Hz fleet (1 000 boards x 16 cells in-process: 97-114 -> 69-85 us a frame). Nearly
# nothing here makes reference cycles (reference counting frees the rest), so the older
# generations are collected far more rarely.
GC_THRESHOLDS = (10_000, 100, 1_000)


def collect_rarely() -> None:
    """For a long-running processor (the daemon, a replay): GC_THRESHOLDS, and what start-up
    made (modules, compiled kernels, the loaded state) kept out of every later collection."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


@dataclass
class BoardState:
    board_id: int
    site: str
    profile: BoardProfile | None = None
    link: BoardLink | None = None
    units: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    per_cell: bool = False
    cell_probe: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    last_sync_ms: int = -TIME_SYNC_EVERY_MS
    last_rebirth_ms: int = -REBIRTH_EVERY_MS
    last_ack: tuple[int, int] | None = None
    last_ack_ms: int = -ACK_EVERY_MS
    last_ts_ms: int = -1  # newest sample time fed to the estimator and the alarm engine
    # samples and board alarms waiting for a gap to fill, to be evaluated in board-time order
    held_runs: list[_Run] = field(default_factory=list)
    held_alarms: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    held_since_ms: int | None = None
    stored: dict[str, Any] = field(default_factory=dict)  # its boards row as last written

    def unstored(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Of the boards row's fields (its site added), those not written yet as they are
        now; they count as written from here (a failed commit ends the process). A fleet's
        frames repeat the same online, boot, link and source micro-batch after micro-batch."""
        fields["site"] = self.site
        out = {k: v for k, v in fields.items() if k not in self.stored or self.stored[k] != v}
        self.stored.update(out)
        return out


@dataclass
class Stats:
    frames: Counter[str] = field(default_factory=Counter)  # accepted, by message type
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    samples: int = 0
    duplicates: int = 0
    gaps_opened: int = 0
    gaps_lost: int = 0
    seqs_lost: int = 0
    commits: int = 0
    commands_sent: int = 0
    commands_failed: int = 0


class Processor:
    def __init__(self, storage: Storage, engine: AlarmEngine, *, keys: dict[int, bytes],
                 gap_settle_s: float = 30.0, estimate_every_s: float = 600.0,
                 notify: Callable[[list[AlarmEvent]], None] | None = None,
                 clock_ms: Callable[[], int] = now_ms,
                 state_every_ms: int = STATE_EVERY_MS) -> None:
        self.storage = storage
        self.engine = engine
        engine.silence_on_host_clock = True  # on_heard() with receive times, below
        self.verifier_keys = keys
        self.commands = Commands(keys, clock_ms)
        self.delivery = Delivery(int(gap_settle_s * 1000))
        self.rebirth_every_ms = min(REBIRTH_EVERY_MS, int(gap_settle_s * 500))
        self.estimate_every_ms = int(estimate_every_s * 1000)
        self.notify = notify
        self.clock_ms = clock_ms
        self.state_every_ms = state_every_ms  # a replay saves once at its end
        self.stats = Stats()
        self.boards: dict[int, BoardState] = {}
        self.soh = SohBank()
        self._soh_thread = ThreadPoolExecutor(1, thread_name_prefix="soh")
        self.unit_board = np.zeros(0, np.int64)  # per estimator unit: its board, its cell
        self.unit_cell = np.zeros(0, np.int64)  # -1: the pack
        self.unit_updates = np.zeros(0, np.int64)  # capacity_updates when last stored
        self.unit_stored_ms = np.zeros(0, np.int64)
        self._slice_saved_ms = 0
        self._slice = 0  # the slice of the boards the next periodic alarm save writes
        self._load()

    # -- start-up --------------------------------------------------------------------------

    def _load(self) -> None:
        now = self.clock_ms()
        st = self.storage
        arrays = self._load_soh()
        if arrays is not None:
            self.unit_board = arrays.pop("_unit_board")
            self.unit_cell = arrays.pop("_unit_cell")
            self.unit_updates = arrays.pop("_unit_updates")
            self.unit_stored_ms = arrays.pop("_unit_stored_ms")
            self.soh = SohBank.from_state(arrays)
        raw = st.load_state("alarms")
        if raw is not None:
            head = json.loads(raw)
            if "boards" not in head:  # saved in parts: the head, then a part per board
                parts = {int(name.rsplit("/", 1)[1]): json.loads(value)
                         for name, value in st.load_states(ALARM_PART).items()}
                head = self.engine.join_state(head, parts)
            self.engine.load_state(head)
        for b in st.boards():
            bs = self.boards[b["board_id"]] = BoardState(b["board_id"], b["site"])
            if b["chemistry"]:
                bs.profile = _profile(b)
                self.engine.set_profile(bs.profile)
                self._bind_units(bs)
        for (board, boot), ivs in st.seq_ranges().items():
            self.delivery.restore(board, boot, ivs, now)
        self._slice_saved_ms = now

    def _load_soh(self) -> dict[str, np.ndarray] | None:
        """The estimator's saved state: the "soh" row, and its units' parts side by side up
        to the first part saved before all of its units existed (the units after that
        start afresh: their boards get new ones in _bind_units). A "soh" row that holds
        the units itself is the format before the parts."""
        raw = self.storage.load_state("soh")
        if raw is None:
            return None
        with np.load(io.BytesIO(raw)) as z:
            arrays = {k: z[k] for k in z.files}
        n_units = int(arrays.pop("_n_units", -1))
        if n_units < 0:
            return arrays
        parts = []
        per_unit = ("s", "_unit_board", "_unit_cell", "_unit_updates", "_unit_stored_ms")
        for k, raw_part in sorted((int(name[len(SOH_PART):]), v) for name, v
                                  in self.storage.load_states(SOH_PART).items()):
            if k != len(parts) or k * SOH_PART_UNITS >= n_units:
                break
            with np.load(io.BytesIO(raw_part)) as z:
                parts.append({key: z[key] for key in per_unit})
            if parts[-1]["s"].shape[1] < min(SOH_PART_UNITS, n_units - k * SOH_PART_UNITS):
                break
        for key in per_unit:  # (the "soh" row holds them for zero units: the join's start)
            arrays[key] = np.concatenate([arrays[key]] + [p[key] for p in parts],
                                         axis=1 if key == "s" else 0)
        return arrays

    def _bind_units(self, bs: BoardState) -> None:
        """Estimator units for a board: one per cell when cells are measured, else the pack.
        Reuses the units a saved state has for it (a restart continues the estimates)."""
        p = bs.profile
        assert p is not None
        bs.per_cell = p.n_cells > 0
        want = p.n_cells if bs.per_cell else 1
        mine = np.flatnonzero(self.unit_board == bs.board_id)
        cells = self.unit_cell[mine]
        expect = np.arange(want) if bs.per_cell else np.array([-1])
        if len(mine) == want and np.array_equal(np.sort(cells), expect):
            bs.units = mine[np.argsort(cells)]
        else:
            if len(mine):  # the board changed its profile: its old units are retired
                self.unit_board[mine] = -1
            new = [self.soh.add(p.chemistry, p.rated_mah / 1000.0,
                                1 if bs.per_cell else p.cells_series) for _ in range(want)]
            bs.units = np.array(new, np.int64)
            grow = len(self.soh) - len(self.unit_board)
            if grow > 0:
                self.unit_board = np.concatenate([self.unit_board, np.full(grow, -1)])
                self.unit_cell = np.concatenate([self.unit_cell, np.full(grow, -1)])
                self.unit_updates = np.concatenate([self.unit_updates, np.zeros(grow, np.int64)])
                self.unit_stored_ms = np.concatenate([self.unit_stored_ms,
                                                      np.zeros(grow, np.int64)])
            self.unit_board[bs.units] = bs.board_id
            self.unit_cell[bs.units] = expect
        # the probe that sits on each cell (else the hottest probe stands in)
        probe_of = np.full(max(p.n_cells, 1), -1, np.int64)
        for probe, cell in enumerate(p.probe_cell):
            if cell != NO_CELL and cell < len(probe_of) and probe_of[cell] < 0:
                probe_of[cell] = probe
        bs.cell_probe = probe_of

    # -- the micro-batch ---------------------------------------------------------------------

    def process(self, items: Iterable[Inbound]) -> None:
        """One micro-batch. Every frame is decoded and checked at once (`decode_batch`, the
        vectorised twin of the codec); births, board alarms, status and command acks then go
        one by one, and the sample and batch frames as columns, never a dict per sample."""
        now = self.clock_ms()
        b = _Batch()
        items = list(items)
        plain = [i for i, it in enumerate(items) if it.error is None and it.offline_board is None]
        dec = batch.decode_batch([items[i].raw for i in plain], self.verifier_keys)
        frames: dict[int, codec.Frame | ProtocolError] = {}  # the one-by-one path
        for pos, exc in dec.errors.items():
            frames[plain[pos]] = exc
        for pos, frame in dec.extra.items():
            frames[plain[pos]] = frame
        sample_blocks = []
        for blk in dec.blocks:
            if blk.msg_type in ("sample", "batch"):
                sample_blocks.append(blk)
            else:
                for j, pos in enumerate(blk.index.tolist()):
                    frames[plain[pos]] = blk.frame(j)
        for i, item in enumerate(items):
            if i in frames or item.error is not None or item.offline_board is not None:
                try:
                    self._one(item, frames.get(i), b, now)
                except ProtocolError as exc:
                    self._reject(item, exc, b)
        if sample_blocks:
            self._sample_blocks(items, plain, sample_blocks, dec, b, now)
        self._finish(b, now)

    def _reject(self, item: Inbound, exc: ProtocolError, b: _Batch) -> None:
        peek = codec.peek_board(item.raw)
        self.stats.rejected[exc.reason] += 1
        b.rejected.append((item.rx_ms, item.source, exc.reason, str(exc),
                           peek[0] if peek else None, item.raw))
        b.after.append(item.on_stored)
        log.debug("rejected from %s: %s", item.source, exc)

    def _board(self, board_id: int, item: Inbound) -> BoardState:
        bs = self.boards.get(board_id)
        if bs is None:
            bs = self.boards[board_id] = BoardState(board_id, item.site)
        if item.link is not None:
            bs.link = item.link
        return bs

    def _admit(self, item: Inbound, board_id: int, boot: int, seq: int, span: int,
               msg_type: str, flags: int, b: _Batch, now: int
               ) -> tuple[BoardState, list[tuple[int, int]]] | None:
        """The bookkeeping every accepted frame gets; if the frame holds a seq neither
        committed nor earlier in this batch, its board and those new seqs (half-open
        intervals: the whole span, unless a batch frame partly overlaps), else None. Storage
        keeps no key of its own: this is where each sample is stored once."""
        new = self.delivery.check(board_id, boot, seq, span)  # raises for a replay
        bs = self._board(board_id, item)
        b.after.append(item.on_stored)
        b.touched.add(board_id)
        fields = b.board_fields.get(board_id)
        if fields is None:
            fields = b.board_fields[board_id] = {}
        fields.update(online=1, boot=max(boot, fields.get("boot", 0)),
                      link=item.source.split(":")[0], source=item.source)
        if item.rx_ms > b.seen.get(board_id, -1):
            b.seen[board_id] = item.rx_ms
        if new:
            pending = b.pending.get((board_id, boot))
            if pending is None:
                pending = b.pending[board_id, boot] = SeenSeqs()
            elif seq <= pending.highest:  # (in-order traffic never looks)
                new = [part for lo, hi in new for part in pending.missing(lo, hi)]
            for lo, hi in new:
                pending.add(lo, hi)
        if not new:
            self.stats.duplicates += 1
            return None
        b.commits.append((board_id, boot, seq, span))
        self.stats.frames[msg_type] += 1
        if msg_type in ("sample", "batch") and bs.profile is not None:
            b.report_ms[board_id] = span * bs.profile.sample_period_ms  # silence: see alarms
        return bs, new

    def _asks(self, bs: BoardState, flags: int, b: _Batch, now: int) -> None:
        """After a new frame: who is this board (no birth yet), and does it have our time."""
        if bs.profile is None and now - bs.last_rebirth_ms >= self.rebirth_every_ms:
            bs.last_rebirth_ms = now
            self.delivery.note_request(bs.board_id, now)
            b.commands.append((bs, "rebirth"))
        if not flags & codec.FLAGS["time_synced"] and now - bs.last_sync_ms >= REBIRTH_EVERY_MS:
            bs.last_sync_ms = now
            b.commands.append((bs, "time_sync"))

    def _one(self, item: Inbound, frame: codec.Frame | ProtocolError | None, b: _Batch,
             now: int) -> None:
        if item.error is not None:
            raise item.error
        if item.offline_board is not None:
            bs = self._board(item.offline_board, item)
            b.events += self.engine.on_link(bs.board_id, now, False)
            b.board_fields.setdefault(bs.board_id, {})["online"] = 0
            b.after.append(item.on_stored)
            return
        if isinstance(frame, ProtocolError):
            raise frame
        assert frame is not None
        board_id, boot, seq = frame["board_id"], frame["boot"], frame["seq"]
        msg_type = frame["msg_type"]
        if msg_type not in ("birth", "sample", "batch", "alarm", "status", "cmd_ack"):
            raise BadValue(f"a {msg_type} command frame came from the board side "
                           f"(an echo of a host's command?)")
        if msg_type == "birth":
            check_birth(frame)
        span = codec.seq_span(frame)
        admitted = self._admit(item, board_id, boot, seq, span, msg_type, frame["flags"], b,
                               now)
        if admitted is None:
            return
        bs, new = admitted
        p = frame["payload"]
        if msg_type == "birth":
            self._birth(bs, frame, item, b, now)
        elif msg_type in ("sample", "batch"):  # only what decode_batch left to the codec
            recs = [p] if msg_type == "sample" else p["samples"]
            k = len(recs)
            dt = np.array([r.get("dt_ms", 0) for r in recs], np.int64)
            s = batch.Samples(p["n_probes"], p["n_cells"], np.zeros(k, np.int64),
                              np.full(k, board_id), np.full(k, boot), seq + np.arange(k),
                              frame["ts_ms"] + dt, np.full(k, frame["flags"]),
                              {f: np.array([r[f] for r in recs]).reshape(k, -1)
                               if f in ("temps_dc", "cells_mv") else np.array([r[f] for r in recs])
                               for f in SAMPLE_FIELDS})
            rows = np.arange(k)
            if new != [(seq, seq + span)]:
                rows = rows[_within(s.seq, new)]
            self._take_samples(s, rows, np.full(len(rows), item.rx_ms), b)
        else:
            payload = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in p.items()}
            b.board_frames.append((board_id, boot, seq, frame["ts_ms"], item.rx_ms, msg_type,
                                   frame["flags"], json.dumps(payload)))
            fields = b.board_fields[board_id]
            if msg_type == "alarm" and bs.profile is not None:
                if p["event"] == "raised" and p["level"] >= 3:  # safety news never waits
                    b.events += self.engine.on_board_alarm(board_id, frame["ts_ms"], p)
                else:
                    b.alarms.setdefault(board_id, []).append((frame["ts_ms"], seq, p))
            elif msg_type == "status":
                fields["status"] = json.dumps(payload)
                fields["config_error"] = p["config_error"]
            elif msg_type == "cmd_ack" and p["result"] != "ok":
                log.warning("board %d refused a %s command: %s", board_id, p["cmd_type"],
                            p["result"])
        self._asks(bs, frame["flags"], b, now)

    def _birth(self, bs: BoardState, frame: dict, item: Inbound, b: _Batch, now: int) -> None:
        p = frame["payload"]
        row = {"chemistry": p["chemistry"],
               "cells_series": p["cells_series"], "rated_mah": p["rated_mah"],
               "max_pack_mv": p["max_pack_mv"], "max_temp_dc": p["max_temp_dc"],
               "sample_period_ms": p["sample_period_ms"], "riso_period_ms": p["riso_period_ms"],
               "n_probes": p["n_probes"], "n_cells": p["n_cells"],
               "probe_cell": json.dumps(list(p["probe_cell"])),
               "fw_version": f"{p['fw_major']}.{p['fw_minor']}.{p['fw_patch']}",
               "config_error": p["config_error"]}
        row["site"] = item.site  # a board moved to another site takes the new name
        profile = _profile({"board_id": bs.board_id, **row, "probe_cell": p["probe_cell"]})
        bs.site = item.site
        b.board_fields.setdefault(bs.board_id, {}).update(row)
        if profile != bs.profile:
            try:
                self.engine.set_profile(profile)
            except ValueError as exc:  # quarantined, not fatal: a retained birth comes back
                raise BadValue(f"board {bs.board_id}: birth refused: {exc}") from None
            bs.profile = profile
            self._bind_units(bs)
            log.info("board %d: %s, %d cells in series, %.1f Ah, %d probes, %d cell voltages "
                     "(fw %s) via %s", bs.board_id, p["chemistry"], p["cells_series"],
                     p["rated_mah"] / 1000, p["n_probes"], p["n_cells"], row["fw_version"],
                     item.source)
        if p["config_error"]:
            log.warning("board %d reports config error code %d", bs.board_id, p["config_error"])
        if now - bs.last_sync_ms >= 1000:  # a (re)born board gets our clock
            bs.last_sync_ms = now
            b.commands.append((bs, "time_sync"))

    def _sample_blocks(self, items: list[Inbound], plain: list[int],
                       blocks: list[batch.Block], dec: batch.DecodedBatch, b: _Batch,
                       now: int) -> None:
        """Sample and batch frames: the per-frame bookkeeping, then their samples as columns
        (storage rows, the alarm engine's runs and the estimator's rows by board)."""
        fresh: list[int] = []  # positions in `plain` of the frames that are new
        partly: dict[int, list[tuple[int, int]]] = {}  # of those, the ones partly new
        for blk in blocks:
            hdr = blk.header
            span = 1 if blk.msg_type == "sample" else max(1, blk.counts["n_samples"])
            for pos, board_id, boot, seq, flags in zip(
                    blk.index.tolist(), hdr["board_id"].tolist(), hdr["boot"].tolist(),
                    hdr["seq"].tolist(), hdr["flags"].tolist(), strict=True):
                item = items[plain[pos]]
                try:
                    admitted = self._admit(item, board_id, boot, seq, span, blk.msg_type,
                                           flags, b, now)
                except ProtocolError as exc:
                    self._reject(item, exc, b)
                    continue
                if admitted is not None:
                    bs, new = admitted
                    fresh.append(pos)
                    if new != [(seq, seq + span)]:
                        partly[pos] = new
                    self._asks(bs, flags, b, now)
        if not fresh:
            return
        rx_of = np.zeros(len(plain), np.int64)
        rx_of[fresh] = [items[plain[pos]].rx_ms for pos in fresh]
        take = np.zeros(len(plain), bool)
        take[fresh] = True
        for s in dec.samples():
            rows = np.flatnonzero(take[s.frame])
            for pos, new in partly.items():  # (rare: a sender that re-frames its backlog)
                mine = s.frame[rows] == pos
                if mine.any():
                    keep = ~mine
                    keep[mine] = _within(s.seq[rows[mine]], new)
                    rows = rows[keep]
            if len(rows):
                self._take_samples(s, rows, rx_of[s.frame[rows]], b)

    def _take_samples(self, s: batch.Samples, rows: np.ndarray, rx_ms: np.ndarray,
                      b: _Batch) -> None:
        """Samples of one layout as columns: the storage rows of them all, then a run per
        known board for the alarm engine and the estimator (unknown boards' samples are
        stored, not evaluated)."""
        k = len(rows)
        cols = {name: s.columns[name][rows] for name in SAMPLE_FIELDS}
        cols["temps_dc"] = np.ascontiguousarray(cols["temps_dc"], "<i2").reshape(k, -1)
        cols["cells_mv"] = np.ascontiguousarray(cols["cells_mv"], "<u2").reshape(k, -1)
        board = s.board_id[rows]
        ts, seq = s.ts_ms[rows].astype(np.int64), s.seq[rows].astype(np.int64)
        row_cols: dict[str, list[Any]] = {
            "board_id": board.tolist(), "boot": s.boot[rows].tolist(), "seq": seq.tolist(),
            "ts_ms": ts.tolist(), "rx_ms": rx_ms.tolist(), "flags": s.flags[rows].tolist(),
            # the blobs of storage.temps_blob
            "temps_dc": [t.tobytes() for t in cols["temps_dc"]],
            "cells_mv": [c.tobytes() for c in cols["cells_mv"]]}
        b.samples.extend(zip(*(row_cols[c] if c in row_cols else cols[c].tolist()
                               for c in SAMPLE_COLUMNS), strict=True))
        self.stats.samples += k
        # runs: the columns in board order once, then each board's slice (views)
        order = np.argsort(board, kind="stable")
        board, ts, seq = board[order], ts[order], seq[order]
        cols = {name: v[order] for name, v in cols.items()}
        cuts = np.flatnonzero(board[1:] != board[:-1]) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), k], strict=True):
            bs = self.boards[int(board[lo])]
            if bs.profile is not None:
                b.runs.setdefault(bs.board_id, []).append(
                    (ts[lo:hi], seq[lo:hi], {name: v[lo:hi] for name, v in cols.items()}))

    # -- evaluation in board-time order --------------------------------------------------------

    def _evaluate(self, b: _Batch, now: int) -> None:
        """Alarm engine and estimator for what this batch brought, and for what was held
        behind a gap that has now filled or stalled (see HOLD_STALL_MS)."""
        for board_id in b.runs.keys() | b.alarms.keys():
            bs = self.boards[board_id]
            bs.held_runs += b.runs.get(board_id, [])
            bs.held_alarms += b.alarms.get(board_id, [])
            if bs.held_since_ms is None:
                bs.held_since_ms = now
        gap_progress: dict[int, int] = {}  # per board with an open gap: its latest progress
        for (board, _), gaps in self.delivery.gaps.items():
            for g in gaps:
                gap_progress[board] = max(gap_progress.get(board, g.progress_ms), g.progress_ms)
        plan: list[tuple[BoardState, np.ndarray, dict[str, np.ndarray]]
                   | tuple[BoardState, int, dict[str, Any]]] = []
        for bs in self.boards.values():
            if not (bs.held_runs or bs.held_alarms) or self._holding(bs, now, gap_progress):
                continue
            runs, alarms = bs.held_runs, bs.held_alarms
            bs.held_runs, bs.held_alarms, bs.held_since_ms = [], [], None
            self._plan_board(bs, runs, alarms, plan, b)
        self._start_estimator(b)  # the samples it needs are known now: it runs meanwhile
        # the runs between board alarm frames go to the engine together (on_runs screens a
        # fleet's one-sample runs at once), in the plan's order
        runs_now: list[tuple[int, np.ndarray, dict[str, np.ndarray]]] = []
        for bs, when, what in plan:
            if isinstance(when, np.ndarray):
                runs_now.append((bs.board_id, when, what))
                continue
            b.events += self.engine.on_runs(runs_now)
            runs_now = []
            b.events += self.engine.on_board_alarm(bs.board_id, when, what)
        b.events += self.engine.on_runs(runs_now)
        for board_id, rx_ms in b.seen.items():
            b.events += self.engine.on_heard(board_id, rx_ms, b.report_ms.get(board_id))

    def _plan_board(self, bs: BoardState, runs: list[_Run],
                    alarms: list[tuple[int, int, dict[str, Any]]], plan: list[Any],
                    b: _Batch) -> None:
        """A board's samples (in runs) and board alarm frames, in (ts, seq) order, onto the
        plan: (bs, ts_ms array, columns) for samples, (bs, ts_ms, payload) for an alarm."""
        shapes = {(r[2]["temps_dc"].shape[1], r[2]["cells_mv"].shape[1]) for r in runs}
        if len(shapes) > 1:  # the board changed its probes or cells: one run at a time
            for run in runs:
                self._plan_board(bs, [run], [], plan, b)
            runs = []
        if not runs:
            ts = seq = np.zeros(0, np.int64)
            cols = {}
        else:
            if len(runs) == 1:
                ts, seq, cols = runs[0]
            else:
                ts = np.concatenate([r[0] for r in runs])
                seq = np.concatenate([r[1] for r in runs])
                cols = {k: np.concatenate([r[2][k] for r in runs]) for k in runs[0][2]}
            # (a board's few samples of a micro-batch, the common case at a high fleet rate,
            # are checked in Python: numpy's per-call cost was a tenth of a live daemon's
            # thread at 10 Hz, whose backlog's batches hold a couple of frames per board)
            few = len(ts) <= _FEW
            unordered = (any(b < a for a, b in pairwise(ts.tolist())) if few
                         else bool((np.diff(ts) < 0).any()))
            if len(runs) > 1 or unordered:
                order = np.lexsort((seq, ts))
                ts, seq, cols = ts[order], seq[order], {k: v[order] for k, v in cols.items()}
            # newer than what was evaluated, one per time stamp (older: a re-send too late)
            if few:
                tl = ts.tolist()
                newer = [t > bs.last_ts_ms and (i == 0 or t > tl[i - 1])
                         for i, t in enumerate(tl)]
                keep = None if all(newer) else np.array(newer)
            else:
                keep = ts > np.maximum(bs.last_ts_ms, np.r_[bs.last_ts_ms, ts[:-1]])
                keep = None if keep.all() else keep
            if keep is not None:
                ts, seq, cols = ts[keep], seq[keep], {k: v[keep] for k, v in cols.items()}
        start = 0
        for a_ts, a_seq, payload in sorted(alarms, key=lambda a: (a[0], a[1])):
            end = int(np.count_nonzero((ts < a_ts) | ((ts == a_ts) & (seq < a_seq))))
            self._plan_run(bs, ts[start:end], {k: v[start:end] for k, v in cols.items()},
                           plan, b)
            start = max(start, end)
            plan.append((bs, a_ts, payload))
        if start == 0:
            self._plan_run(bs, ts, cols, plan, b)
        else:
            self._plan_run(bs, ts[start:], {k: v[start:] for k, v in cols.items()}, plan, b)

    @staticmethod
    def _plan_run(bs: BoardState, ts: np.ndarray, cols: dict[str, np.ndarray],
                  plan: list[Any], b: _Batch) -> None:
        if not len(ts):
            return
        bs.last_ts_ms = int(ts[-1])
        plan.append((bs, ts, cols))
        b.soh.append((bs, ts, cols))

    @staticmethod
    def _holding(bs: BoardState, now: int, gap_progress: dict[int, int]) -> bool:
        if bs.held_since_ms is None or now - bs.held_since_ms >= HOLD_MAX_MS:
            return False
        progress = gap_progress.get(bs.board_id)
        return progress is not None and now - progress < HOLD_STALL_MS

    # -- state of health -----------------------------------------------------------------------

    def _start_estimator(self, b: _Batch) -> None:
        """One SohBank.update for the batch, its rows built from the runs' columns, the runs
        of one shape together (a thousand boards' runs of two samples each cost a thousand
        times numpy's per-call overhead otherwise). The row builder and the estimator's
        kernel are compiled and release the GIL: a large batch runs them on the estimator's
        thread, beside the storage of the same batch; _take_estimates waits for them."""
        if not b.soh:
            return
        last_ts: dict[int, int] = {}
        groups: dict[tuple[bool, int, int], list[tuple[BoardState, np.ndarray,
                                                       dict[str, np.ndarray]]]] = {}
        for bs, ts, cols in b.soh:
            last_ts[bs.board_id] = max(last_ts.get(bs.board_id, 0), int(ts[-1]))
            n = len(bs.units)
            if bs.per_cell and cols["cells_mv"].shape[1] != n:
                continue  # from before a profile change
            shape = (bs.per_cell, n, cols["temps_dc"].shape[1])
            groups.setdefault(shape, []).append((bs, ts, cols))
        total = sum(len(ts) * n for (_, n, _), runs in groups.items() for _, ts, _ in runs)
        unit = np.empty(total, np.int64)
        t_s, cell_v, current_a, temp_c = (np.empty(total) for _ in range(4))
        jobs = []
        for (per_cell, n, n_probes), runs in groups.items():
            k_of = [len(ts) for _, ts, _ in runs]
            if per_cell:
                volt = np.concatenate([c["cells_mv"] for _, _, c in runs])
                mark, series = MARKS["cells_mv"], np.ones(len(volt))
            else:
                volt = np.concatenate([c["pack_mv"] for _, _, c in runs])[:, None]
                mark = MARKS["pack_mv"]
                series = np.repeat([float(bs.profile.cells_series) if bs.profile else 1.0
                                    for bs, _, _ in runs], k_of)
            probe = (np.stack([bs.cell_probe[:n] for bs, _, _ in runs])
                     if per_cell and n_probes else np.full((len(runs), n), -1, np.int64))
            jobs.append((np.concatenate([ts for _, ts, _ in runs]),
                         np.concatenate([c["current_ma"] for _, _, c in runs]),
                         volt, mark, series,
                         np.concatenate([c["temps_dc"] for _, _, c in runs]),
                         np.repeat(np.arange(len(runs)), k_of),
                         np.stack([bs.units for bs, _, _ in runs]), probe))

        def work() -> int:
            at = 0
            for job in jobs:
                at = fill_rows(*job, unit, t_s, cell_v, current_a, temp_c, at,
                               MARKS["current_ma"], MARKS["temps_dc"])
            if at:
                self.soh.update(unit[:at], t_s[:at], cell_v[:at], current_a[:at],
                                temp_c[:at])
            return at

        if total >= SOH_THREAD_ROWS:
            job = self._soh_thread.submit(work)
        else:  # a small batch: not worth a thread's hand-over
            job = Future()
            job.set_result(work())
        b.soh_job = (job, unit, last_ts)

    def _take_estimates(self, b: _Batch) -> None:
        """Waits for the batch's estimator update, then the estimates worth a row (and the
        alarm engine's view of capacity fade and resistance growth)."""
        if b.soh_job is None:
            return
        job, unit, last_ts = b.soh_job
        b.soh_job = None
        rows = job.result()  # an error in the kernel is raised here, on the processor's thread
        if not rows:
            return
        unit = unit[:rows]
        seen = np.zeros(len(self.unit_board), bool)  # np.unique sorts: this is O(n)
        seen[unit] = True
        touched = np.flatnonzero(seen)
        board_of = self.unit_board[touched]
        # each unit's board's newest sample time (the boards sorted, looked up in numpy)
        ids = np.fromiter(last_ts.keys(), np.int64, len(last_ts))
        stamps_of = np.fromiter(last_ts.values(), np.int64, len(last_ts))
        order = np.argsort(ids)
        pos = np.minimum(np.searchsorted(ids[order], board_of), len(ids) - 1)
        last = np.where(ids[order][pos] == board_of, stamps_of[order][pos], -1)
        updates = self.soh.capacity_updates(touched)
        changed = updates != self.unit_updates[touched]
        # a row when the capacity estimate moved, else one per estimate_every_ms per unit
        due = (board_of >= 0) & (last >= 0) & (
            changed | (last - self.unit_stored_ms[touched] >= self.estimate_every_ms))
        if not due.any():
            return
        pick = np.flatnonzero(due)
        units = touched[pick]
        self.unit_updates[units] = updates[pick]
        self.unit_stored_ms[units] = last[pick]
        est = self.soh.estimates(units)  # only the rows to store: the RUL fits are not free
        keys = ("soc_pct", "capacity_ah", "capacity_sigma_ah", "soh_pct", "soh_sigma_pct",
                "r0_mohm", "r0_sigma_mohm", "r0_growth_pct", "rul_days", "rul_efc", "efc")
        # NaN (no estimate yet) is stored as NULL; x == x is False only for NaN, and costs
        # 17 ns a value where np.isnan on a Python float costs 400 (11 values a row)
        values = [[x if x == x else None for x in est[k].tolist()] for k in keys]
        cells = self.unit_cell[units].tolist()
        boards, stamps = board_of[pick].tolist(), last[pick].tolist()
        b.estimates += zip(boards, cells, stamps, *values, strict=True)
        for j in np.flatnonzero(changed[pick]).tolist():  # the alarm engine: moved ones only
            board, cell, ts = boards[j], cells[j], stamps[j]
            soh, growth = values[3][j], values[7][j]
            if soh is not None and growth is not None:
                b.events += self.engine.on_estimate(
                    board, ts, soh, growth, "cell" if cell >= 0 else "pack", max(cell, 0))

    # -- commit, then acknowledge --------------------------------------------------------------

    def _finish(self, b: _Batch, now: int) -> None:
        # the delivery bookkeeping first (in memory; the transaction below makes it durable,
        # and a failed commit ends the process), so that evaluation knows the gaps
        gap_changes: list[GapChange] = []
        touched_boots = set()
        for board_id, boot, seq, span in b.commits:
            gap_changes += self.delivery.commit(board_id, boot, seq, span, now)
            touched_boots.add((board_id, boot))
        gap_changes += self.delivery.settle(now)
        self._evaluate(b, now)
        st = self.storage
        with st.transaction():
            st.insert_samples(b.samples)  # (the estimator's thread works meanwhile)
            st.insert_board_frames(b.board_frames)
            st.insert_rejected(b.rejected)
            self._take_estimates(b)
            st.insert_estimates(b.estimates)
            st.upsert_boards([(board_id, b.seen.get(board_id, now),
                               self.boards[board_id].unstored(fields))
                              for board_id, fields in b.board_fields.items()])
            self._save_seq_ranges(touched_boots)
            self._record_gaps(gap_changes, b, now)
            if b.events:
                st.write_alarm_events(b.events, now)
                self._save_moved(now)
        self.stats.commits += 1
        for done in b.after:
            if done is not None:
                done()
        for bs, what in b.commands:
            self._command(bs, what)
        self._request_resends(b.touched, now)
        self._send_acks(b.touched | {c.board_id for c in gap_changes}, now)
        if b.events and self.notify is not None:
            self.notify(b.events)
        self._save_slice(now)

    def _save_seq_ranges(self, boots: set[tuple[int, int]]) -> None:
        """The committed intervals of these boots. In-order traffic only moves the newest
        one's end: one UPDATE, instead of the boot's rows deleted and written again."""
        window = self.delivery.window
        reshaped = boots & self.delivery.take_reshaped()
        moved = []
        for board_id, boot in boots - reshaped:
            newest = window.newest(board_id, boot)
            if newest is None:  # a boot the window forgot (a ninth boot came): its rows go
                reshaped.add((board_id, boot))
            else:
                moved.append((board_id, boot, *newest))
        if self.storage.move_seq_range_ends(moved) != len(moved):  # (a row edited away)
            reshaped = boots
        self.storage.save_seq_ranges_many([(board_id, boot, window.intervals(board_id, boot))
                                           for board_id, boot in reshaped])

    def _record_gaps(self, changes: list[GapChange], b: _Batch, now: int) -> None:
        for c in changes:
            g = c.gap
            if c.outcome == "opened":
                self.stats.gaps_opened += 1
                self.storage.open_gap(c.board_id, c.boot, g.lo, g.hi, now)
            else:
                self.storage.close_gap(c.board_id, c.boot, g.lo, c.outcome, now)
                if c.outcome == "lost":
                    self.stats.gaps_lost += 1
                    self.stats.seqs_lost += g.hi - g.lo
                    log.warning("board %d boot %d: seqs %d..%d never arrived; given up",
                                c.board_id, c.boot, g.lo, g.hi - 1)
                    b.events += self.engine.on_seq_gap(c.board_id, now, g.hi - g.lo)

    def _save_state(self, now: int) -> None:
        """All of it (a clean stop, an operator's action)."""
        self._save_soh(now, range(self._soh_parts()))
        self.engine.take_dirty()
        self._save_alarm_parts(self.engine.boards(), now)

    def _save_moved(self, now: int) -> None:
        """In the caller's transaction, with its alarm events: the boards they moved (the
        saved state then knows every alarm id the database holds)."""
        if self.state_every_ms <= STATE_EVERY_MS:
            self._save_alarm_parts(self.engine.take_dirty(), now)

    def _save_slice(self, now: int, late_ms: int = 0) -> None:
        """Every state_every_ms / STATE_SLICES a tenth of the state: the next slice of the
        boards' alarm parts and of the estimator's unit parts, so that all of it is saved
        once per state_every_ms and no transaction carries the whole fleet's. In a
        transaction of its own, after the batch's acks and alarms went out. late_ms: only
        when that much overdue (the tick leaves the slices to the micro-batches while they
        come: a tick that also saved one stalled ~30 ms at once under the latency load)."""
        if now - self._slice_saved_ms < self.state_every_ms // STATE_SLICES + late_ms:
            return
        self._slice_saved_ms = now
        k, self._slice = self._slice, (self._slice + 1) % STATE_SLICES
        with self.storage.transaction():
            self._save_alarm_parts(self.engine.boards()[k::STATE_SLICES], now)
            self._save_soh(now, range(k, self._soh_parts(), STATE_SLICES))

    def _soh_parts(self) -> int:
        return -(-len(self.soh) // SOH_PART_UNITS)

    def _save_soh(self, now: int, parts: Iterable[int]) -> None:
        """The estimator's settings and unit count ("soh") and the given parts of its units
        (SOH_PART + k: units k*SOH_PART_UNITS.., their state and what they belong to)."""
        def npz(**arrays: np.ndarray) -> bytes:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return buf.getvalue()

        rows = []
        for k in parts:
            lo, hi = k * SOH_PART_UNITS, (k + 1) * SOH_PART_UNITS
            rows.append((f"{SOH_PART}{k}", npz(
                s=self.soh.state(lo, hi)["s"], _unit_board=self.unit_board[lo:hi],
                _unit_cell=self.unit_cell[lo:hi], _unit_updates=self.unit_updates[lo:hi],
                _unit_stored_ms=self.unit_stored_ms[lo:hi])))
        if not rows:
            return
        empty = np.zeros(0, np.int64)
        rows.append(("soh", npz(**self.soh.state(0, 0), _n_units=np.array(len(self.soh)),
                                _unit_board=empty, _unit_cell=empty, _unit_updates=empty,
                                _unit_stored_ms=empty)))
        self.storage.save_states(rows, now)

    def _save_alarm_parts(self, boards: Iterable[int], now: int) -> None:
        """The alarm engine's id counter and the given boards' parts. After an alarm event
        only the boards whose alarms moved: the database then never holds an alarm the
        saved state does not know (a restart would reuse its id)."""
        st = self.storage
        st.save_state("alarms", json.dumps(self.engine.head_state()).encode(), now)
        st.save_states([(f"{ALARM_PART}{board}", json.dumps(self.engine.board_state(board))
                         .encode()) for board in boards], now)

    def _command(self, bs: BoardState, what: str, *args: Any) -> bool:
        if bs.link is None:
            return False
        try:
            frame = getattr(self.commands, what)(bs.board_id, *args)
        except CommandError as exc:
            log.error("board %d: %s", bs.board_id, exc)
            return False
        ok = bs.link.send_command(bs.board_id, bs.site, frame)
        if ok:
            self.stats.commands_sent += 1
        else:
            self.stats.commands_failed += 1
        return ok

    def _request_resends(self, boards: Iterable[int], now: int) -> None:
        """A board with a gap we have not asked about gets a rebirth: its birth, then every
        frame it has not had acknowledged. Paced, since each one re-sends the whole store."""
        for board_id in boards:
            bs = self.boards.get(board_id)
            if bs is None or now - bs.last_rebirth_ms < self.rebirth_every_ms or \
                    not self.delivery.needs_request(board_id):
                continue
            if self._command(bs, "rebirth"):
                bs.last_rebirth_ms = now
                self.delivery.note_request(board_id, now)

    def _send_acks(self, boards: Iterable[int], now: int) -> None:
        for board_id in boards:
            bs = self.boards.get(board_id)
            if bs is None or now - bs.last_ack_ms < ACK_EVERY_MS:
                continue
            point = self.delivery.ack_point(board_id, now)
            if point is None or point == bs.last_ack:
                continue
            if self._command(bs, "ack", *point):
                bs.last_ack = point
                bs.last_ack_ms = now

    # -- periodic work (the daemon calls this about once a second) -----------------------------

    def tick(self, heard_until_ms: int | None = None) -> None:
        """heard_until_ms: the receive time of the oldest frame still waiting in the
        daemon's queue (it is behind): no board is silent for want of what it holds."""
        now = self.clock_ms()
        b = _Batch()
        changes = self.delivery.settle(now)
        self._evaluate(b, now)  # what a stalled gap held back
        self._take_estimates(b)  # (nothing to overlap here: wait for the estimator now)
        events = b.events + self.engine.tick(now, heard_until_ms)
        b.events = []
        actions = self.storage.pending_actions()
        results = [(i, self._apply(action, args, actor, now, events))
                   for i, action, args, actor in actions]
        with self.storage.transaction():
            self.storage.insert_estimates(b.estimates)
            self._record_gaps(changes, b, now)
            events += b.events
            for i, result in results:
                self.storage.finish_action(i, result, now)
            if events:
                self.storage.write_alarm_events(events, now)
            # an operator's action may change what no event shows (a board back in service
            # with nothing open): the whole state
            if results:
                self._save_state(now)
            elif events:
                self._save_moved(now)
        for bs, what in b.commands:
            self._command(bs, what)
        self._request_resends(self.delivery.gapped_boards(), now)
        self._send_acks(list(self.boards), now)
        for bs in self.boards.values():
            if bs.link is not None and now - bs.last_sync_ms >= TIME_SYNC_EVERY_MS:
                bs.last_sync_ms = now  # clocks drift: re-sync hourly
                self._command(bs, "time_sync")
        if events and self.notify is not None:
            self.notify(events)
        self._save_slice(now, late_ms=self.state_every_ms // STATE_SLICES)

    def _apply(self, action: str, args: dict[str, Any], actor: str, now: int,
               events: list[AlarmEvent]) -> str:
        try:
            if action == "ack":
                events += self.engine.acknowledge(int(args["alarm_id"]), now, actor,
                                                  args.get("note"))
            elif action == "shelve":
                events += self.engine.shelve(int(args["alarm_id"]), int(args["until_ms"]), now,
                                             actor, args.get("note"))
            elif action == "unshelve":
                events += self.engine.unshelve(int(args["alarm_id"]), now, actor)
            elif action == "command":
                return self._operator_command(args)
            elif action == "service":
                board_id = int(args["board_id"])
                events += self.engine.set_in_service(board_id, bool(args["in_service"]), now,
                                                     actor)
                with self.storage.transaction():
                    self.storage.db.execute("UPDATE boards SET in_service = ? WHERE board_id = ?",
                                            (int(bool(args["in_service"])), board_id))
            else:
                return f"error: unknown action {action!r}"
        except (KeyError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            return f"error: {msg}"
        return "ok"

    def _operator_command(self, args: dict[str, Any]) -> str:
        """A command an operator asked for (`packsentry send`), to the board's last link."""
        board_id = int(args["board_id"])
        bs = self.boards.get(board_id)
        if bs is None or bs.link is None:
            return f"error: board {board_id} has not been heard from since the daemon started"
        what = args["command"]
        extra: tuple[Any, ...] = ()
        if what == "config_update":
            # the board ignores versions older than its own: seconds since the epoch only grow
            extra = (self.clock_ms() // 1000, args["config"])
        elif what == "reboot":
            extra = (int(args.get("delay_ms", 1000)),)
        elif what not in ("rebirth", "time_sync"):
            return f"error: unknown command {what!r}"
        if what in MUST_SIGN and board_id not in self.verifier_keys:
            return (f"error: {what} must be signed and the daemon has no key for board "
                    f"{board_id} (add it under [keys])")
        if not self._command(bs, what, *extra):
            return f"error: the {bs.link.name} link did not take the command"
        return "ok"

    def save(self) -> None:
        """Persist estimator and alarm state now (clean shutdown)."""
        with self.storage.transaction():
            self._save_state(self.clock_ms())


@dataclass
class _Batch:
    samples: list[tuple] = field(default_factory=list)
    board_frames: list[tuple] = field(default_factory=list)
    rejected: list[tuple] = field(default_factory=list)
    estimates: list[tuple] = field(default_factory=list)
    events: list[AlarmEvent] = field(default_factory=list)
    after: list[Callable[[], None] | None] = field(default_factory=list)
    commands: list[tuple[BoardState, str]] = field(default_factory=list)
    commits: list[tuple[int, int, int, int]] = field(default_factory=list)
    pending: dict[tuple[int, int], SeenSeqs] = field(default_factory=dict)  # seqs admitted
    touched: set[int] = field(default_factory=set)
    board_fields: dict[int, dict[str, Any]] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    soh: list[tuple[BoardState, np.ndarray, dict[str, np.ndarray]]] = field(
        default_factory=list)
    # per board, for the alarm engine: sample runs, and board alarm frames (ts, seq, payload)
    runs: dict[int, list[_Run]] = field(default_factory=dict)
    alarms: dict[int, list[tuple[int, int, dict[str, Any]]]] = field(default_factory=dict)
    report_ms: dict[int, int] = field(default_factory=dict)  # per board: its newest frame's span
    # the estimator's update under way: (its result, rows used, per board its newest time)
    soh_job: tuple[Future[int], np.ndarray, dict[int, int]] | None = None


def _within(seqs: np.ndarray, intervals: list[tuple[int, int]]) -> np.ndarray:
    """Which seqs lie in one of the half-open intervals."""
    inside = np.zeros(len(seqs), bool)
    for lo, hi in intervals:
        inside |= (seqs >= lo) & (seqs < hi)
    return inside


def _profile(b: dict[str, Any]) -> BoardProfile:
    probe_cell = b["probe_cell"]
    if isinstance(probe_cell, str):
        probe_cell = json.loads(probe_cell)
    return BoardProfile(board_id=b["board_id"], site=b["site"], chemistry=b["chemistry"],
                        cells_series=b["cells_series"], rated_mah=b["rated_mah"],
                        max_pack_mv=b["max_pack_mv"], max_temp_dc=b["max_temp_dc"],
                        sample_period_ms=b["sample_period_ms"],
                        riso_period_ms=b["riso_period_ms"] or 0, n_probes=b["n_probes"],
                        n_cells=b["n_cells"], probe_cell=tuple(probe_cell))
