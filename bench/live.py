"""What the end-to-end benchmarks share: the real daemon as a process, a private Mosquitto,
publisher and subscriber processes, and real frames.

- `DaemonProc`: `python -m packsentry.host.cli daemon --config FILE` (what `packsentry daemon`
  runs) with a generated TOML; "ready" is the daemon's own systemd readiness message
  (`READY=1` on `NOTIFY_SOCKET`, a datagram socket this module binds), as systemd sees it.
  RSS from /proc/PID/status.
- `start_broker`: hil/broker.py's private Mosquitto on a free loopback port (never the
  system's 1883), with `max_queued_messages 0` added to its config: Mosquitto's default keeps
  at most 1 000 queued QoS 1 messages per offline session and silently DROPS the rest, which
  would make "no sample lost" a property of the broker's config instead of the daemon.
- `Fleet`: boards of a given shape; births, samples and batch frames encoded by
  protocol/codec.py (`encode_frame`), with per-board cell voltages, probe temperatures and a
  drive-like current, seqs and board times as a 1 Hz board makes them.
- `publish`: processes of their own that encode their boards' frames and publish them QoS 1
  (as the firmware does), births retained, over a plain socket (`_Publisher`: MQTT 3.1.1
  packets made before the clock starts, so the load costs the machine what remote boards
  cost a gateway); returns what they sent.
- `subscriber_process`: the baselines, a process each: a do-nothing paho subscriber that
  counts, and a naive one (paho on_message -> compiled construct parse -> SQLite insert,
  commit every 1 000 frames).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# -- the daemon -----------------------------------------------------------------------------------


class DaemonProc:
    """The daemon as its users run it, a process of its own with a generated config."""

    def __init__(self, workdir: Path, name: str, config: str, *,
                 env: dict[str, str] | None = None) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "depot.db"
        self.conf = self.dir / "daemon.toml"
        self.conf.write_text(f'[storage]\npath = "{self.db}"\n' + config)
        self.log = self.dir / "daemon.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start it and wait for READY=1; returns the seconds from spawn to ready."""
        sock_path = self.dir / "notify.sock"
        if sock_path.exists():
            sock_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(sock_path),
               **self.env}
        try:
            with open(self.log, "ab") as log:
                t0 = time.perf_counter()
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "packsentry.host.cli", "daemon", "--config",
                     str(self.conf)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            deadline = t0 + timeout_s
            while time.perf_counter() < deadline:
                try:
                    msg = sock.recv(4096)
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n"
                                           f"{self.text()[-3000:]}") from None
                    continue
                if b"READY=1" in msg.split(b"\n"):
                    return time.perf_counter() - t0
            raise RuntimeError(f"daemon not ready within {timeout_s} s:\n{self.text()[-3000:]}")
        finally:
            sock.close()
            sock_path.unlink(missing_ok=True)

    def wait_log(self, needle: str, timeout_s: float = 30.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text()[after:]:
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {needle!r} in the daemon's log within {timeout_s} s:\n"
                                   f"{self.text()[-3000:]}")
            time.sleep(0.02)

    def subscribe_offline(self) -> None:
        """Start, wait for the broker connection (the persistent session and its
        subscriptions), stop: the broker now queues the daemon's messages."""
        n = len(self.text())
        self.start()
        self.wait_log("connected to", after=n)
        time.sleep(0.2)  # the SUBACK
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 120.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def query(self, sql: str, *args: Any) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def rss(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes, from /proc/PID/status."""
        return proc_rss(self.pid)

    def stats(self) -> dict[str, Any]:
        rows = self.query("SELECT value FROM meta WHERE key = 'daemon_stats'")
        return json.loads(rows[0][0]) if rows else {}


def proc_rss(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return rss, hwm


def mqtt_config(port: int, client_id: str, site: str) -> str:
    topics = ", ".join(f'"packsentry/{site}/+/{leaf}"' for leaf in ("birth", "data", "status"))
    return (f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nclient_id = "{client_id}"\n'
            f"topics = [{topics}]\n")


# -- the broker -----------------------------------------------------------------------------------


def start_broker(workdir: Path) -> Any:
    from packsentry.hil.broker import Broker

    b = Broker(workdir)
    # unbounded per-session queues (see the module doc); a deployment needs the same
    with open(b.conf, "a") as f:
        f.write("max_queued_messages 0\n")
    b.start()
    return b


# -- frames ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    n_cells: int = 96
    n_probes: int = 8
    chemistry: str = "nmc"
    rated_mah: int = 50_000

    def probe_cell(self) -> list[int]:
        step = max(self.n_cells // max(self.n_probes, 1), 1)
        return [min(i * step, self.n_cells - 1) for i in range(self.n_probes)]


class Fleet:
    """Boards `first_id .. first_id + n - 1`, all of one shape; frames as 1 Hz boards make them
    (seq k at board time ts0 + k periods; ts0 defaults to now), frames from codec.encode_frame."""

    VARIANTS = 16  # measurement sets per board, cycled (cells drift, current steps)

    def __init__(self, n_boards: int, shape: Shape = Shape(), first_id: int = 0x10000,
                 boot: int = 1, ts0_ms: int | None = None, period_ms: int = 1000) -> None:
        self.ids = list(range(first_id, first_id + n_boards))
        self.shape = shape
        self.boot = boot
        self.ts0_ms = int(time.time() * 1000) if ts0_ms is None else ts0_ms
        self.period_ms = period_ms

    def split(self, parts: int) -> list[Fleet]:
        """The fleet in `parts` disjoint fleets (one per publisher process)."""
        out = []
        for i in range(parts):
            ids = self.ids[i::parts]
            if ids:
                f = Fleet(0, self.shape, boot=self.boot, ts0_ms=self.ts0_ms,
                          period_ms=self.period_ms)
                f.ids = ids
                out.append(f)
        return out

    def _header(self, msg_type: str, board: int, seq: int, ts_ms: int) -> dict[str, Any]:
        from packsentry.protocol import codec

        return {"msg_type": msg_type, "flags": codec.FLAGS["time_synced"], "board_id": board,
                "boot": self.boot, "seq": seq, "ts_ms": ts_ms}

    def birth(self, board: int) -> bytes:
        from packsentry.protocol import codec
        from packsentry.protocol.layout import schema_fingerprint

        s = self.shape
        per_cell = 3650 if s.chemistry == "lfp" else 4200
        return codec.encode_frame({**self._header("birth", board, 0, self.ts0_ms), "payload": {
            "fw_major": 1, "fw_minor": 0, "fw_patch": 0,
            "schema_fingerprint": schema_fingerprint(), "chemistry": s.chemistry,
            "cells_series": s.n_cells, "rated_mah": s.rated_mah,
            "max_pack_mv": per_cell * s.n_cells, "max_temp_dc": 600,
            "sample_period_ms": self.period_ms, "riso_period_ms": 10_000, "current_sensor": "shunt",
            "config_error": 0, "n_probes": s.n_probes, "n_cells": s.n_cells,
            "probe_cell": s.probe_cell()}})

    def measurements(self, board: int) -> list[dict[str, Any]]:
        rng = random.Random(board)
        s = self.shape
        base = [3650 + rng.randint(-15, 15) for _ in range(s.n_cells)]
        temps = [250 + rng.randint(-20, 20) for _ in range(s.n_probes)]
        levels = (-20_000, 0, 10_000, 25_000, 50_000, 0, -10_000, 5_000)
        out = []
        for v in range(self.VARIANTS):
            cur = levels[v % len(levels)]
            drop = cur * 2 // 1000  # ~2 mOhm per cell
            cells = [c - drop + rng.randint(-2, 2) for c in base]
            out.append({"pack_mv": sum(cells), "current_ma": cur, "riso_pos_kohm": 5000,
                        "riso_neg_kohm": 5200, "alarm_level": 0, "alarm_flags": 0,
                        "temps_dc": [t + (v % 2) for t in temps], "cells_mv": cells})
        return out

    def frames(self, seq0: int, n_samples: int, per_msg: int = 1,
               overrides: dict[str, Any] | None = None) -> Iterator[tuple[int, bytes, int]]:
        """(board, frame, samples in it) for samples seq0 .. seq0 + n_samples - 1 of every
        board, board-interleaved in time order (second k of every board, then k + 1): what a
        fleet sends. per_msg > 1: batch frames of per_msg samples (n_samples a multiple)."""
        from packsentry.protocol import codec

        s = self.shape
        meas = {b: self.measurements(b) for b in self.ids}
        for seq in range(seq0, seq0 + n_samples, per_msg):
            for b in self.ids:
                ms = meas[b]
                ts = self.ts0_ms + self.period_ms * seq
                if per_msg == 1:
                    m = ms[seq % len(ms)]
                    if overrides:
                        m = {**m, **overrides}
                    yield b, codec.encode_frame({**self._header("sample", b, seq, ts),
                                                 "payload": {"n_probes": s.n_probes,
                                                             "n_cells": s.n_cells, **m}}), 1
                else:
                    recs = [{"dt_ms": self.period_ms * i, **ms[(seq + i) % len(ms)]}
                            for i in range(per_msg)]
                    yield b, codec.encode_frame({**self._header("batch", b, seq, ts), "payload": {
                        "n_samples": per_msg, "n_probes": s.n_probes, "n_cells": s.n_cells,
                        "samples": recs}}), per_msg


# -- worker processes -----------------------------------------------------------------------------
#
# Publishers and baseline subscribers run as `python -m bench.live ROLE` with their arguments as
# JSON (argv) and their result as JSON on stdout (not multiprocessing: its spawn start method
# re-imports the parent's __main__, which for `python -m bench` is the harness itself).


class Worker:
    def __init__(self, role: str, args: dict[str, Any], pass_fds: tuple[int, ...] = ()) -> None:
        self.role = role
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.live", role,
                                      json.dumps(args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=REPO, pass_fds=pass_fds,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})

    def result(self, timeout_s: float = 600.0) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise TimeoutError(f"{self.role} worker: no result within {timeout_s} s; "
                               f"{err.decode(errors='replace')[-2000:]}") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.role} worker failed ({self.proc.returncode}):\n"
                               f"{err.decode(errors='replace')[-3000:]}")
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def fleet_args(fleet: Fleet) -> dict[str, Any]:
    s = fleet.shape
    return {"ids": fleet.ids, "boot": fleet.boot, "ts0_ms": fleet.ts0_ms,
            "period_ms": fleet.period_ms,
            "shape": [s.n_cells, s.n_probes, s.chemistry, s.rated_mah]}


def fleet_from(a: dict[str, Any]) -> Fleet:
    f = Fleet(0, Shape(*a["shape"]), boot=a["boot"], ts0_ms=a["ts0_ms"],
              period_ms=a["period_ms"])
    f.ids = list(a["ids"])
    return f


def _mqtt_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


class _Publisher:
    """A load generator's MQTT 3.1.1 publisher on a plain socket: QoS 1 PUBLISH packets made
    before the clock starts, written in paced chunks, their PUBACKs counted by a reader
    thread. A board's frames cost a gateway nothing but the broker's and the daemon's work;
    paho's ~90 us of Python a publish made the load generator itself take half of the 2
    cores, and on a slower machine it could not make 10 000 frames/s at all."""

    WINDOW = 30_000  # unacknowledged messages at most (packet ids repeat every 65 535)

    def __init__(self, port: int, client_id: str) -> None:
        import threading

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = client_id.encode()
        # protocol "MQTT" level 4, clean session, no keep-alive
        self.sock.sendall(_packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x00"
                                  + len(cid).to_bytes(2, "big") + cid))
        connack = self._read(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"the broker refused the publisher: CONNACK {connack.hex()}")
        self.sock.settimeout(None)
        self.acked = 0
        self.next_id = 0
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = self.sock.recv(n - len(buf))
            if not got:
                raise ConnectionError("the broker closed the publisher's connection")
            buf += got
        return buf

    def _read_acks(self) -> None:
        buf = b""
        while not self._done.is_set():
            try:
                got = self.sock.recv(1 << 16)
            except OSError:
                return
            if not got:
                return
            buf += got
            pos = 0
            # whole packets: the broker sends this client PUBACKs only (no subscriptions, no
            # keep-alive), each a type byte and a remaining length under 128, then the body
            while len(buf) - pos >= 2 and len(buf) - pos >= 2 + buf[pos + 1]:
                if buf[pos] >> 4 == 4:  # PUBACK
                    self.acked += 1
                pos += 2 + buf[pos + 1]
            buf = buf[pos:]

    def packet(self, topic: str, payload: bytes, retain: bool = False) -> bytes:
        """A QoS 1 PUBLISH with the next packet id."""
        self.next_id = self.next_id % 65_535 + 1
        t = topic.encode()
        return _packet(0x32 | retain, len(t).to_bytes(2, "big") + t
                       + self.next_id.to_bytes(2, "big") + payload)

    def send(self, packets: list[bytes], rate_hz: float = 0.0) -> None:
        """Every packet, at rate_hz packets/s (0: as fast as the socket takes them)."""
        t0 = time.perf_counter()
        sent = 0
        while sent < len(packets):
            due = len(packets) if not rate_hz else min(
                len(packets), int((time.perf_counter() - t0) * rate_hz) + 1)
            due = min(due, sent + 512, self.acked + self.WINDOW)
            if due > sent:
                self.sock.sendall(b"".join(packets[sent:due]))
                sent = due
            else:
                time.sleep(0.001)

    def wait_acked(self, n: int, timeout_s: float, what: str) -> None:
        _wait(lambda: self.acked >= n, timeout_s, what)

    def close(self) -> None:
        self._done.set()
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()


def _packet(first: int, body: bytes) -> bytes:
    """An MQTT packet: its first byte, the remaining length (variable-length), the body."""
    n, length = len(body), bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def _publish_main(a: dict[str, Any]) -> dict[str, Any]:
    """Worker: encode the frames, connect, publish births (retained) then data, QoS 1, at
    `rate_hz` messages/s (0: as fast as the broker takes them); wait for every PUBACK; the
    counts."""
    fleet = fleet_from(a["fleet"])
    per_msg, rate_hz, site = a["per_msg"], a["rate_hz"], a["site"]
    frames = list(fleet.frames(a["seq0"], a["n_samples"], per_msg)) if a["n_samples"] else []
    c = _Publisher(a["port"], f"bench-pub-{os.getpid()}")
    sent = 0
    if a["births"]:
        c.send([c.packet(f"packsentry/{site}/{b}/birth", fleet.birth(b), retain=True)
                for b in fleet.ids])
        sent += len(fleet.ids)
        c.wait_acked(sent, 60, "birth PUBACKs")
    packets = [c.packet(f"packsentry/{site}/{b}/data", frame) for b, frame, _ in frames]
    t0 = time.perf_counter()
    c.send(packets, rate_hz)
    sent += len(packets)
    c.wait_acked(sent, 600, "PUBACKs")
    t1 = time.perf_counter()
    c.close()
    return {"messages": len(frames), "samples": sum(k for _, _, k in frames),
            "births": len(fleet.ids) * a["births"], "seconds": t1 - t0,
            "bytes": sum(len(f) for _, f, _ in frames)}


def publish(port: int, site: str, fleet: Fleet, seq0: int, n_samples: int, *, per_msg: int = 1,
            processes: int = 2, births: bool = True, rate_hz: float = 0.0,
            timeout_s: float = 600.0) -> dict[str, Any]:
    """Publish from `processes` publisher processes (the fleet split between them); blocks
    until the broker has acknowledged every message. rate_hz: messages/s per process."""
    workers = [Worker("publish", {"port": port, "site": site, "fleet": fleet_args(part),
                                  "seq0": seq0, "n_samples": n_samples, "per_msg": per_msg,
                                  "births": births, "rate_hz": rate_hz})
               for part in fleet.split(processes)]
    try:
        results = [w.result(timeout_s) for w in workers]
    finally:
        for w in workers:
            w.kill()
    return {k: sum(r[k] for r in results) for k in ("messages", "samples", "births", "bytes")} | {
        "seconds": max(r["seconds"] for r in results)}


def _subscribe_main(a: dict[str, Any]) -> dict[str, Any]:
    """Worker. prepare: create the persistent session (subscribe) and leave. Else resume it
    and take `expected` data messages: mode "count" only counts them; "naive" parses each with
    the compiled construct schema and inserts its samples into SQLite, a commit per 1 000
    frames. Returns the arrival time (perf_counter) of every data message."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    prepare, expected, mode = a["prepare"], a["expected"], a["mode"]
    c = _mqtt_client(a["client_id"])
    topics = [f"packsentry/{a['site']}/+/{leaf}" for leaf in ("birth", "data", "status")]
    times: list[float] = []
    samples = [0]
    flags = {"subscribed": False, "finished": expected == 0}
    handle = _naive_handler(a["db"], samples) if mode == "naive" and not prepare else None

    def on_connect(cl: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        cl.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])

    def on_subscribe(*_a: Any) -> None:
        flags["subscribed"] = True

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if not msg.topic.endswith("/data"):
            return
        if handle is not None:
            handle(msg.payload)
        times.append(time.perf_counter())
        if len(times) >= expected:
            flags["finished"] = True

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    from packsentry.host.config import MqttConfig

    props.ReceiveMaximum = MqttConfig.receive_maximum  # as the daemon's default
    c.connect("127.0.0.1", a["port"], 60, clean_start=False, properties=props)
    c.loop_start()
    _wait(lambda: flags["subscribed"], 20, "subscribe")
    if not prepare:
        _wait(lambda: flags["finished"], a["timeout_s"],
              f"{expected} messages ({len(times)} came)")
        if handle is not None:
            handle(None)  # the last commit
    c.disconnect()
    c.loop_stop()
    return {"times": times, "samples": samples[0]}


