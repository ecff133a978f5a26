"""The trace tools of issue 5: capture (a real pseudo-terminal, a real Mosquitto, SIGKILL
mid-stream), trace info, trace from-csv (errors, missing values), replay (determinism,
acceptance 4) and NASA B0005 through from-csv + replay (acceptance 3)."""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from packsentry.hil import trace_cli
from packsentry.hil.model_board import PyBoard
from packsentry.host import soh_report
from packsentry.host.cli import main
from packsentry.host.trace_file import TraceError, TraceRecord, TraceWriter
from packsentry.host.trace_file import read as read_trace
from packsentry.protocol import codec
from packsentry.protocol.stream import FrameReader, encode_stream_frame

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000_000

def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The packsentry command in-process: (exit status, stdout, stderr)."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "packsentry.host.cli", *argv], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def records(path: Path) -> tuple[list[TraceRecord], list[TraceError]]:
    ok: list[TraceRecord] = []
    bad: list[TraceError] = []
    for r in read_trace(path):
        (bad if isinstance(r, TraceError) else ok).append(r)  # type: ignore[arg-type]
    return ok, bad


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def frame_count(path: Path) -> int:
    return len(records(path)[0]) if path.exists() and path.stat().st_size else 0


# -- capture: serial --------------------------------------------------------------------------


def _has_open(pid: int, dev: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) == dev for fd in os.listdir(fd_dir))
    except OSError:
        return False


def _start_serial_capture(dev: str, out: Path) -> subprocess.Popen[str]:
    proc = spawn("capture", "--serial", dev, "--site", "bench", "-o", str(out))
    wait_until(lambda: _has_open(proc.pid, dev) or proc.poll() is not None, 20,
               "the capture to open the port")
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.3)  # pyserial flushes the input once the port is set up
    return proc


def _send_paced(master: int, frames: list[bytes], out: Path, have: int) -> None:
    """One frame at a time, each written to the trace before the next goes out."""
    for i, f in enumerate(frames):
        os.write(master, encode_stream_frame(f))
        wait_until(lambda n=have + i + 1: frame_count(out) >= n, 10, f"frame {have + i + 1}")


