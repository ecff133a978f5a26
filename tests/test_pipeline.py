"""The processor in-process: verification, dedupe, quarantine, alarms into storage, operator
actions, restart continuity; and the operator commands on the database it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from packsentry.hil.model_board import PyBoard
from packsentry.host import pipeline
from packsentry.host.alarms import AlarmEngine
from packsentry.host.cli import main
from packsentry.host.pipeline import Inbound, Processor
from packsentry.host.storage import Storage, blob_temps
from packsentry.protocol import batch, codec

BOARD = 0xC0FFEE
T0 = 1_790_000_000_000


class Recorder:
    """The way back to a board, recording the commands the processor sends."""

    name = "test"

    def __init__(self, board: PyBoard | None = None) -> None:
        self.board = board
        self.sent: list[dict] = []

    def send_command(self, board_id: int, site: str, frame: bytes) -> bool:
        self.sent.append(codec.decode_frame(frame))
        if self.board is not None:
            self.board.handle_command(frame)
        return True

    def types(self) -> list[str]:
        return [f["msg_type"] for f in self.sent]


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def make(tmp: Path, clock: Clock, keys: dict[int, bytes] | None = None) -> Processor:
    st = Storage(tmp / "depot.db")
    return Processor(st, AlarmEngine(), keys=keys or {}, gap_settle_s=5, clock_ms=clock)


def feed(p: Processor, link: Recorder, *frames: bytes) -> None:
    p.process([Inbound(f, p.clock_ms(), "test", "lab", link=link) for f in frames])


def running(tmp: Path, clock: Clock, n: int, **sample: int) -> tuple[Processor, PyBoard, Recorder]:
    """A processor that has seen a board's birth and n samples, one a second."""
    p = make(tmp, clock)
    board = PyBoard(BOARD)
    link = Recorder(board)
    feed(p, link, board.birth())
    for i in range(1, n + 1):
        clock.ms = T0 + 1000 * i
        feed(p, link, board.sample(ts_ms=clock.ms, **sample))
    return p, board, link


def count(p: Processor, table: str) -> int:
    return p.storage.count(table)


def test_frames_are_stored_once_and_acknowledged_after_commit(tmp_path: Path) -> None:
    clock = Clock()
    p = make(tmp_path, clock)
    board = PyBoard(BOARD)
    link = Recorder(board)
    acked: list[int] = []
    items = [Inbound(board.birth(), T0, "test", "lab", link=link)]
    items += [Inbound(board.sample(ts_ms=T0 + 1000 * i), T0, "test", "lab", link=link,
                      on_stored=lambda i=i: acked.append(i)) for i in range(1, 21)]
    p.process(items)
    assert count(p, "samples") == 20 and acked == list(range(1, 21))
    assert link.types()[:1] == ["time_sync"] and "ack" in link.types()
    assert board.pending() == []  # the board's store released up to the ack
    again = board.resend()
    clock.ms += 1000
    feed(p, link, *again, *again)  # re-sent twice, e.g. after a reconnect
    assert count(p, "samples") == 20 and p.stats.duplicates == 0  # store was empty
    feed(p, link, board.encode({**json_frame(board, T0 + 30_000), "seq": 5}))
    assert count(p, "samples") == 20 and p.stats.duplicates == 1
    row = p.storage.boards()[0]
    assert row["chemistry"] == "nmc" and row["n_cells"] == 4 and row["site"] == "lab"


def json_frame(board: PyBoard, ts_ms: int) -> dict:
    return {"msg_type": "sample", "flags": 0, "board_id": board.board_id, "boot": board.boot,
            "seq": 0, "ts_ms": ts_ms, "payload": {
                "pack_mv": 14800, "current_ma": 0, "riso_pos_kohm": 5000,
                "riso_neg_kohm": 5000, "alarm_level": 0, "alarm_flags": 0,
                "temps_dc": [250, 250], "cells_mv": [3700] * 4}}