def _naive_handler(db_path: str, samples: list[int]) -> Any:
    """The naive subscriber: CRC checked, compiled construct parse, a row per sample, a commit
    every 1 000 frames; the same durability as the daemon's default (WAL, synchronous FULL)."""
    import zlib

    from packsentry.protocol import schema

    frame_parser = schema.Frame.compile()
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS samples (board_id INTEGER, boot INTEGER, "
               "seq INTEGER, ts_ms INTEGER, pack_mv INTEGER, current_ma INTEGER, "
               "temps BLOB, cells BLOB, PRIMARY KEY (board_id, boot, seq)) WITHOUT ROWID")
    state = {"frames": 0, "open": False}
    ins = "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

    def row(f: Any, seq: int, ts: int, m: Any) -> tuple:
        return (f.board_id, f.boot, seq, ts, m.pack_mv, m.current_ma,
                b"".join(t.to_bytes(2, "little", signed=True) for t in m.temps_dc),
                b"".join(v.to_bytes(2, "little") for v in m.cells_mv))

    def handle(payload: bytes | None) -> None:
        if payload is None:
            if state["open"]:
                db.execute("COMMIT")
            return
        if zlib.crc32(payload[:-4]) != int.from_bytes(payload[-4:], "little"):
            return
        f = frame_parser.parse(payload)
        if not state["open"]:
            db.execute("BEGIN")
            state["open"] = True
        p = f.payload
        if f.msg_type == "sample":
            db.execute(ins, row(f, f.seq, f.ts_ms, p))
            samples[0] += 1
        elif f.msg_type == "batch":
            for i, r in enumerate(p.samples):
                db.execute(ins, row(f, f.seq + i, f.ts_ms + r.dt_ms, r))
                samples[0] += 1
        state["frames"] += 1
        if state["frames"] % 1000 == 0:
            db.execute("COMMIT")
            state["open"] = False

    return handle


