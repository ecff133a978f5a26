"""SQLite storage: every measurement, the boards, estimates, alarms with their audit log, and
the frames that were rejected.

One writer (the daemon's processor) in WAL mode, so the operator CLI reads while it writes.
The processor writes a whole micro-batch in one transaction and acknowledges frames only
after `commit` returns: with `synchronous=FULL` (the default) an acknowledged frame survives a
crash and a power cut.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[i]` takes version i to i + 1
and runs in one transaction, so an upgrade is all or nothing. Add a migration, never edit one.

Samples keep their arrays as little-endian blobs (int16 probe temperatures in 0.1 degC,
uint16 cell voltages in mV): a 96-cell sample is about 250 bytes instead of 96 rows.
"""

from __future__ import annotations

import json
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

# the samples' columns as migration 1 made them and migration 3 makes them again (part of
# those migrations: never edit)
_V1_SAMPLE_COLUMNS = """board_id INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL, rx_ms INTEGER NOT NULL, flags INTEGER NOT NULL,
        pack_mv INTEGER NOT NULL, current_ma INTEGER NOT NULL,
        riso_pos_kohm INTEGER NOT NULL, riso_neg_kohm INTEGER NOT NULL,
        alarm_level INTEGER NOT NULL, alarm_flags INTEGER NOT NULL,
        temps_dc BLOB NOT NULL, cells_mv BLOB NOT NULL"""
