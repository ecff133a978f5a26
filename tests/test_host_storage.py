"""SQLite storage: migrations, idempotent writes, operator actions, retention, trace files."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from packsentry.host import trace_file
from packsentry.host.storage import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Storage,
    StorageError,
    blob_cells,
    blob_temps,
    cells_blob,
    temps_blob,
)
from packsentry.protocol.errors import FramingError


def sample(seq: int, ts_ms: int, board: int = 1) -> tuple:
    return (board, 1, seq, ts_ms, ts_ms + 5, 0, 48_000 + seq, 1500, 900, 950, 0, 0,
            temps_blob([251, -40]), cells_blob([3700, 3701, 3699]))


def test_migrates_and_reopens(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    assert st.version() == SCHEMA_VERSION
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with st.transaction():
        st.insert_samples([sample(i, 1000 * i) for i in range(10)])
    assert st.count("samples") == 10
    row = next(iter(st.samples(1, 0, 10**12)))
    assert blob_temps(row[12]) == [251, -40] and blob_cells(row[13]) == [3700, 3701, 3699]
    st.close()
    again = Storage(tmp_path / "a.db")  # reopening migrates nothing
    assert again.version() == SCHEMA_VERSION and again.count("samples") == 10


def test_samples_go_in_board_by_board_in_arrival_order(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    rows = [sample(i, 1000 * i, board=b) for i in range(50) for b in (3, 1, 2)]  # a fleet's
    with st.transaction():
        st.insert_samples(iter(rows))
    assert st.count("samples") == 150
    assert [r[:3] for r in st.db.execute(
        "SELECT board_id, boot, seq FROM samples ORDER BY rowid")] == sorted(
        (r[:3] for r in rows), key=lambda k: k[0])  # board by board, each in arrival order
    assert next(iter(st.samples(1, 7000, 7001)))[6] == 48_007
    st.close()


def sample_indexes(st: Storage) -> list[str]:
    return [n for (n,) in st.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' "
        "AND sql IS NOT NULL ORDER BY name")]


def test_a_version_2_database_is_migrated_with_its_samples(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + MIGRATIONS[1])
    rows = [sample(i, 1000 * i, board=b) for i in range(30) for b in (2, 1)]
    db.executemany(f"INSERT INTO samples VALUES ({','.join('?' * 14)})", rows)
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    st = Storage(path)
    assert st.version() == SCHEMA_VERSION
    assert sorted(st.db.execute("SELECT * FROM samples")) == sorted(rows)
    assert sample_indexes(st) == ["samples_time"]  # the key is the processor's (migration 4)
    assert [r[2] for r in st.samples(1, 4000, 6001)] == [4, 5, 6]
    st.close()


def test_a_version_3_database_loses_only_its_key_index(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[:3]))
    rows = [sample(i, 1000 * i, board=b) for i in range(30) for b in (2, 1)]
    db.executemany(f"INSERT INTO samples VALUES ({','.join('?' * 14)})", rows)
    db.execute("INSERT INTO seq_ranges VALUES (1, 1, 0, 30), (2, 1, 0, 30)")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    st = Storage(path)
    assert st.version() == SCHEMA_VERSION == 4
    assert [tuple(r) for r in st.db.execute("SELECT * FROM samples ORDER BY rowid")] == rows
    assert sample_indexes(st) == ["samples_time"]
    assert st.seq_ranges() == {(1, 1): [(0, 30)], (2, 1): [(0, 30)]}
    st.close()


def estimate(board: int, unit: int, ts_ms: int, soh: float) -> tuple:
    return (board, unit, ts_ms, 50.0, 2.0, 0.1, soh, 1.0, 20.0, 0.5, 3.0, None, None, 12.5)


def test_latest_estimates_are_each_units_newest_whatever_the_order(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    with st.transaction():
        st.insert_estimates([estimate(1, u, t, 100.0 - t / 1000) for t in (1000, 2000)
                             for u in (0, 1)] + [estimate(2, 0, 5000, 80.0)])
    with st.transaction():  # unit 0 again at 2000 (replaces), unit 1's late row from before
        st.insert_estimates([estimate(1, 0, 2000, 90.0), estimate(1, 1, 500, 70.0)])
    assert [(e["unit"], e["ts_ms"], e["soh_pct"]) for e in st.latest_estimates(1)] == [
        (0, 2000, 90.0), (1, 2000, 98.0)]
    assert [r[:3] for r in st.estimates(1, 0, 10**6)] == [
        (1, 1, 500), (1, 0, 1000), (1, 1, 1000), (1, 0, 2000), (1, 1, 2000)]
    # many rows go in multi-row statements: a unit's newer row first, then its older one
    with st.transaction():
        st.insert_estimates([estimate(3, u, t, t / 100) for u in range(60) for t in (9000, 8000)])
    assert {(e["ts_ms"], e["soh_pct"]) for e in st.latest_estimates(3)} == {(9000, 90.0)}
    assert len(st.latest_estimates(3)) == 60 and st.count("estimates") == 126
    st.close()


def test_a_version_1_database_is_migrated_with_its_estimates(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.executemany(f"INSERT INTO estimates VALUES ({','.join('?' * 14)})",
                   [estimate(b, u, t, 100.0 - t / 1000) for b in (1, 2) for u in (0, 1, 5)
                    for t in (1000, 3000, 2000)])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    st = Storage(path)
    assert st.version() == SCHEMA_VERSION
    assert st.count("estimates") == 18
    assert [(e["unit"], e["ts_ms"]) for e in st.latest_estimates(2)] == [
        (0, 3000), (1, 3000), (5, 3000)]
    st.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    with pytest.raises(sqlite3.IntegrityError), st.transaction():
        st.insert_samples([sample(1, 1000)])
        st.db.execute("INSERT INTO meta VALUES (NULL, NULL)")
    assert st.count("samples") == 0


def test_background_checkpointer_moves_the_wal_into_the_database(tmp_path: Path) -> None:
    """The daemon's storage checkpoints on a thread of its own: the writer's automatic
    checkpoint only comes at FALLBACK_CHECKPOINT_PAGES (64 MiB), far above what is written
    here, so only the checkpointer can bring these rows into the database file."""
    import os
    import time

    path = tmp_path / "c.db"
    st = Storage(path, background_checkpoint=True)
    assert st.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 16_384
    before = os.path.getsize(path)
    with st.transaction():
        st.insert_samples([sample(i, 1000 * i, board=b) for b in range(20) for i in range(100)])
    deadline = time.monotonic() + 30
    while os.path.getsize(path) < before + 200_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(path) >= before + 200_000, "nothing checkpointed into the file"
    thread = st._checkpointer._thread
    st.close()
    assert not thread.is_alive()
    again = Storage(path, readonly=True)
    assert again.count("samples") == 2000
    again.close()


def test_readonly_refuses_missing_and_newer_databases(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no database"):
        Storage(tmp_path / "none.db", readonly=True)
    st = Storage(tmp_path / "a.db")
    st.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    st.close()
    with pytest.raises(StorageError, match="newer"):
        Storage(tmp_path / "a.db")


def test_operator_actions_round_trip(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    cli = Storage(tmp_path / "a.db", readonly=True)
    i = cli.queue_action("ack", {"alarm_id": 3}, "ops")
    assert st.pending_actions() == [(i, "ack", {"alarm_id": 3}, "ops")]
    assert cli.action_result(i) is None
    with st.transaction():
        st.finish_action(i, "ok", 123)
    assert cli.action_result(i) == "ok" and st.pending_actions() == []


def test_retention_downsamples_old_samples(tmp_path: Path) -> None:
    st = Storage(tmp_path / "a.db")
    with st.transaction():
        st.insert_samples([sample(i, 1000 * i) for i in range(300)])  # 5 minutes at 1 Hz
    n = st.downsample_before(cutoff_ms=120_000, bucket_ms=60_000)
    assert n == 120 and st.count("samples") == 180
    rows = st.db.execute("SELECT bucket_ms, n, pack_mv_min, pack_mv_max, pack_mv_avg "
                         "FROM samples_downsampled ORDER BY bucket_ms").fetchall()
    assert rows == [(0, 60, 48_000, 48_059, 48_029.5), (60_000, 60, 48_060, 48_119, 48_089.5)]


def test_trace_reading_decodes_every_record_as_the_python_cobs_does(tmp_path: Path) -> None:
    """The reader decodes the file's COBS in one compiled pass: the same records, and the same
    verdict on damaged ones, as protocol.cobs record by record (random frames, zero-heavy
    like real samples, some records corrupted, a torn tail)."""
    import random

    from packsentry.protocol import cobs

    rnd = random.Random(7)
    path = tmp_path / "r.pstrace"
    w = trace_file.TraceWriter(path)
    for i in range(400):
        n = rnd.choice([0, 1, 253, 254, 255, 600])
        w.append(i, "lab", bytes(rnd.choice([0, 0, 1, 0xFF, rnd.randrange(256)])
                                 for _ in range(n)))
    w.close()
    data = bytearray(path.read_bytes())
    for _ in range(30):  # damage: a code byte pointing past the record, a zero inside it
        data[rnd.randrange(len(trace_file.MAGIC), len(data))] = rnd.choice([0xFE, 0x00])
    data += b"\x07tail"
    path.write_bytes(bytes(data))
    def reference() -> list[tuple]:  # the reader as it was: protocol.cobs per record
        out: list[tuple] = []
        pos = len(trace_file.MAGIC)
        while (end := data.find(b"\0", pos)) >= 0:
            if end > pos:
                try:
                    body = cobs.decode(bytes(data[pos:end]))
                    rx_ms, n = struct.unpack_from("<QB", body, 0)
                    out.append((rx_ms, body[9:9 + n].decode(), body[9 + n:]))
                except (FramingError, struct.error, UnicodeDecodeError) as exc:
                    out.append((f"{path}: damaged record at byte {pos}: {exc}",))
            pos = end + 1
        return out

    got = [(r.rx_ms, r.site, r.frame) if isinstance(r, trace_file.TraceRecord) else (str(r),)
           for r in trace_file.read(path)]
    want = reference()
    assert len([g for g in got if len(g) == 1]) >= 10  # the damage did show
    assert got == want
    # read in small chunks: records cut at every chunk boundary come out the same
    small = [(r.rx_ms, r.site, r.frame) if isinstance(r, trace_file.TraceRecord) else (str(r),)
             for r in trace_file.read(path, chunk_bytes=97)]
    assert small == want


def test_trace_files_are_append_safe(tmp_path: Path) -> None:
    path = tmp_path / "t.pstrace"
    w = trace_file.TraceWriter(path)
    w.append(1000, "lab", b"\x01\x00\x02frame-one")
    w.append(2000, "", b"frame-two")
    w.close()
    with open(path, "ab") as f:
        f.write(b"\x05torn")  # the writer died mid-record
    w = trace_file.TraceWriter(path)  # appending again after the crash
    w.append(3000, "lab", b"frame-three")
    w.close()
    recs = list(trace_file.read(path))
    good = [r for r in recs if isinstance(r, trace_file.TraceRecord)]
    assert [(r.rx_ms, r.site, r.frame) for r in good] == [
        (1000, "lab", b"\x01\x00\x02frame-one"), (2000, "", b"frame-two"),
        (3000, "lab", b"frame-three")]
    assert len(recs) - len(good) <= 1  # the torn record, reported, not raised
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello")
    with pytest.raises(trace_file.TraceError, match="not a packsentry trace"):
        list(trace_file.read(bad))