class Subscriber:
    """A baseline subscriber, a process of its own each time, on a persistent session."""

    def __init__(self, port: int, client_id: str, site: str, mode: str, db_path: Path) -> None:
        self.args = {"port": port, "client_id": client_id, "site": site, "mode": mode,
                     "db": str(db_path)}

    def prepare(self) -> None:
        Worker("subscribe", {**self.args, "prepare": True, "expected": 0,
                             "timeout_s": 60}).result(60)

    def start(self, expected: int, timeout_s: float = 600) -> Worker:
        return Worker("subscribe", {**self.args, "prepare": False, "expected": expected,
                                    "timeout_s": timeout_s})


# -- rates ----------------------------------------------------------------------------------------


def stream_bytes(fleet: Fleet, seq0: int, n_samples: int, per_msg: int = 1,
                 births: bool = True) -> tuple[bytes, int, int]:
    """A board-side byte stream (COBS frames, 0x00 delimiters): the births, then the samples.
    Returns (stream, data frames, samples)."""
    from packsentry.protocol.stream import encode_stream_frame

    parts = [encode_stream_frame(fleet.birth(b)) for b in fleet.ids] if births else []
    frames = samples = 0
    for _, f, k in fleet.frames(seq0, n_samples, per_msg):
        parts.append(encode_stream_frame(f))
        frames += 1
        samples += k
    return b"".join(parts), frames, samples