# the estimates' columns as migration 2 makes them (part of that migration: never edit)
_V2_ESTIMATE_COLUMNS = """board_id INTEGER NOT NULL, unit INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    soc_pct REAL, capacity_ah REAL, capacity_sigma_ah REAL, soh_pct REAL, soh_sigma_pct REAL,
    r0_mohm REAL, r0_sigma_mohm REAL, r0_growth_pct REAL, rul_days REAL, rul_efc REAL, efc REAL"""
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE boards (
        board_id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        chemistry TEXT, cells_series INTEGER, rated_mah INTEGER, max_pack_mv INTEGER,
        max_temp_dc INTEGER, sample_period_ms INTEGER, riso_period_ms INTEGER,
        n_probes INTEGER, n_cells INTEGER, probe_cell TEXT, fw_version TEXT,
        config_error INTEGER, boot INTEGER,
        link TEXT, source TEXT,
        first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
        online INTEGER NOT NULL DEFAULT 1,
        in_service INTEGER NOT NULL DEFAULT 1,
        status TEXT
    );
    CREATE TABLE samples (
        {_V1_SAMPLE_COLUMNS},
        PRIMARY KEY (board_id, boot, seq)
    ) WITHOUT ROWID;
    CREATE INDEX samples_time ON samples (board_id, ts_ms);
    CREATE TABLE samples_downsampled (
        board_id INTEGER NOT NULL, bucket_ms INTEGER NOT NULL, span_ms INTEGER NOT NULL,
        n INTEGER NOT NULL,
        pack_mv_min INTEGER, pack_mv_avg REAL, pack_mv_max INTEGER,
        current_ma_min INTEGER, current_ma_avg REAL, current_ma_max INTEGER,
        riso_min_kohm INTEGER, alarm_level_max INTEGER,
        PRIMARY KEY (board_id, bucket_ms)
    ) WITHOUT ROWID;
    CREATE TABLE board_frames (
        board_id INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL, rx_ms INTEGER NOT NULL, msg_type TEXT NOT NULL,
        flags INTEGER NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (board_id, boot, seq)
    ) WITHOUT ROWID;
    CREATE TABLE seq_ranges (
        board_id INTEGER NOT NULL, boot INTEGER NOT NULL, lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        PRIMARY KEY (board_id, boot, lo)
    ) WITHOUT ROWID;
    CREATE TABLE gaps (
        board_id INTEGER NOT NULL, boot INTEGER NOT NULL, lo INTEGER NOT NULL,
        hi INTEGER NOT NULL, detected_ms INTEGER NOT NULL, closed_ms INTEGER,
        outcome TEXT,
        PRIMARY KEY (board_id, boot, lo)
    ) WITHOUT ROWID;
    CREATE TABLE estimates (
        board_id INTEGER NOT NULL, unit INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
        soc_pct REAL, capacity_ah REAL, capacity_sigma_ah REAL, soh_pct REAL,
        soh_sigma_pct REAL, r0_mohm REAL, r0_sigma_mohm REAL, r0_growth_pct REAL,
        rul_days REAL, rul_efc REAL, efc REAL,
        PRIMARY KEY (board_id, unit, ts_ms)
    ) WITHOUT ROWID;
    CREATE TABLE alarms (
        alarm_id INTEGER PRIMARY KEY, board_id INTEGER NOT NULL, site TEXT NOT NULL,
        rule TEXT NOT NULL, subject TEXT NOT NULL, subject_index INTEGER NOT NULL,
        level INTEGER NOT NULL, state TEXT NOT NULL, source TEXT NOT NULL,
        value REAL, threshold REAL, unit TEXT, message TEXT NOT NULL, action TEXT NOT NULL,
        raised_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
    );
    CREATE INDEX alarms_state ON alarms (state, board_id);
    CREATE TABLE alarm_audit (
        id INTEGER PRIMARY KEY, alarm_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
        event TEXT NOT NULL, level INTEGER NOT NULL, prev_level INTEGER NOT NULL,
        state TEXT NOT NULL, value REAL, threshold REAL, actor TEXT, note TEXT,
        message TEXT NOT NULL, logged_ms INTEGER NOT NULL
    );
    CREATE INDEX alarm_audit_alarm ON alarm_audit (alarm_id, id);
    CREATE TABLE rejected (
        id INTEGER PRIMARY KEY, rx_ms INTEGER NOT NULL, source TEXT NOT NULL,
        reason TEXT NOT NULL, message TEXT NOT NULL, board_id INTEGER, raw BLOB NOT NULL
    );
    CREATE TABLE engine_state (name TEXT PRIMARY KEY, saved_ms INTEGER NOT NULL,
                               value BLOB NOT NULL);
    CREATE TABLE operator_actions (
        id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, action TEXT NOT NULL,
        args TEXT NOT NULL, actor TEXT NOT NULL, applied_ms INTEGER, result TEXT
    );
    """,
    # 1 -> 2: estimates keyed by time within a board. Keyed (board, unit, time), each unit's
    # rows were a run of their own, so a round of estimates wrote one row into each unit's
    # run: once a day's rows filled a page per unit, a fleet's round dirtied a page per
    # unit (9 600 for 100 packs of 96 cells) and its insert and commit cost grew with the
    # table (a day's replay of that fleet: 0.4 -> 1.4 us a sample, the commit as much
    # again). Keyed (board, time, unit), a round is one run per board. The newest row per
    # unit, which the old key found at once, is kept in estimates_latest.
    f"""
    CREATE TABLE estimates_by_time ({_V2_ESTIMATE_COLUMNS},
                                    PRIMARY KEY (board_id, ts_ms, unit)) WITHOUT ROWID;
    INSERT INTO estimates_by_time SELECT * FROM estimates;
    CREATE TABLE estimates_latest ({_V2_ESTIMATE_COLUMNS},
                                   PRIMARY KEY (board_id, unit)) WITHOUT ROWID;
    INSERT INTO estimates_latest
        SELECT e.* FROM estimates e JOIN (SELECT board_id, unit, max(ts_ms) AS t
                                          FROM estimates GROUP BY board_id, unit) last
        ON e.board_id = last.board_id AND e.unit = last.unit AND e.ts_ms = last.t;
    DROP TABLE estimates;
    ALTER TABLE estimates_by_time RENAME TO estimates;
    """,
    # 2 -> 3: samples in arrival order (a rowid table), their key a unique index. Keyed by
    # (board, boot, seq), a fleet's new rows landed inside every board's run of the table, and
    # each full leaf page split by redistributing ~250-byte rows among its neighbours; rows
    # appended at the table's end take SQLite's cheap path, and only the two small index
    # entries land inside the boards' runs (a micro-batch of 30 000 96-cell rows on disk:
    # 7.2 -> 5.3 us a row). A board's time range is read through samples_time.
    f"""
    CREATE TABLE samples_by_arrival ({_V1_SAMPLE_COLUMNS});
    INSERT INTO samples_by_arrival SELECT * FROM samples ORDER BY rx_ms;
    DROP TABLE samples;
    ALTER TABLE samples_by_arrival RENAME TO samples;
    CREATE UNIQUE INDEX samples_key ON samples (board_id, boot, seq);
    CREATE INDEX samples_time ON samples (board_id, ts_ms);
    """,
    # 3 -> 4: no key index on samples. Both indexes are ordered by board, so once the table
    # has grown each board's newest entries sit on pages of their own, and a commit of one
    # sample from each of many boards rewrote two index pages a sample (at 10 Hz from 1 000
    # boards, in 150-frame micro-batches, after 400 000 frames: 20.6 -> 10.8 KiB written a
    # frame, 126-137 -> 93-105 us a frame). The processor stores each (board, boot, seq) once
    # instead: it knows which seqs are committed (seq_ranges, written in the same transaction
    # as the samples).
    """
    DROP INDEX samples_key;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