def test_bad_frames_are_quarantined_by_reason(tmp_path: Path) -> None:
    key = bytes(range(32))
    p = make(tmp_path, Clock(), keys={BOARD: key})
    link = Recorder()
    signed = PyBoard(BOARD, key=key)
    unsigned = PyBoard(BOARD)
    good = signed.birth()
    corrupt = bytearray(signed.sample(ts_ms=T0))
    corrupt[30] ^= 0x01
    feed(p, link, good, bytes(corrupt), unsigned.sample(ts_ms=T0), b"\x01\x02")
    reasons = p.storage.rejected_by_reason()
    assert reasons == {"crc_mismatch": 1, "missing_tag": 1, "truncated": 1}
    raw = p.storage.db.execute("SELECT raw FROM rejected WHERE reason = 'crc_mismatch'").fetchone()
    assert raw[0] == bytes(corrupt)  # kept as received, for inspection
    assert link.types()[0] == "time_sync"
    assert all(f["tag"] is not None for f in link.sent)  # signed with the board's key


def test_alarm_lifecycle_through_storage_and_the_cli(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    p, _, _ = running(tmp_path, clock, 39, temp_dc=620)  # 62 degC: L3 on the first sample
    alarms = p.storage.alarms()
    hot = [a for a in alarms if a["rule"] == "temp_high"]
    assert hot and hot[0]["level"] == 3 and hot[0]["state"] == "active_unack"
    assert str(BOARD) in hot[0]["message"] or "12648430" in hot[0]["message"]
    db = str(tmp_path / "depot.db")
    assert main(["alarms", "list", "--db", db]) == 0
    assert "temp_high" in capsys.readouterr().out
    alarm_id = hot[0]["alarm_id"]
    assert main(["alarms", "ack", str(alarm_id), "--db", db, "--note", "checked",
                 "--actor", "ops"]) == 0
    assert "not running" in capsys.readouterr().out  # queued for the daemon
    p.tick()  # the daemon applies it
    (a,) = [a for a in p.storage.alarms() if a["alarm_id"] == alarm_id]
    assert a["state"] == "active_ack"
    audit = p.storage.alarm_audit(alarm_id)
    assert [e["event"] for e in audit][:2] == ["raised", "acknowledged"]
    assert audit[1]["actor"] == "ops" and audit[1]["note"] == "checked"
    # L3 may not be shelved: the refusal comes back as the action's result
    assert main(["alarms", "shelve", str(alarm_id), "--db", db]) == 0
    p.tick()
    result = p.storage.db.execute("SELECT result FROM operator_actions ORDER BY id DESC").fetchone()
    assert result[0].startswith("error:")
    assert main(["alarms", "list", "--db", db, "--history", str(alarm_id)]) == 0
    assert "acknowledged" in capsys.readouterr().out
    assert main(["alarms", "ack", "999", "--db", db]) == 2
    assert "no alarm 999" in capsys.readouterr().err


def test_status_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running(tmp_path, Clock(), 10)
    db = str(tmp_path / "depot.db")
    assert main(["status", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "NOT RUNNING" in out and "12648430" in out
    assert main(["status", "--db", db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["boards"][0]["board_id"] == BOARD and doc["boards"][0]["link"] == "test"
    out_csv = tmp_path / "s.csv"
    assert main(["export", "--db", db, "--board", str(BOARD), "-o", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 10 and rows[0]["cell_mv_4"] == "3700" and rows[0]["temp_dc_1"] == "250"
    assert main(["export", "--db", db, "--board", str(BOARD), "--from", "2026-13-01"]) == 2
    assert "ISO-8601" in capsys.readouterr().err
    assert main(["export", "--db", db, "--board", "5"]) == 2
    assert main(["status", "--db", str(tmp_path / "none.db")]) == 2
    assert "no database" in capsys.readouterr().err


def test_a_restart_continues_estimates_and_alarms(tmp_path: Path) -> None:
    clock = Clock()
    p, board, link = running(tmp_path, clock, 4, temp_dc=620)
    p.save()
    active = {a["alarm_id"] for a in p.storage.alarms()}
    units = p.unit_board.copy()
    p.storage.close()
    q = make(tmp_path, clock)
    assert (q.unit_board == units).all()
    assert {e.alarm_id for e in q.engine.active()} == active
    clock.ms += 1000
    feed(q, link, board.sample(ts_ms=clock.ms, temp_dc=620))
    assert {a["alarm_id"] for a in q.storage.alarms()} == active  # the same alarms, not new


def test_an_alarm_event_saves_only_its_boards_part_and_a_crash_restart_continues(
        tmp_path: Path) -> None:
    """After an event the engine's id counter and the boards whose alarms moved are saved,
    in the same transaction as the events; a process killed then (no clean save) restarts
    with every alarm the database holds, and raises the next one under a fresh id."""
    clock = Clock()
    p = make(tmp_path, clock)
    quiet, hot = PyBoard(1), PyBoard(2)
    link = Recorder()
    feed(p, link, quiet.birth(), hot.birth())
    p.save()  # every board's part
    saved = dict(p.storage.db.execute("SELECT name, saved_ms FROM engine_state"))
    clock.ms += 500  # (before the next periodic slice is due: STATE_EVERY_MS / STATE_SLICES)
    feed(p, link, quiet.sample(ts_ms=clock.ms), hot.sample(ts_ms=clock.ms, temp_dc=650))
    now = dict(p.storage.db.execute("SELECT name, saved_ms FROM engine_state"))
    moved = {name for name in now if now[name] != saved.get(name)}
    assert moved == {"alarms", "alarms/board/2"}
    before = {a["alarm_id"] for a in p.storage.alarms()}
    assert before and {a["board_id"] for a in p.storage.alarms()} == {2}
    p.storage.close()  # no p.save(): as if killed
    q = make(tmp_path, clock)
    assert {e.alarm_id for e in q.engine.active()} == before
    clock.ms += 1000
    feed(q, link, quiet.sample(ts_ms=clock.ms, temp_dc=650))
    new = {a["alarm_id"] for a in q.storage.alarms()} - before
    assert new and min(new) > max(before)  # fresh ids, no row overwritten


def test_the_periodic_save_writes_every_board_once_a_slice_at_a_time(tmp_path: Path) -> None:
    """Every board's alarm part is written once per STATE_EVERY_MS, a tenth of the fleet per
    STATE_EVERY_MS / STATE_SLICES (no one transaction carries the whole fleet's state); the
    estimator's state once per STATE_EVERY_MS; a restart from the parts continues."""
    clock = Clock()
    p = make(tmp_path, clock)
    boards = [PyBoard(b) for b in range(1, 31)]
    link = Recorder()
    feed(p, link, *(b.birth() for b in boards))
    p.save()
    step_ms = pipeline.STATE_EVERY_MS // pipeline.STATE_SLICES
    written: list[set[str]] = []
    for _ in range(pipeline.STATE_SLICES):
        before = dict(p.storage.db.execute("SELECT name, saved_ms FROM engine_state"))
        clock.ms += step_ms
        feed(p, link, *(b.sample(ts_ms=clock.ms) for b in boards))
        now = dict(p.storage.db.execute("SELECT name, saved_ms FROM engine_state"))
        written.append({n for n in now if now[n] != before.get(n)})
    parts = [{n for n in w if n.startswith(pipeline.ALARM_PART)} for w in written]
    assert all(len(w) == len(boards) // pipeline.STATE_SLICES for w in parts)
    assert set().union(*parts) == {f"{pipeline.ALARM_PART}{b.board_id}" for b in boards}
    assert sum("soh" in w for w in written) == 1
    p.storage.close()  # no p.save(): as if killed
    q = make(tmp_path, clock)
    restored = q.engine.state()["boards"]
    assert sorted(restored) == sorted(str(b.board_id) for b in boards)
    # every board as it was at most one period ago, and not all of them from the same moment
    seen = {b["last_sample_ms"] for b in restored.values()}
    assert min(seen) >= clock.ms - pipeline.STATE_EVERY_MS and len(seen) == pipeline.STATE_SLICES


def test_the_estimators_state_is_saved_in_parts_and_a_restart_joins_them(
        tmp_path: Path) -> None:
    """The estimator's units are saved SOH_PART_UNITS at a time, each part in its own slice
    of the period; a restart joins the parts as they were saved. A part saved before all of
    its units existed ends the join there: the boards beyond get new units."""
    import numpy as np

    clock = Clock()
    p = make(tmp_path, clock)
    boards = [PyBoard(b, n_cells=96) for b in range(1, 31)]  # 2 880 units: 2 parts
    link = Recorder()
    feed(p, link, *(b.birth() for b in boards))
    step_ms = pipeline.STATE_EVERY_MS // pipeline.STATE_SLICES
    s_at = []
    for _ in range(2):
        clock.ms += step_ms
        feed(p, link, *(b.sample(ts_ms=clock.ms) for b in boards))
        s_at.append(p.soh.state()["s"])
    cut = pipeline.SOH_PART_UNITS
    assert not np.array_equal(s_at[0][:, cut:], s_at[1][:, cut:])  # the estimator moved on
    p.storage.close()  # as if killed: part 0 from the first slice, part 1 from the second
    q = make(tmp_path, clock)
    np.testing.assert_array_equal(q.soh.state()["s"],
                                  np.hstack([s_at[0][:, :cut], s_at[1][:, cut:]]))
    # part 0 saved with fewer units than it holds now, then part 1 and the count: the join
    # stops at part 0's end
    r = make(tmp_path / "grow", clock)
    few = [PyBoard(b, n_cells=96) for b in range(1, 21)]  # 1 920 units
    feed(r, link, *(b.birth() for b in few))
    clock.ms += step_ms
    feed(r, link, *(b.sample(ts_ms=clock.ms) for b in few))  # slice 0: part 0, 1 920 units
    part0 = r.soh.state()["s"]
    feed(r, link, *(b.birth() for b in boards[20:]))  # 2 880 units
    clock.ms += step_ms
    feed(r, link, *(b.sample(ts_ms=clock.ms) for b in boards))  # slice 1: part 1
    assert len(r.soh) == 2880
    r.storage.close()
    again = make(tmp_path / "grow", clock)
    s = again.soh.state()["s"]
    # the first 20 boards continue from part 0; the last 10 were given units afresh
    np.testing.assert_array_equal(s[:, :1920], part0)
    assert len(again.soh) == 2880 and not np.array_equal(s[:, 1920:], r.soh.state()["s"][:, 1920:])


def test_docs_example_config_is_valid(tmp_path: Path) -> None:
    from packsentry.host import config

    text = (Path(__file__).parent.parent / "docs" / "depot.example.toml").read_text()
    secret = tmp_path / "pw"
    secret.write_text("x")
    cfg = config.parse(text.replace("/etc/packsentry/mqtt-password", str(secret)))
    assert cfg.serial and cfg.mqtt is not None and cfg.keys and cfg.webhooks


def test_operator_commands_reach_the_board_signed(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    key = bytes(range(32))
    clock = Clock()
    p = make(tmp_path, clock, keys={BOARD: key})
    board = PyBoard(BOARD, key=key)
    link = Recorder(board)
    other = PyBoard(7)
    feed(p, link, board.birth(), other.birth())
    db = str(tmp_path / "depot.db")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"board_id": BOARD, "site": "lab"}))
    assert main(["send", "--db", db, str(BOARD), "config", str(cfg)]) == 0
    assert main(["send", "--db", db, "7", "reboot"]) == 0
    p.tick()
    (update,) = [f for f in link.sent if f["msg_type"] == "config_update"]
    assert update["tag"] is not None and update["board_id"] == BOARD
    assert json.loads(update["payload"]["config_json"]) == {"board_id": BOARD, "site": "lab"}
    results = [r for (r,) in p.storage.db.execute(
        "SELECT result FROM operator_actions ORDER BY id")]
    assert results[0] == "ok" and "no key for board 7" in results[1]
    cfg.write_text(json.dumps({"board_id": 5}))
    assert main(["send", "--db", db, str(BOARD), "config", str(cfg)]) == 2
    assert "board_id 12648430" in capsys.readouterr().err


def test_batch_frames_store_one_row_per_sample(tmp_path: Path) -> None:
    clock = Clock()
    p, board, link = running(tmp_path, clock, 0)
    m = {"pack_mv": 14800, "current_ma": 1000, "riso_pos_kohm": 5000, "riso_neg_kohm": 5000,
         "temps_dc": [250, 240], "cells_mv": [3700] * 4}
    clock.ms = T0 + 20_000
    feed(p, link, board.batch_from([(T0 + 1000 * i, m) for i in range(1, 11)]))
    seqs = [s for (s,) in p.storage.db.execute("SELECT seq FROM samples ORDER BY seq")]
    assert seqs == board.sample_seqs and len(seqs) == 10
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert p.storage.db.execute("SELECT max(ts_ms) FROM samples").fetchone()[0] == T0 + 10_000
    # a board that sends 10 samples a frame reports every 10 periods: not silent after 3
    def silent() -> list[dict]:
        return [a for a in p.storage.alarms() if "no frame for" in a["message"]]
    clock.ms += 29_000
    p.tick()
    assert not silent()
    clock.ms += 1_000
    p.tick()
    assert silent()


def test_a_birth_the_alarm_engine_refuses_is_quarantined(tmp_path: Path) -> None:
    from packsentry.hil.model_board import Profile

    p = make(tmp_path, Clock())
    board = PyBoard(BOARD, profile=Profile(sample_period_ms=0))
    feed(p, Recorder(), board.birth())
    assert p.storage.rejected_by_reason() == {"bad_value": 1}


def test_an_outage_backlog_is_evaluated_in_board_time_order(tmp_path: Path) -> None:
    """After an outage the live frames arrive before the board's re-send. The processor holds
    the board's evaluation while the gap is open, so the over-temperature the board measured
    during the outage raises the host's alarm at the board's time, not at the first live
    sample after it; and a frame that never comes (a status frame) holds it 2 s at most."""
    clock = Clock()
    p, board, link = running(tmp_path, clock, 5)
    outage = [board.sample(ts_ms=T0 + 1000 * i, temp_dc=650) for i in range(6, 11)]
    clock.ms = T0 + 11_000
    feed(p, link, board.sample(ts_ms=clock.ms, temp_dc=250))  # live, after the outage
    assert not [a for a in p.storage.alarms() if a["rule"] == "temp_high"]  # held
    assert "rebirth" in link.types()
    clock.ms += 300
    feed(p, link, *outage)  # the re-send fills the gap
    (hot,) = [a for a in p.storage.alarms() if a["rule"] == "temp_high"]
    audit = p.storage.alarm_audit(hot["alarm_id"])
    assert [(e["event"], e["ts_ms"]) for e in audit] == [
        ("raised", T0 + 6000), ("cleared", T0 + 11_000)]
    assert count(p, "samples") == 11

    # a gap nothing will fill: evaluation waits for it to stall, then goes on
    board.seq += 1  # a status frame the host never got, and the board never stores
    clock.ms = T0 + 12_000
    feed(p, link, board.sample(ts_ms=clock.ms, temp_dc=650))
    assert len(p.storage.alarm_audit(hot["alarm_id"])) == 2  # held: still cleared
    clock.ms += 2_000
    p.tick()
    last = p.storage.alarm_audit(hot["alarm_id"])[-1]
    assert (last["event"], last["ts_ms"]) == ("raised", T0 + 12_000)


def test_samples_released_by_a_tick_get_their_estimates(tmp_path: Path) -> None:
    """Samples held behind a gap that stalls are evaluated by tick(): the estimator takes them
    there too, and their estimate rows are stored before tick() returns."""
    clock = Clock()
    p = Processor(Storage(tmp_path / "depot.db"), AlarmEngine(), keys={}, gap_settle_s=5,
                  clock_ms=clock, estimate_every_s=1.0)
    board = PyBoard(BOARD)
    link = Recorder(board)
    feed(p, link, board.birth())
    for i in range(1, 4):
        clock.ms = T0 + 1000 * i
        feed(p, link, board.sample(ts_ms=clock.ms))
    before = count(p, "estimates")
    board.seq += 1  # a frame the host never gets: a gap opens, evaluation is held
    for i in range(4, 7):
        clock.ms = T0 + 1000 * i
        feed(p, link, board.sample(ts_ms=clock.ms))
    assert p.boards[BOARD].held_runs and count(p, "estimates") == before
    clock.ms += 3000
    p.tick()  # the gap stalled: the held samples are evaluated here
    assert not p.boards[BOARD].held_runs
    newest = p.storage.db.execute("SELECT max(ts_ms) FROM estimates").fetchone()[0]
    assert count(p, "estimates") > before and newest == T0 + 6000


def decode_with_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_batch hands every frame it checked to the codec (its `extra`), as it would a
    frame its vectorised checks cannot take."""
    real = batch.decode_batch

    def codec_only(raws: list[bytes], keys: Any) -> batch.DecodedBatch:
        dec = real(raws, keys)
        extra = {i: codec.decode_frame(r) for i, r in enumerate(raws) if i not in dec.errors}
        return batch.DecodedBatch(dec.n, [], dec.errors, extra)

    monkeypatch.setattr(batch, "decode_batch", codec_only)


def test_frames_the_codec_decodes_instead_are_stored_the_same(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """A frame decode_batch hands to the codec (its `extra`: never, unless the vectorised
    checks have a bug) is stored and evaluated like any other, sample and batch frames alike."""
    def run(where: Path) -> list[tuple]:
        clock = Clock()
        p = make(where, clock)
        board = PyBoard(BOARD)
        link = Recorder(board)
        feed(p, link, board.birth())
        for i in range(1, 4):
            clock.ms = T0 + 1000 * i
            m = {"pack_mv": 14_800, "current_ma": 2000, "riso_pos_kohm": 5000,
                 "riso_neg_kohm": 5000, "alarm_level": 0, "alarm_flags": 0,
                 "temps_dc": [250, 240], "cells_mv": [3700] * board.n_cells}
            feed(p, link, board.sample(ts_ms=clock.ms),
                 board.batch_from([(clock.ms + 100 * j, m) for j in range(1, 4)]))
        return p.storage.db.execute("SELECT * FROM samples ORDER BY seq").fetchall()

    want = run(tmp_path / "a")
    decode_with_the_codec(monkeypatch)
    got = run(tmp_path / "b")
    assert len(want) == 3 * 4 and got == want


def batch_at(board: PyBoard, seq: int, rows: list[tuple[int, dict]]) -> bytes:
    """A batch frame whose samples take seqs seq, seq+1, ...: a sender that re-frames its
    backlog sends batches that partly overlap what it sent before."""
    board.seq = seq
    return board.batch_from(rows)


@pytest.mark.parametrize("decode", ["vectorised", "codec"])
def test_a_batch_that_partly_overlaps_stores_and_evaluates_only_its_new_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode: str) -> None:
    """Storage keeps no key of its own: the processor stores each (board, boot, seq) once,
    against what it committed (across a restart too) and what came earlier in the same
    micro-batch; the first copy wins, and the alarm engine never sees the second."""
    if decode == "codec":
        decode_with_the_codec(monkeypatch)
    cool = {"pack_mv": 14_800, "current_ma": 1000, "riso_pos_kohm": 5000,
            "riso_neg_kohm": 5000, "temps_dc": [250, 240], "cells_mv": [3700] * 4}
    hot = {**cool, "temps_dc": [700, 700]}  # would raise temp_high if it were evaluated

    def rows(first: int, last: int, m: dict) -> list[tuple[int, dict]]:
        return [(T0 + 1000 * s, m) for s in range(first, last + 1)]

    def stored() -> list[tuple[int, int]]:
        return [(seq, blob_temps(temps)[0]) for seq, temps in p.storage.db.execute(
            "SELECT seq, temps_dc FROM samples ORDER BY seq")]

    clock = Clock()
    p, board, link = running(tmp_path, clock, 0)  # the birth took seq 0
    clock.ms = T0 + 60_000
    feed(p, link, batch_at(board, 1, rows(1, 10, cool)))
    feed(p, link, batch_at(board, 6, [*rows(6, 10, hot), *rows(11, 15, cool)]))  # 6..10 again
    assert [s for s, _ in stored()] == list(range(1, 16))
    # one micro-batch: 16..20, then 18..25 (18..20 a second time)
    feed(p, link, batch_at(board, 16, rows(16, 20, cool)),
         batch_at(board, 18, [*rows(18, 20, hot), *rows(21, 25, cool)]))
    assert [s for s, _ in stored()] == list(range(1, 26))
    feed(p, link, board.encode({**json_frame(board, T0 + 16_000), "seq": 16, "payload": {
        **json_frame(board, 0)["payload"], "temps_dc": [700, 700]}}))  # 16 alone: a duplicate
    assert [s for s, t in stored() if t != 250] == []  # no hot copy
    assert not [a for a in p.storage.alarms() if a["rule"] == "temp_high"]
    assert p.stats.duplicates == 1 and p.stats.samples == 25
    p.storage.close()

    # a restart knows what is stored (seq_ranges): a batch from 21 stores 26..30 only
    p = make(tmp_path, clock)
    clock.ms += 1000
    feed(p, link, batch_at(board, 21, [*rows(21, 25, hot), *rows(26, 30, cool)]))
    assert [s for s, _ in stored()] == list(range(1, 31))
    assert not [a for a in p.storage.alarms() if a["rule"] == "temp_high"]


def test_the_stored_seq_ranges_follow_the_window(tmp_path: Path) -> None:
    """In-order frames only move the newest interval's end in `seq_ranges`; a hole, its
    filling and a restart keep the table equal to what the processor committed."""
    clock = Clock()
    p = make(tmp_path, clock)
    board = PyBoard(BOARD)
    link = Recorder()  # (a board that answers commands would spend seqs on its cmd_acks)
    feed(p, link, board.birth(), *(board.sample(ts_ms=T0 + 1000 * i) for i in range(1, 4)))

    def stored() -> list[tuple[int, int]]:
        return p.storage.seq_ranges()[BOARD, board.boot]

    assert stored() == [(0, 4)]
    late = board.sample(ts_ms=T0 + 4000)  # seq 4 comes late
    clock.ms = T0 + 5000
    feed(p, link, board.sample(ts_ms=clock.ms))
    assert stored() == [(0, 4), (5, 6)]
    feed(p, link, board.sample(ts_ms=T0 + 6000))
    assert stored() == [(0, 4), (5, 7)]
    feed(p, link, late)
    assert stored() == [(0, 7)] == p.delivery.window.intervals(BOARD, board.boot)
    p.storage.close()
    p = make(tmp_path, clock)
    feed(p, link, board.sample(ts_ms=T0 + 7000))
    assert stored() == [(0, 8)]


def test_a_boot_the_window_forgets_mid_batch_leaves_the_stored_ranges(tmp_path: Path) -> None:
    """Nine boots of one board in one micro-batch: the window keeps the newest eight, and the
    oldest's stored intervals go with it, as the window has them (nothing to move)."""
    clock = Clock()
    p = make(tmp_path, clock)
    boards = [PyBoard(BOARD, boot=boot) for boot in range(1, 10)]
    link = Recorder()
    feed(p, link, boards[0].birth(), boards[0].sample(ts_ms=T0 + 1000))
    clock.ms = T0 + 2000
    feed(p, link, boards[0].sample(ts_ms=T0 + 2000),
         *(b.sample(ts_ms=T0 + 2000) for b in boards[1:]))
    ranges = p.storage.seq_ranges()
    assert (BOARD, 1) not in ranges and sorted(boot for _, boot in ranges) == list(range(2, 10))
    assert count(p, "samples") == 10