def _serial_write_main(a: dict[str, Any]) -> dict[str, Any]:
    """Worker: the board side of a pseudo-terminal (`fd`, its master): write the stream as fast
    as the pty takes it (blocking writes: the kernel's flow control). What the daemon sends
    back (acks, time syncs) is read by the parent's `Pty`."""
    fd = a["fd"]
    data, frames, samples = stream_bytes(fleet_from(a["fleet"]), a["seq0"], a["n_samples"],
                                         a["per_msg"], a["births"])
    view = memoryview(data)
    t0 = time.perf_counter()
    pos = 0
    while pos < len(view):
        pos += os.write(fd, view[pos:pos + 65536])
    return {"bytes": len(data), "frames": frames, "samples": samples,
            "seconds": time.perf_counter() - t0}


class Pty:
    """A pseudo-terminal in raw mode; the daemon opens `path` (the slave) as its serial port.
    A thread reads and drops what comes back on the master, as a board's UART would (else
    the daemon's command writes would block once the pty's buffer is full)."""

    def __init__(self) -> None:
        import threading
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        import select

        while not self._stop:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if not r:
                continue
            try:
                os.read(self.master, 65536)  # dropped
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialWriter(Worker):
    def __init__(self, fd: int, fleet: Fleet, seq0: int, n_samples: int, per_msg: int = 1,
                 births: bool = True) -> None:
        super().__init__("serial_write", {
            "fd": fd, "fleet": fleet_args(fleet), "seq0": seq0, "n_samples": n_samples,
            "per_msg": per_msg, "births": births}, pass_fds=(fd,))