SAMPLE_COLUMNS = ("board_id", "boot", "seq", "ts_ms", "rx_ms", "flags", "pack_mv", "current_ma",
                  "riso_pos_kohm", "riso_neg_kohm", "alarm_level", "alarm_flags", "temps_dc",
                  "cells_mv")
_BOARD = operator.itemgetter(0)  # a sample row's board_id
# Sample and estimate rows go in INSERT statements of this many rows each: executemany's
# per-row cost (reset, bind-count check, step) is then paid once per 50 rows (96-cell rows
# into the samples table and its time index: 2.5 -> 1.8 us a row in memory; in a replay of
# 100 packs, 3.5 -> 3.25 us a sample. 500 rows a statement was slower: 3.6)
ROWS_PER_INSERT = 50
ESTIMATE_COLUMNS = ("board_id", "unit", "ts_ms", "soc_pct", "capacity_ah", "capacity_sigma_ah",
                    "soh_pct", "soh_sigma_pct", "r0_mohm", "r0_sigma_mohm", "r0_growth_pct",
                    "rul_days", "rul_efc", "efc")
_KEEP_NEWEST = (" ON CONFLICT (board_id, unit) DO UPDATE SET "  # (into estimates_latest)
                + ", ".join(f"{c} = excluded.{c}" for c in ESTIMATE_COLUMNS[2:])
                + " WHERE excluded.ts_ms >= estimates_latest.ts_ms")


log = logging.getLogger("packsentry.storage")

WRITER_CACHE_KIB = 16 * 1024  # the writer's page cache
CHECKPOINT_EVERY_S = 1.0  # the background checkpointer's period
# With a background checkpointer the writer still checkpoints once the WAL holds this many
# pages (64 MiB): a fallback, should the checkpointer fall behind or die.
FALLBACK_CHECKPOINT_PAGES = 16_384