def test_capture_serial_pty_survives_sigkill(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    dev = os.ttyname(slave)
    out = tmp_path / "bench.pstrace"
    board = PyBoard(0xB0A4D)
    sent = [board.birth()] + [board.sample(ts_ms=T0 + 1000 * i) for i in range(300)]
    try:
        proc = _start_serial_capture(dev, out)
        # a burst while the capture is running, then lock-step so that exactly one frame is
        # in flight when it is killed
        for f in sent[:150]:
            os.write(master, encode_stream_frame(f))
            time.sleep(0.0005)
        wait_until(lambda: frame_count(out) == 150, 10, "the burst")
        _send_paced(master, sent[150:200], out, 150)
        os.write(master, encode_stream_frame(sent[200]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kept, damaged = records(out)
        assert len(kept) in (200, 201) and len(damaged) <= 1
        assert [r.frame for r in kept] == sent[:len(kept)]  # a clean prefix, nothing garbled
        assert {r.site for r in kept} == {"bench"}
        assert all(b.rx_ms <= a.rx_ms for b, a in itertools.pairwise(kept))
        # what the killed capture never read is still in the terminal: drain it
        fcntl.fcntl(slave, fcntl.F_SETFL, fcntl.fcntl(slave, fcntl.F_GETFL) | os.O_NONBLOCK)
        left = b""
        while True:
            try:
                chunk = os.read(slave, 65536)
            except BlockingIOError:
                break
            if not chunk:  # pyserial left the terminal at VMIN 0: empty, not EAGAIN
                break
            left += chunk
        unread = [r.raw for r in FrameReader(verify=False).feed(left) if r.raw in sent]
        assert len(sent[:201]) - len(kept) - len(unread) <= 1  # at most one frame lost

        # a new capture appends to the same file, after the old one's last record
        proc = _start_serial_capture(dev, out)
        _send_paced(master, sent[201:], out, len(kept))
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert stdout.strip() == f"captured {len(sent) - 201} frames to {out}"
        after, damaged = records(out)
        assert [r.frame for r in after] == sent[:len(kept)] + sent[201:]
        assert len(damaged) <= 1
    finally:
        os.close(master)
        os.close(slave)


def test_capture_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pstrace"
    rc, _, err = cli(capsys, "capture", "--serial", str(tmp_path / "nope"), "-o", str(out))
    assert rc == 2 and err.count("\n") == 1 and f"cannot open {tmp_path / 'nope'}" in err
    rc, _, err = cli(capsys, "capture", "--serial", "/dev/null", "--topic", "x", "-o", str(out))
    assert rc == 2 and "--topic" in err
    rc, _, err = cli(capsys, "capture", "--mqtt", "http://x", "-o", str(out))
    assert rc == 2 and "mqtt://" in err
    not_trace = tmp_path / "notes.txt"
    not_trace.write_text("hello\n")
    rc, _, err = cli(capsys, "capture", "--mqtt", "mqtt://127.0.0.1:1", "-o", str(not_trace))
    assert rc == 2 and "not a packsentry trace" in err
    assert not_trace.read_text() == "hello\n"


# -- capture: MQTT ------------------------------------------------------------------------------


class Publisher:
    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-board",
                             protocol=mqtt.MQTTv5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_capture_mqtt_sigkill_and_resume_loses_nothing(broker, tmp_path: Path) -> None:
    out = tmp_path / "depot.pstrace"
    board = PyBoard(77)
    base = "packsentry/depot-3/77/"
    birth = board.birth()
    samples = [board.sample(ts_ms=T0 + 1000 * i) for i in range(400)]
    pub = Publisher(broker.port)
    proc = spawn("capture", "--mqtt", broker.url, "--client-id", "cap-test", "-o", str(out))
    try:
        pub.publish(base + "birth", birth, retain=True)  # reaches the capture when subscribed
        wait_until(lambda: frame_count(out) >= 1, 20, "the retained birth")
        pub.publish(base + "status", b"offline")  # a last will: not a frame

        def stream() -> None:
            for s in samples:
                pub.publish(base + "data", s)
                time.sleep(0.001)

        t = threading.Thread(target=stream)
        t.start()
        wait_until(lambda: frame_count(out) >= 100, 20, "100 frames")
        proc.send_signal(signal.SIGKILL)  # mid-stream: the broker queues the rest for us
        proc.wait(10)
        t.join(30)
        killed_at = frame_count(out)
        assert 100 <= killed_at < 1 + len(samples)
        proc = spawn("capture", "--mqtt", broker.url, "--client-id", "cap-test", "-o",
                     str(out))
        want = {birth, *samples}
        wait_until(lambda: want <= {r.frame for r in records(out)[0]}, 30, "every frame")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert stdout.startswith("captured ")
        kept, damaged = records(out)
        assert len(damaged) <= 1
        assert {r.site for r in kept} == {"depot-3"}
        # QoS 1: what was in flight at the kill comes again (a duplicate, never a loss)
        assert len(kept) - len(want) <= 25
        assert b"offline" not in {r.frame for r in kept}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pub.close()


# -- trace info -------------------------------------------------------------------------------


def test_trace_info_counts_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mixed.pstrace"
    a, b = PyBoard(1), PyBoard(2, n_cells=0)
    w = TraceWriter(path)
    w.append(T0, "north", a.birth())
    w.append(T0, "south", b.birth())
    for i in range(1, 11):
        w.append(T0 + 1000 * i, "north", a.sample(ts_ms=T0 + 1000 * i))
        w.append(T0 + 1000 * i, "south", b.sample(ts_ms=T0 + 1000 * i))
    frame = a.sample(ts_ms=T0 + 11_000)
    w.append(T0 + 11_000, "north", frame)
    w.append(T0 + 11_500, "north", frame)  # a re-send
    a.seq += 5  # five seqs that never arrive
    w.append(T0 + 12_000, "north", a.sample(ts_ms=T0 + 12_000))
    w.append(T0 + 13_000, "north", frame[:-1] + bytes([frame[-1] ^ 1]))  # CRC
    w.close()
    with open(path, "ab") as f:
        f.write(b"\x09\x01\x00")  # not COBS: a damaged record
        f.write(b"\x07\x01\x02")  # the writer died here
    rc, out, err = cli(capsys, "trace", "info", str(path), "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["frames"] == {"birth": 2, "sample": 23}  # a re-send counts too
    assert info["rejected"] == {"crc_mismatch": 1}
    assert info["duplicates"] == 1 and info["damaged_records"] == 1 and info["torn_tail"]
    assert info["records"] == 26
    assert info["span_s"] == 13.0 and info["rate_frames_per_s"] == round(26 / 13, 3)
    assert info["boards"]["1"] == {"sites": ["north"], "frames": 14,
                                   "boots": {"1": [0, 17]}, "missing_seqs": 5}
    assert info["boards"]["2"]["sites"] == ["south"]
    assert 10 < info["overhead_bytes_per_frame"] < 20
    rc, out, _ = cli(capsys, "trace", "info", str(path))
    assert rc == 0
    assert "frames: birth 2, sample 23" in out and "crc_mismatch 1" in out
    assert "damaged records: 1; torn last record" in out
    assert "board 1 (site north): 14 frames, boot 1 seq 0..17, 5 seqs missing" in out


def test_trace_info_refuses_what_is_not_a_trace(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04 not a trace")
    for path in (other, tmp_path / "missing.pstrace"):
        rc, _, err = cli(capsys, "trace", "info", str(path))
        assert rc == 2 and err.count("\n") == 1 and str(path) in err


# -- from-csv ---------------------------------------------------------------------------------

FROM_CSV = ("--board-id", "0x2A", "--cells", "1", "--rated-ah", "2.0", "--chemistry", "nmc")


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lab.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("text", "args", "where"), [
    ("time_s,pack_v,current_a,temp_c\n0,4.1,1.0,25\n10,4.0,abc,25\n", (),
     "line 3, column 3 (current_a): 'abc' is not a number"),
    ("time_s,pack_v,current_a,temp_c\n0,4.1,1.0,25\n\n5,4.0,1,25\n5,4.0,1,25\n", (),
     "line 5, column 1 (time_s): '5' is not after the previous row's time"),
    ("time_s,pack_v,current_a,temp_c\n0,4.1,1.0,25\n1,4.0,1.0\n", (),
     "line 3: 3 fields, the header has 4"),
    ("time_s,pack_v,temp_c\n0,4.1,25\n", (), "line 1: no 'current_a' column"),
    ("time_s,pack_v,current_a,temp_c\n0,-4.1,1.0,25\n", (),
     "line 2, column 2 (pack_v): -4.1 V is outside what the wire carries"),
    ("time_s,pack_v,current_a,temp_c\n0,4.1,1.0,nan\n", (),
     "line 2, column 4 (temp_c): 'nan' is not a finite number"),
    ("time_s,pack_v,current_a,temp_c\n,4.1,1.0,25\n", (),
     "line 2, column 1 (time_s): empty"),
    ("timestamp,pack_v,current_a,temp_c\n2026-01-01T00:00:00Z,4.1,1,25\nyesterday,4,1,25\n",
     (), "line 3, column 1 (timestamp): 'yesterday' is not an ISO-8601 time"),
    ("time_s,pack_v,current_a,temp_c_1,temp_c_3\n0,4.1,1,25,25\n", (),
     "line 1: temp_c_2 missing"),
    ("time_s,pack_v,current_a,temp_c\n0,4.1,1,25\n", ("--probes", "2"),
     "line 1: --probes 2 but the header has 1 temperature column(s)"),
    ("time_s,pack_v,current_a,temp_c,cell_v_1,cell_v_2\n0,8.2,1,25,4.1,4.1\n", (),
     "line 1: 2 cell_v columns but --cells 1"),
    ("time_s,pack_v,current_a,temp_c,pack_v\n0,4.1,1,25,4\n", (),
     "line 1, column 5: 'pack_v' appears twice"),
])
def test_from_csv_names_the_bad_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     text: str, args: tuple[str, ...], where: str) -> None:
    src = _csv(tmp_path, text)
    out = tmp_path / "out.pstrace"
    rc, stdout, err = cli(capsys, "trace", "from-csv", str(src), "-o", str(out), *FROM_CSV, *args)
    assert rc == 2 and stdout == ""
    assert err.startswith(f"packsentry trace: {src}") and where in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def _decoded(path: Path) -> list[dict]:
    return [codec.decode_frame(r.frame) for r in records(path)[0]]


def test_from_csv_missing_values_become_invalid_markers(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = _csv(tmp_path, "time_s,pack_v,current_a,temp_c,step\n"
                         "0,4.19,0,25.04,1\n"
                         "9.5,,2.0,25.2,1\n"
                         "19,4.05,,,2\n"
                         "3600,4.10,0.0,24.0,3\n")
    out = tmp_path / "lab.pstrace"
    rc, stdout, err = cli(capsys, "trace", "from-csv", str(src), "-o", str(out), *FROM_CSV)
    assert rc == 0, err
    assert "ignoring column(s) step" in err
    assert "birth + 4 samples of board 42" in stdout
    birth, *samples = _decoded(out)
    assert birth["msg_type"] == "birth" and birth["seq"] == 0 and birth["boot"] == 1
    p = birth["payload"]
    assert (p["chemistry"], p["cells_series"], p["rated_mah"], p["max_pack_mv"]) == \
        ("nmc", 1, 2000, 4200)
    assert (p["n_cells"], p["n_probes"], p["sample_period_ms"], p["riso_period_ms"]) == \
        (1, 1, 9500, 0)
    assert [s["seq"] for s in samples] == [1, 2, 3, 4]
    assert [s["ts_ms"] - trace_cli.CSV_EPOCH_MS for s in samples] == [0, 9500, 19000, 3600000]
    assert all(f["flags"] == codec.FLAGS["time_synced"] for f in [birth, *samples])
    rec = records(out)[0]
    assert [r.rx_ms for r in rec[1:]] == [s["ts_ms"] for s in samples]  # rx = board time
    m = [s["payload"] for s in samples]
    assert (m[0]["pack_mv"], m[0]["current_ma"], m[0]["temps_dc"], m[0]["cells_mv"]) == \
        (4190, 0, [250], [4190])  # one cell: the pack voltage is the cell's
    assert (m[1]["pack_mv"], m[1]["cells_mv"]) == (0xFFFF_FFFF, [0xFFFF])
    assert (m[2]["current_ma"], m[2]["temps_dc"]) == (0x7FFF_FFFF, [0x7FFF])
    assert all((x["riso_pos_kohm"], x["riso_neg_kohm"]) == (0xFFFF, 0xFFFF) for x in m)


def test_from_csv_cells_probes_insulation_and_iso_times(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _csv(tmp_path, "timestamp,pack_v,current_a,temp_c_1,temp_c_2,cell_v_1,cell_v_2,"
                         "riso_pos_kohm,riso_neg_kohm\n"
                         "2026-03-01T10:00:00+01:00,7.40,-1.5,20.0,21.5,3.70,3.70,900,\n"
                         "2026-03-01 09:00:01,7.39,-1.5,20.1,21.6,3.69,,99999,850\n")
    out = tmp_path / "pack.pstrace"
    rc, _, err = cli(capsys, "trace", "from-csv", str(src), "-o", str(out), "--board-id", "7",
                     "--cells", "2", "--rated-ah", "50", "--chemistry", "lfp", "--probes", "2",
                     "--site", "bay-2")
    assert rc == 0, err
    assert {r.site for r in records(out)[0]} == {"bay-2"}
    birth, s1, s2 = _decoded(out)
    p = birth["payload"]
    assert (p["max_pack_mv"], p["n_cells"], p["n_probes"], p["riso_period_ms"]) == \
        (7200, 2, 2, 1000)  # 2 x the LFP charge limit 3.60 V
    assert s2["ts_ms"] - s1["ts_ms"] == 1000  # +01:00 and naive UTC agree
    assert s1["ts_ms"] == 1_772_355_600_000
    assert s1["payload"]["current_ma"] == -1500 and s1["payload"]["temps_dc"] == [200, 215]
    assert s1["payload"]["cells_mv"] == [3700, 3700]
    assert s2["payload"]["cells_mv"] == [3690, 0xFFFF]
    assert (s1["payload"]["riso_pos_kohm"], s1["payload"]["riso_neg_kohm"]) == (900, 0xFFFF)
    assert s2["payload"]["riso_pos_kohm"] == 0xFFFD  # saturates below the markers


# -- replay -----------------------------------------------------------------------------------


def _alarm_trace(tmp_path: Path) -> Path:
    """A cell log with an undervoltage, a silence and a recovery; then a duplicate and a
    garbage frame appended."""
    rows = ["time_s,pack_v,current_a,temp_c"]
    t = 0.0
    for i in range(600):  # 10 min at 1 Hz: rest, then a discharge down the knee
        v = 4.1 if i < 100 else 4.0 - 1.3 * (i - 100) / 500
        rows.append(f"{t:.1f},{v:.3f},{0 if i < 100 else 2.0},{25 + i / 100:.2f}")
        t += 1.0
    t += 120  # two minutes of silence
    for _ in range(60):
        rows.append(f"{t:.1f},3.600,0,26")
        t += 1.0
    src = _csv(tmp_path, "\n".join(rows) + "\n")
    out = tmp_path / "alarms.pstrace"
    frames = trace_cli.csv_frames(src, trace_cli.CsvBoard(board_id=5, cells=1, rated_ah=2.0,
                                                          chemistry="nmc"))
    trace_cli.write_trace(out, "lab", frames)
    w = TraceWriter(out)
    rx, frame = frames[-1]
    w.append(rx + 10, "lab", frame)
    w.append(rx + 20, "lab", b"\x01" * 40)
    w.close()
    return out


def test_replay_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _alarm_trace(tmp_path)
    rc, first, err = cli(capsys, "replay", str(trace), "--json")
    assert rc == 0, err
    rc, second, _ = cli(capsys, "replay", str(trace), "--json", "--speed", "500",
                        "--db", str(tmp_path / "kept.db"))
    assert rc == 0
    assert first == second  # acceptance 4: same trace, same bytes (whatever the speed)
    assert first.count("\n") == 1
    doc = json.loads(first)
    assert doc["frames"] == {"ok": 661, "rejected": 1, "duplicates": 1, "gaps": 0}
    board = doc["boards"]["5"]
    assert set(board) == {"soh_pct", "capacity_ah", "r0_mohm", "estimates"}
    assert board["estimates"] and set(board["estimates"][0]) == \
        {"t_s", "capacity_ah", "soh_pct", "r0_mohm", "soc_pct"}
    events = [(a["rule"], a["event"], a["level"]) for a in doc["alarms"]]
    assert ("cell_undervoltage", "raised", 1) in events
    silent = [a for a in doc["alarms"] if a["rule"] == "board_silent"]
    # silent after 3 periods of 1 s (on the 1 s tick grid), cleared by the next sample
    assert [(a["event"], a["t_s"]) for a in silent] == [("raised", 602.0), ("cleared", 720.0)]
    assert {a["board_id"] for a in doc["alarms"]} == {5}
    assert all(set(a) == {"t_s", "board_id", "rule", "level", "event", "value", "threshold"}
               for a in doc["alarms"])
    assert (tmp_path / "kept.db").exists()


def test_replay_summary_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _alarm_trace(tmp_path)
    rc, out, err = cli(capsys, "replay", str(trace))
    assert rc == 0
    assert "661 frames ok, 1 rejected, 1 duplicates, 0 seq gaps" in out
    assert "SoH %" in out and "capacity Ah" in out
    assert re.search(r"\n\+0d 00:10:02\.000 +5 +L1 +raised +board_silent +board 5 \(lab\): ", out)
    assert "records in" in err and "records/s" in err
    rc, _, err = cli(capsys, "replay", str(trace), "--db", str(trace))
    assert rc == 2 and "exists" in err
    rc, _, err = cli(capsys, "replay", str(tmp_path / "lab.csv"))
    assert rc == 2 and "not a packsentry trace" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "replay", str(trace), "--batch-max", "0")
    assert rc == 2 and "--batch-max 0: must be at least 1" in err


def test_replay_results_do_not_depend_on_the_batch_size(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Batches of 7 frames and of the default: the same alarms and frames (estimates are
    stamped by batch, see docs/hil.md)."""
    trace = _alarm_trace(tmp_path)
    docs = []
    for extra in ([], ["--batch-max", "7"]):
        rc, out, err = cli(capsys, "replay", str(trace), "--json", *extra)
        assert rc == 0, err
        docs.append(json.loads(out))
    assert docs[0]["alarms"] == docs[1]["alarms"] and docs[0]["frames"] == docs[1]["frames"]


# -- acceptance 3: NASA B0005 through from-csv and replay -----------------------------------------


def _nasa_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """B0005's discharges on one time line (each at its start_time_iso; the charges between
    are not in the data: a gap), as a one-cell lab log. Returns each discharge's start (s from
    the first) and measured capacity."""
    d = soh_report.load_fixture(soh_report.FIXTURE_DIR / "B0005.npz")
    dis = d.test_type == soh_report.TEST_TYPES.index("discharge")
    start_of = dict(zip(d.discharge_cycle[dis], d.test_start_s[dis], strict=True))
    t = np.array([start_of[k] for k in d.cycle]) + d.time_s
    t0 = t[0]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "pack_v", "current_a", "temp_c"])
        w.writerows(zip((f"{x:.3f}" for x in t - t0), (f"{v:.4f}" for v in d.voltage_v),
                        (f"{-i:.4f}" for i in d.current_a), (f"{c:.2f}" for c in d.temp_c),
                        strict=True))
    order = np.argsort(d.discharge_cycle[dis])
    return d.test_start_s[dis][order] - t0, d.capacity_ah[dis][order]


def test_nasa_b0005_through_from_csv_and_replay(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    starts, measured = _nasa_csv(tmp_path / "B0005.csv")
    trace = tmp_path / "B0005.pstrace"
    rc, _, err = cli(capsys, "trace", "from-csv", str(tmp_path / "B0005.csv"), "-o", str(trace),
                     "--board-id", "5", "--cells", "1", "--rated-ah", "2.0", "--chemistry", "nmc")
    assert rc == 0, err
    t = time.perf_counter()
    rc, out, err = cli(capsys, "replay", str(trace), "--json")
    wall_s = time.perf_counter() - t
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["frames"] == {"ok": 50286, "rejected": 0, "duplicates": 0, "gaps": 0}
    est = doc["boards"]["5"]["estimates"]
    t_s = np.array([e["t_s"] for e in est])
    cap = np.array([e["capacity_ah"] for e in est])
    after = []
    for k in range(len(starts)):  # the latest estimate before the next discharge starts
        nxt = starts[k + 1] if k + 1 < len(starts) else np.inf
        after.append(cap[np.flatnonzero(t_s <= nxt)[-1]])
    err_ah = (np.array(after) - measured)[soh_report.SKIP_DISCHARGES:]
    mae_ah = float(np.mean(np.abs(err_ah)))
    print(f"NASA B0005 via from-csv + replay: MAE {mae_ah:.4f} Ah "
          f"({100 * mae_ah / 2.0:.2f} % of rated) over {err_ah.size} discharges; replay "
          f"{wall_s:.1f} s, {50286 / wall_s:.0f} frames/s")
    assert err_ah.size == 158
    assert mae_ah <= 0.02 * 2.0  # acceptance 3
    assert len(est) >= len(starts) - 1  # an estimate per discharge


def test_replay_estimate_history_is_each_units_newest_row_aggregated() -> None:
    """_history (numpy) against the rule it implements, one row at a time: after each time's
    rows, the board's values from every unit's newest row so far; an entry where the
    capacity changed. Units that start late, NULLs, a capacity that comes back."""
    from packsentry.hil.replay import Estimate, _history, _round, _t

    def _aggregate(units: dict[str, list[float | None]]) -> dict[str, float | None]:
        """The rule, unit by unit: the weakest cell limits a series string (capacity, SoH,
        SOC); resistances in series add up (R0, only when every unit has one)."""
        def known(xs: list[float | None]) -> list[float]:
            return [x for x in xs if x is not None and math.isfinite(x)]

        cap, soh, soc = (known(units[k]) for k in ("capacity_ah", "soh_pct", "soc_pct"))
        r0 = known(units["r0_mohm"])
        return {"capacity_ah": _round(min(cap), 4) if cap else None,
                "soh_pct": _round(min(soh), 2) if soh else None,
                "soc_pct": _round(min(soc), 2) if soc else None,
                "r0_mohm": _round(sum(r0), 3) if r0 and len(r0) == len(units["r0_mohm"])
                else None}

    rng = random.Random(7)
    rows = []
    for t in range(0, 60_000, 1000):
        for unit in range(-1, 12):
            if (unit == 4 and t < 20_000) or rng.random() < 0.2:
                continue
            def value(scale: float) -> float | None:
                return None if rng.random() < 0.1 else round(scale * rng.uniform(0.9, 1.0), 3)
            rows.append((t, unit, value(2.0), value(100.0), value(1.5), value(50.0)))
    latest: dict[int, tuple] = {}
    want: list[Estimate] = []
    for i, (t, unit, *values) in enumerate(rows):
        latest[unit] = tuple(values)
        if i + 1 < len(rows) and rows[i + 1][0] == t:
            continue
        agg = _aggregate({k: [v[j] for v in latest.values()] for j, k in enumerate(
            ("capacity_ah", "soh_pct", "r0_mohm", "soc_pct"))})
        e = Estimate(t_s=_t(t, -5000), **agg)
        if not want or e.capacity_ah != want[-1].capacity_ah:
            want.append(e)
    got = _history(rows, -5000)
    assert got == want and len(got) > 3 and _history([], 0) == []