def _probe_main(a: dict[str, Any]) -> dict[str, Any]:
    """Worker: alternate two kinds of probe, one every interval_s/2, one clock for both:
    - broker round trip: publish a frame-sized message (QoS 1) on bench/echo/<i> from one
      client, its arrival at another client subscribed to bench/echo/#;
    - alarm: publish a sample that crosses the L3 cell over-voltage threshold (QoS 1, as a
      board) for probe board i (a board seen only by its birth, so a new alarm each time), the
      daemon's alarm event for that board (level >= 3) arriving at the same subscriber.
    Returns the latencies in seconds (None: nothing within timeout_s)."""
    import threading

    from paho.mqtt.subscribeoptions import SubscribeOptions

    site, port = a["site"], a["port"]
    fleet = fleet_from(a["fleet"])
    n_cells = fleet.shape.n_cells
    cells = [3650] * n_cells
    cells[n_cells // 2] = a["cross_mv"]
    crossing = {b: f for b, f, _ in fleet.frames(1, 1, overrides={
        "cells_mv": cells, "pack_mv": sum(cells)})}
    arrived: dict[str, float] = {}
    events: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def expect(key: str) -> threading.Event:
        with lock:
            ev = events[key] = threading.Event()
        return ev

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        t = time.perf_counter()
        if msg.topic.startswith("bench/echo/"):
            key = msg.topic
        else:
            d = json.loads(msg.payload)
            if d.get("level", 0) < 3 or d.get("event") != "raised":
                return
            key = f"alarm/{d['board_id']}"
        with lock:
            if key not in arrived:
                arrived[key] = t
            ev = events.get(key)
        if ev is not None:
            ev.set()

    sub = _mqtt_client(f"bench-probe-sub-{os.getpid()}")
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_connect = lambda cl, *_a: cl.subscribe([
        (f"packsentry/{site}/+/alarm", SubscribeOptions(qos=1)),
        ("bench/echo/#", SubscribeOptions(qos=1))])
    sub.connect("127.0.0.1", port, 60)
    sub.loop_start()
    pub = _mqtt_client(f"bench-probe-pub-{os.getpid()}")
    pub.connect("127.0.0.1", port, 60)
    pub.loop_start()
    if not subscribed.wait(20):
        raise TimeoutError("probe subscribe")
    _wait(pub.is_connected, 20, "probe publisher connect")
    time.sleep(a["warmup_s"])
    half = a["interval_s"] / 2
    sent: dict[str, float] = {}  # key -> publish time; probes go out on schedule, not waiting
    kinds_of: dict[str, str] = {}
    t_first = time.perf_counter()
    k = 0
    for i, b in enumerate(fleet.ids):
        for kind in (("echo", "alarm") if i % 2 == 0 else ("alarm", "echo")):
            due = t_first + k * half
            k += 1
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if kind == "echo":
                key, topic = f"bench/echo/{i}", f"bench/echo/{i}"
            else:
                key, topic = f"alarm/{b}", f"packsentry/{site}/{b}/data"
            expect(key)
            kinds_of[key] = kind
            sent[key] = time.perf_counter()
            pub.publish(topic, crossing[b], qos=1)
    deadline = time.perf_counter() + a["timeout_s"]  # then the stragglers, for a while
    for key in sent:
        events[key].wait(max(0.0, deadline - time.perf_counter()))
    with lock:
        lat = {key: (arrived[key] - t0 if key in arrived else None) for key, t0 in sent.items()}
    rt = [v for key, v in lat.items() if kinds_of[key] == "echo"]
    alarm = [v for key, v in lat.items() if kinds_of[key] == "alarm"]
    span = time.perf_counter() - t_first
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return {"broker_rt_s": rt, "alarm_s": alarm, "span_s": span}


ROLES = {"probe": _probe_main, "publish": _publish_main, "subscribe": _subscribe_main,
         "serial_write": _serial_write_main}

if __name__ == "__main__":
    sys.stdout.write(json.dumps(ROLES[sys.argv[1]](json.loads(sys.argv[2]))))


def commit_timeline(d: DaemonProc, board: int, boot: int, seq0: int, n_boards: int,
                    expected: int, *, poll_s: float = 0.1, stall_s: float = 20.0,
                    timeout_s: float = 600.0) -> list[tuple[float, int]]:
    """(perf_counter, samples committed) while the daemon works through `expected` samples of
    `n_boards` boards sent board-interleaved from seq0: one primary-key lookup per poll (the
    newest committed seq of one board, from the seqs the daemon records as committed in the
    transaction that stores them, times the boards), read from the daemon's database as any
    reader would. Ends when all are committed, or nothing moved for stall_s."""
    con = sqlite3.connect(f"file:{d.db}?mode=ro", uri=True, timeout=30)
    q = "SELECT max(hi) - 1 FROM seq_ranges WHERE board_id = ? AND boot = ?"
    out: list[tuple[float, int]] = []
    t_end = time.perf_counter() + timeout_s
    last_move = time.perf_counter()
    try:
        while True:
            try:
                (top,) = con.execute(q, (board, boot)).fetchone()
            except sqlite3.OperationalError:  # not created yet
                top = None
            t = time.perf_counter()
            n = 0 if top is None or top < seq0 else min(expected, (top - seq0 + 1) * n_boards)
            if not out or n != out[-1][1]:
                last_move = t
            out.append((t, n))
            if n >= expected or t - last_move > stall_s or t > t_end:
                return out
            d.check()
            time.sleep(poll_s)
    finally:
        con.close()


def timeline_rate(tl: list[tuple[float, int]], total: int,
                  t_start: float | None = None) -> tuple[float, float]:
    """Sustained rate from a commit timeline: the samples committed after the first commit
    seen, over the time from that poll to the poll that saw the last one. The daemon commits
    a micro-batch at a time (up to thousands of samples), so a window between two quantiles
    would land between steps; first to last commit is exact to the poll interval. When
    everything came in one commit (tiny runs), from `t_start`. Returns (rate, window s)."""
    first = next(((t, n) for t, n in tl if n > 0), None)
    last = next(((t, n) for t, n in tl if n >= total), None)
    if first is None or last is None:
        return float("nan"), 0.0
    if first[1] >= total:
        if t_start is None:
            return float("nan"), 0.0
        return total / (last[0] - t_start), last[0] - t_start
    return (total - first[1]) / (last[0] - first[0]), last[0] - first[0]


def arrival_rate(times: list[float]) -> tuple[float, float]:
    """The same for a subscriber that records each message: messages after the first, over
    the time from the first to the last. Returns (rate, window s)."""
    if len(times) < 2:
        return float("nan"), 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span, span


def count_samples(d: DaemonProc, where: str = "", *args: Any) -> int:
    return int(d.query(f"SELECT count(*) FROM samples {where}", *args)[0][0])


def count_rejected(d: DaemonProc) -> int:
    return int(d.query("SELECT count(*) FROM rejected")[0][0])


def lost(stored: int, expected: int, rejected: int, who: str = "the daemon") -> str:
    """'' when every sample is stored and none rejected, else what went missing (a figure
    with such a note fails)."""
    if stored == expected and not rejected:
        return ""
    return f"{who} stored {stored} of {expected} samples ({rejected} rejected)"


def wait_count(d: DaemonProc, expected: int, *, stall_s: float = 10.0,
               timeout_s: float = 60.0, where: str = "", args: tuple = ()) -> tuple[int, bool]:
    """Poll the exact count of stored samples until it reaches `expected`, stops moving for
    stall_s, or timeout_s passes. Returns (count, stalled)."""
    t_end = time.monotonic() + timeout_s
    last, moved = -1, time.monotonic()
    while True:
        n = count_samples(d, where, *args)
        now = time.monotonic()
        if n != last:
            last, moved = n, now
        if n >= expected:
            return n, False
        if now - moved >= stall_s:
            return n, True
        if now >= t_end:
            return n, False
        d.check()
        time.sleep(0.25)


def wait_births(d: Any, n_boards: int, timeout_s: float, poll_s: float = 0.1) -> None:
    """Until the daemon `d` has taken every board's birth (its profile stored)."""
    deadline = time.monotonic() + timeout_s
    while d.query("SELECT count(*) FROM boards WHERE chemistry IS NOT NULL")[0][0] < n_boards:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not take every birth within {timeout_s:g} s")
        d.check()
        time.sleep(poll_s)