class _Checkpointer:
    """A thread with its own connection that checkpoints the WAL (PASSIVE: it never waits for
    the writer or the readers) every CHECKPOINT_EVERY_S, and once more when stopped. The
    checkpoint is one SQLite call, made without the GIL: the copy and its fsync overlap the
    processor's work instead of ending one of its commits."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path, synchronous),
                                        daemon=True, name="sqlite-checkpoint")
        self._thread.start()

    def _run(self, path: str, synchronous: str) -> None:
        db = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
        try:
            db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            while True:
                stopping = self._stop.wait(CHECKPOINT_EVERY_S)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the writer's fallback checkpoints meanwhile
                    log.warning("%s: background checkpoint failed: %s", path, exc)
                if stopping:
                    return
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class StorageError(Exception):
    pass


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def temps_blob(temps_dc: Sequence[int]) -> bytes:
    return np.asarray(temps_dc, dtype="<i2").tobytes()


def cells_blob(cells_mv: Sequence[int]) -> bytes:
    return np.asarray(cells_mv, dtype="<u2").tobytes()


def blob_temps(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype="<i2").tolist()


def blob_cells(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype="<u2").tolist()


class Storage:
    """One SQLite database. `readonly=True` for the operator CLI (never migrates or writes,
    except `queue_action`, which the daemon applies)."""

    def __init__(self, path: str | Path, *, synchronous: str = "full",
                 readonly: bool = False, background_checkpoint: bool = False) -> None:
        """background_checkpoint: copy the WAL back into the database on a thread of its own
        (for the daemon and the replay) instead of in the writer's commits."""
        self.path = str(path)
        self._checkpointer: _Checkpointer | None = None
        if readonly and not Path(self.path).exists():
            raise StorageError(f"{self.path}: no database here (has the daemon run yet?)")
        try:
            if not readonly:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0,
                                      check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                # A micro-batch of batch frames writes ~20 000 sample rows (~6 MB with the
                # time index): with SQLite's default 2 MB page cache its dirty pages spill to
                # the WAL mid-transaction and are read back (7.9 us a row; 5.7 with 16 MiB).
                self.db.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
                self.migrate()
                if background_checkpoint:
                    # SQLite's automatic checkpoint (every 1 000 WAL pages) runs inside the
                    # commit that crosses it: about half of a 20 000-row micro-batch's commit
                    # time (2.0 -> 1.1 us a row without it), on the processor's thread.
                    self.db.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_CHECKPOINT_PAGES}")
                    self._checkpointer = _Checkpointer(self.path, synchronous)
            else:
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.db.close()

    # -- schema ------------------------------------------------------------------------------

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> None:
        v = self.version()
        if v != SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {v}, this packsentry uses "
                               f"{SCHEMA_VERSION}" + (" (start the daemon once to migrate)"
                                                      if v < SCHEMA_VERSION else
                                                      " (a newer packsentry wrote it)"))

    def migrate(self) -> None:
        v = self.version()
        if v > SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {v} is newer than this packsentry "
                               f"({SCHEMA_VERSION}); upgrade packsentry")
        for i in range(v, SCHEMA_VERSION):
            if v:  # (a new database is made, not migrated: nothing to say)
                log.info("%s: migrating the schema from version %d to %d (a large database "
                         "may take minutes)", self.path, i, i + 1)
            with self.transaction():
                for stmt in _statements(MIGRATIONS[i]):
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version = {i + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writes (inside a transaction) ---------------------------------------------------------

    def insert_samples(self, rows: Iterable[tuple]) -> None:
        """Rows in SAMPLE_COLUMNS order. Inserted board by board: a fleet's rows arrive
        board after board, and in that order each insert lands on another board's leaf page
        of the time index; grouped they walk each board's pages once (measured with the key
        index migration 4 dropped, 96-cell rows in micro-batches of 20 000: 5.1 -> 4.5 us a
        row, the sort included; the rows themselves are appended, see migration 3). A board's
        rows keep their order, which in-order traffic makes time order (sorting by the whole
        key cost 0.18 us a row, by the board 0.03). Nothing here drops a copy of a stored
        sample (see migration 4): the processor passes each (board, boot, seq) once."""
        self._insert_rows("INSERT INTO samples", len(SAMPLE_COLUMNS),
                          sorted(rows, key=_BOARD))

    def _insert_rows(self, head: str, width: int, rows: Sequence[tuple], tail: str = "") -> None:
        """`head VALUES (row), (row), ... tail` for rows of `width` values, ROWS_PER_INSERT rows
        a statement (the rest one by one). Rows go in in order, as executemany's would."""
        one = f"({','.join('?' * width)})"
        whole = len(rows) - len(rows) % ROWS_PER_INSERT
        if whole:
            flat = list(chain.from_iterable(rows[:whole]))
            step = ROWS_PER_INSERT * width
            self.db.executemany(f"{head} VALUES {','.join([one] * ROWS_PER_INSERT)}{tail}",
                                [flat[i:i + step] for i in range(0, len(flat), step)])
        if whole < len(rows):
            self.db.executemany(f"{head} VALUES {one}{tail}", rows[whole:])

    def insert_board_frames(self, rows: Iterable[tuple]) -> None:
        """Alarm, status and command-ack frames: (board_id, boot, seq, ts_ms, rx_ms,
        msg_type, flags, payload as JSON)."""
        self.db.executemany("INSERT OR IGNORE INTO board_frames VALUES (?,?,?,?,?,?,?,?)", rows)

    def insert_rejected(self, rows: Iterable[tuple]) -> None:
        """(rx_ms, source, reason, message, board_id or None, raw bytes)."""
        self.db.executemany("INSERT INTO rejected (rx_ms, source, reason, message, board_id, raw)"
                            " VALUES (?,?,?,?,?,?)", rows)

    def insert_estimates(self, rows: Sequence[tuple]) -> None:
        """Rows in ESTIMATE_COLUMNS order; a row for a (board, unit, time) already stored
        replaces it. estimates_latest keeps each unit's newest."""
        width = len(ESTIMATE_COLUMNS)
        self._insert_rows("INSERT OR REPLACE INTO estimates", width, rows)
        self._insert_rows("INSERT INTO estimates_latest", width, rows, _KEEP_NEWEST)

    def upsert_boards(self, rows: Sequence[tuple[int, int, dict[str, Any]]]) -> None:
        """Boards seen, for many (board_id, seen_ms, fields): one statement per kind of
        update, not per board (a micro-batch touches hundreds)."""
        self.db.executemany(
            "INSERT INTO boards (board_id, site, first_seen_ms, last_seen_ms) VALUES (?,?,?,?) "
            "ON CONFLICT (board_id) DO UPDATE SET "
            "last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
            [(board_id, fields.get("site", "local"), seen_ms, seen_ms)
             for board_id, seen_ms, fields in rows])
        by_keys: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for board_id, _, fields in rows:
            if fields:
                by_keys.setdefault(tuple(fields), []).append((*fields.values(), board_id))
        for keys, values in by_keys.items():
            cols = ", ".join(f"{k} = ?" for k in keys)
            self.db.executemany(f"UPDATE boards SET {cols} WHERE board_id = ?", values)

    def save_seq_ranges_many(self, items: Sequence[tuple[int, int, Sequence[tuple[int, int]]]]
                             ) -> None:
        self.db.executemany("DELETE FROM seq_ranges WHERE board_id = ? AND boot = ?",
                            [(board_id, boot) for board_id, boot, _ in items])
        self.db.executemany("INSERT INTO seq_ranges VALUES (?,?,?,?)",
                            [(board_id, boot, lo, hi) for board_id, boot, ranges in items
                             for lo, hi in ranges])

    def move_seq_range_ends(self, rows: Sequence[tuple[int, int, int, int]]) -> int:
        """(board_id, boot, lo, hi): the stored interval that starts at lo now ends at hi.
        Returns how many were found."""
        return self.db.executemany("UPDATE seq_ranges SET hi = ?4 WHERE board_id = ?1 AND "
                                   "boot = ?2 AND lo = ?3", rows).rowcount

    def forget_boots_below(self, board_id: int, boot: int) -> None:
        self.db.execute("DELETE FROM seq_ranges WHERE board_id = ? AND boot < ?", (board_id, boot))

    def open_gap(self, board_id: int, boot: int, lo: int, hi: int, detected_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO gaps (board_id, boot, lo, hi, detected_ms) "
                        "VALUES (?,?,?,?,?)", (board_id, boot, lo, hi, detected_ms))

    def close_gap(self, board_id: int, boot: int, lo: int, outcome: str, closed_ms: int) -> None:
        self.db.execute("UPDATE gaps SET closed_ms = ?, outcome = ? WHERE board_id = ? AND "
                        "boot = ? AND lo = ? AND closed_ms IS NULL",
                        (closed_ms, outcome, board_id, boot, lo))

    def write_alarm_events(self, events: Iterable[Any], logged_ms: int) -> None:
        """Every event goes to the audit log; the alarm's row holds its latest state."""
        for e in events:
            self.db.execute(
                "INSERT INTO alarms VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (alarm_id) DO UPDATE SET level = excluded.level, "
                "state = excluded.state, value = coalesce(excluded.value, value), "
                "threshold = coalesce(excluded.threshold, threshold), "
                "message = excluded.message, action = excluded.action, "
                "updated_ms = excluded.updated_ms",
                (e.alarm_id, e.board_id, e.site, e.rule, e.subject, e.subject_index, e.level,
                 e.state, e.source, e.value, e.threshold, e.unit, e.message, e.action, e.ts_ms,
                 e.ts_ms))
            self.db.execute(
                "INSERT INTO alarm_audit (alarm_id, ts_ms, event, level, prev_level, state, "
                "value, threshold, actor, note, message, logged_ms) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (e.alarm_id, e.ts_ms, e.event, e.level, e.prev_level, e.state, e.value,
                 e.threshold, e.actor, e.note, e.message, logged_ms))

    def save_state(self, name: str, value: bytes, saved_ms: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO engine_state VALUES (?,?,?)",
                        (name, saved_ms, value))

    def save_states(self, items: Iterable[tuple[str, bytes]], saved_ms: int) -> None:
        self.db.executemany("INSERT OR REPLACE INTO engine_state VALUES (?,?,?)",
                            ((name, saved_ms, value) for name, value in items))

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    # -- reads ---------------------------------------------------------------------------------

    def load_state(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM engine_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def load_states(self, prefix: str) -> dict[str, bytes]:
        """Every state whose name starts with prefix (a prefix without % or _)."""
        cur = self.db.execute("SELECT name, value FROM engine_state WHERE name >= ? AND "
                              "name < ?", (prefix, prefix + "\uffff"))
        return dict(cur.fetchall())

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def seq_ranges(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        out: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for board, boot, lo, hi in self.db.execute(
                "SELECT board_id, boot, lo, hi FROM seq_ranges ORDER BY board_id, boot, lo"):
            out.setdefault((board, boot), []).append((lo, hi))
        return out

    def open_gaps(self) -> list[tuple[int, int, int, int, int]]:
        return self.db.execute("SELECT board_id, boot, lo, hi, detected_ms FROM gaps "
                               "WHERE closed_ms IS NULL").fetchall()

    def boards(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM boards ORDER BY board_id")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            b = dict(zip(names, row, strict=True))
            b["probe_cell"] = json.loads(b["probe_cell"]) if b["probe_cell"] else []
            b["status"] = json.loads(b["status"]) if b["status"] else None
            out.append(b)
        return out

    def alarms(self, *, active_only: bool = True, board_id: int | None = None,
               limit: int = 200) -> list[dict[str, Any]]:
        where, args = [], []
        if active_only:
            where.append("state != 'cleared'")
        if board_id is not None:
            where.append("board_id = ?")
            args.append(board_id)
        sql = "SELECT * FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
        cur = self.db.execute(sql + " ORDER BY level DESC, raised_ms LIMIT ?", (*args, limit))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def alarm_audit(self, alarm_id: int) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM alarm_audit WHERE alarm_id = ? ORDER BY id",
                              (alarm_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def latest_estimates(self, board_id: int) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM estimates_latest WHERE board_id = ? ORDER BY unit",
                              (board_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def samples(self, board_id: int, t0_ms: int, t1_ms: int) -> Iterator[tuple]:
        return self.db.execute(
            "SELECT * FROM samples WHERE board_id = ? AND ts_ms >= ? AND ts_ms < ? "
            "ORDER BY ts_ms, boot, seq", (board_id, t0_ms, t1_ms))

    def estimates(self, board_id: int, t0_ms: int, t1_ms: int) -> Iterator[tuple]:
        return self.db.execute(
            "SELECT * FROM estimates WHERE board_id = ? AND ts_ms >= ? AND ts_ms < ? "
            "ORDER BY ts_ms, unit", (board_id, t0_ms, t1_ms))

    def count(self, table: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count(*) FROM rejected GROUP BY reason"))

    # -- operator actions: the CLI queues, the daemon applies ----------------------------------

    def queue_action(self, action: str, args: dict[str, Any], actor: str) -> int:
        with self.transaction():
            cur = self.db.execute("INSERT INTO operator_actions (ts_ms, action, args, actor) "
                                  "VALUES (?,?,?,?)", (now_ms(), action, json.dumps(args), actor))
        return int(cur.lastrowid or 0)

    def pending_actions(self) -> list[tuple[int, str, dict[str, Any], str]]:
        return [(i, a, json.loads(args), actor) for i, a, args, actor in self.db.execute(
            "SELECT id, action, args, actor FROM operator_actions WHERE applied_ms IS NULL "
            "ORDER BY id")]

    def finish_action(self, action_id: int, result: str, applied_ms: int) -> None:
        self.db.execute("UPDATE operator_actions SET applied_ms = ?, result = ? WHERE id = ?",
                        (applied_ms, result, action_id))

    def action_result(self, action_id: int) -> str | None:
        row = self.db.execute("SELECT result FROM operator_actions WHERE id = ? AND applied_ms "
                              "IS NOT NULL", (action_id,)).fetchone()
        return row[0] if row else None

    # -- retention -----------------------------------------------------------------------------

    def downsample_before(self, cutoff_ms: int, bucket_ms: int, limit_rows: int = 50_000) -> int:
        """Fold raw samples older than cutoff_ms into bucket_ms aggregates, then delete them.
        Works in chunks (limit_rows) so the writer never holds the database for long."""
        with self.transaction():
            cur = self.db.execute(
                "SELECT board_id, min(ts_ms) FROM samples WHERE ts_ms < ? GROUP BY board_id",
                (cutoff_ms,))
            done = 0
            for board_id, first in cur.fetchall():
                upto = min(cutoff_ms, first + bucket_ms * max(1, limit_rows // 100))
                upto -= upto % bucket_ms
                if upto <= first:
                    upto = first - first % bucket_ms + bucket_ms
                self.db.execute(
                    "INSERT INTO samples_downsampled SELECT board_id, ts_ms - ts_ms % ?1, ?1, "
                    "count(*), min(pack_mv), avg(pack_mv), max(pack_mv), min(current_ma), "
                    "avg(current_ma), max(current_ma), min(min(riso_pos_kohm, riso_neg_kohm)), "
                    "max(alarm_level) FROM samples WHERE board_id = ?2 AND ts_ms < ?3 "
                    "GROUP BY ts_ms - ts_ms % ?1 ON CONFLICT (board_id, bucket_ms) DO UPDATE SET "
                    "n = n + excluded.n, "
                    "pack_mv_avg = (pack_mv_avg * n + excluded.pack_mv_avg * excluded.n) "
                    "/ (n + excluded.n), "
                    "current_ma_avg = (current_ma_avg * n + excluded.current_ma_avg * excluded.n) "
                    "/ (n + excluded.n), pack_mv_min = min(pack_mv_min, excluded.pack_mv_min), "
                    "pack_mv_max = max(pack_mv_max, excluded.pack_mv_max), "
                    "current_ma_min = min(current_ma_min, excluded.current_ma_min), "
                    "current_ma_max = max(current_ma_max, excluded.current_ma_max), "
                    "riso_min_kohm = min(riso_min_kohm, excluded.riso_min_kohm), "
                    "alarm_level_max = max(alarm_level_max, excluded.alarm_level_max)",
                    (bucket_ms, board_id, upto))
                done += self.db.execute("DELETE FROM samples WHERE board_id = ? AND ts_ms < ?",
                                        (board_id, upto)).rowcount
        return done


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
