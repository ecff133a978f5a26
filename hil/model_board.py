"""A model board: the protocol side of the firmware in Python, fast.

It does what firmware/app.py does on the wire (birth, samples and batches with per-boot seqs,
a store of every sample until the host's cumulative ack releases it, a re-send of the store
flagged `historical` after a reconnect or a `rebirth`, command acks), so thousands of frames a
second can go through a real broker or a real pseudo-terminal. It is not the firmware: the
firmware itself runs in the MicroPython VM (the virtual board). The model board stands in
where numbers matter more than the board's code: the daemon's tests, the demo's depot of
packs, load benchmarks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from packsentry.protocol import codec
from packsentry.protocol.errors import ProtocolError
from packsentry.protocol.layout import schema_fingerprint
from packsentry.protocol.stream import FrameReader, encode_stream_frame

HISTORICAL = codec.FLAGS["historical"]
TIME_SYNCED = codec.FLAGS["time_synced"]


@dataclass(frozen=True)
class Profile:
    """What the board's birth says about its pack."""

    chemistry: str = "nmc"
    n_cells: int = 4  # cell voltages per sample (0: not measured; cells_series still counts)
    cells_series: int = 0  # 0: n_cells
    n_probes: int = 2
    probe_cell: tuple[int, ...] = (0, 0xFFFF)
    rated_mah: int = 50_000
    max_pack_mv: int = 0  # 0: 4.2 V (NMC) or 3.65 V (LFP) per cell
    max_temp_dc: int = 600
    sample_period_ms: int = 1000
    riso_period_ms: int = 10_000

    def series(self) -> int:
        return self.cells_series or max(self.n_cells, 1)


class PyBoard:
    def __init__(self, board_id: int = 0xC0FFEE, boot: int = 1, n_cells: int = 4,
                 chemistry: str = "nmc", key: bytes | None = None,
                 profile: Profile | None = None) -> None:
        self.board_id = board_id
        self.boot = boot
        self.profile = profile or Profile(chemistry=chemistry, n_cells=n_cells)
        self.n_cells = self.profile.n_cells
        self.chemistry = self.profile.chemistry
        self.key = key
        self.seq = 0
        self.synced = False
        self.store: OrderedDict[int, dict[str, Any]] = OrderedDict()  # first seq -> frame
        self.acked: tuple[int, int] = (0, -1)
        self.acks: list[tuple[int, int]] = []
        self.sample_seqs: list[int] = []  # every sample made
        self.commands: list[str] = []
        self.lock = threading.Lock()

    def _frame(self, msg_type: str, payload: dict[str, Any], ts_ms: int | None = None,
               flags: int = 0) -> dict[str, Any]:
        f = {"msg_type": msg_type, "flags": flags | (TIME_SYNCED if self.synced else 0),
             "board_id": self.board_id, "boot": self.boot, "seq": self.seq,
             "ts_ms": ts_ms if ts_ms is not None else time.time_ns() // 1_000_000,
             "payload": payload}
        self.seq += 1
        return f

    def encode(self, f: dict[str, Any]) -> bytes:
        return codec.encode_frame(f, key=self.key)

    def birth(self) -> bytes:
        p = self.profile
        per_cell_mv = 3650 if p.chemistry == "lfp" else 4200
        with self.lock:
            return self.encode(self._frame("birth", {
                "fw_major": 0, "fw_minor": 1, "fw_patch": 0,
                "schema_fingerprint": schema_fingerprint(), "chemistry": p.chemistry,
                "cells_series": p.series(), "rated_mah": p.rated_mah,
                "max_pack_mv": p.max_pack_mv or per_cell_mv * p.series(),
                "max_temp_dc": p.max_temp_dc, "sample_period_ms": p.sample_period_ms,
                "riso_period_ms": p.riso_period_ms, "current_sensor": "shunt",
                "config_error": 0, "n_probes": p.n_probes, "n_cells": p.n_cells,
                "probe_cell": list(p.probe_cell)}))

    def sample(self, ts_ms: int | None = None, cell_mv: int = 3700,
               temp_dc: int = 250, riso_kohm: int = 5000) -> bytes:
        with self.lock:
            f = self._frame("sample", {
                "pack_mv": cell_mv * max(self.n_cells, 1), "current_ma": 2000,
                "riso_pos_kohm": riso_kohm, "riso_neg_kohm": riso_kohm, "alarm_level": 0,
                "alarm_flags": 0, "temps_dc": [temp_dc, 240],
                "cells_mv": [cell_mv] * self.n_cells}, ts_ms)
            self.store[f["seq"]] = f
            self.sample_seqs.append(f["seq"])
            return self.encode(f)

    def sample_from(self, ts_ms: int, m: dict[str, Any]) -> bytes:
        """A sample frame of measured values (the Sample payload's fields, board units)."""
        with self.lock:
            f = self._frame("sample", _measurement(m), ts_ms)
            self.store[f["seq"]] = f
            self.sample_seqs.append(f["seq"])
            return self.encode(f)

    def batch_from(self, rows: list[tuple[int, dict[str, Any]]]) -> bytes:
        """One batch frame of (ts_ms, measured values) rows, oldest first: one seq each."""
        t0 = rows[0][0]
        with self.lock:
            f = self._frame("batch", {
                "n_samples": len(rows), "n_probes": self.profile.n_probes,
                "n_cells": self.profile.n_cells,
                "samples": [{"dt_ms": ts - t0, **_measurement(m)} for ts, m in rows]}, t0)
            self.sample_seqs += range(f["seq"], f["seq"] + len(rows))
            self.seq += len(rows) - 1  # a batch uses one seq per sample
            self.store[f["seq"]] = f
            return self.encode(f)

    def pending(self) -> list[int]:
        with self.lock:
            return list(self.store)

    def resend(self) -> list[bytes]:
        with self.lock:
            out = []
            for f in self.store.values():
                out.append(self.encode({**f, "flags": f["flags"] | HISTORICAL}))
            return out

    def handle_command(self, raw: bytes) -> list[bytes]:
        """Frames to send in answer: a birth and the re-send for a rebirth, a cmd_ack."""
        try:
            f = codec.decode_frame(raw, key=self.key)
        except ProtocolError:
            return []
        if f["board_id"] != self.board_id:
            return []
        t = f["msg_type"]
        self.commands.append(t)
        out: list[bytes] = []
        p = f["payload"]
        if t == "time_sync":
            self.synced = True
        elif t == "ack":
            with self.lock:
                point = (p["acked_boot"], p["acked_seq"])
                self.acks.append(point)
                if point > self.acked:
                    self.acked = point
                for seq in [s for s, f in self.store.items()
                            if (self.boot, s + codec.seq_span(f) - 1) <= point]:
                    del self.store[seq]
        elif t == "rebirth":
            out.append(self.birth())
            out += self.resend()
        with self.lock:
            out.append(self.encode(self._frame("cmd_ack", {"cmd_type": t, "cmd_seq": f["seq"],
                                                           "result": "ok"})))
        return out


def _measurement(m: dict[str, Any]) -> dict[str, Any]:
    return {"pack_mv": m["pack_mv"], "current_ma": m["current_ma"],
            "riso_pos_kohm": m["riso_pos_kohm"], "riso_neg_kohm": m["riso_neg_kohm"],
            "alarm_level": m.get("alarm_level", 0), "alarm_flags": m.get("alarm_flags", 0),
            "temps_dc": list(m["temps_dc"]), "cells_mv": list(m["cells_mv"])}


class MqttBoard:
    """PyBoard over MQTT, as the firmware's link does it: QoS 1, birth (retained) on every
    connect, then the store re-sent; frames made while disconnected are only stored."""

    def __init__(self, board: PyBoard, port: int, site: str = "lab") -> None:
        self.board = board
        self.base = f"packsentry/{site}/{board.board_id}/"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"board-{board.board_id:08x}",
                        protocol=mqtt.MQTTv5)
        c.will_set(self.base + "status", b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 1)
        self.client = c
        self.up = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async("127.0.0.1", port, 5, clean_start=False, properties=props)
        c.loop_start()

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        c.publish(self.base + "status", b"", qos=1, retain=True)  # clear the will
        c.subscribe(self.base + "cmd", qos=1)
        c.publish(self.base + "birth", self.board.birth(), qos=1, retain=True)
        for frame in self.board.resend():
            c.publish(self.base + "data", frame, qos=1)
        self.up.set()

    def _on_message(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for frame in self.board.handle_command(bytes(msg.payload)):
            leaf = "birth" if codec.decode_frame(frame)["msg_type"] == "birth" else (
                "status" if codec.decode_frame(frame)["msg_type"] == "cmd_ack" else "data")
            c.publish(self.base + leaf, frame, qos=1, retain=leaf == "birth")

    def send_sample(self, **kw: Any) -> None:
        self.publish_frame(self.board.sample(**kw))

    def publish_frame(self, frame: bytes) -> None:
        """A stored frame (sample or batch) out now if connected; else it waits in the store
        for the re-send after the next connect, as on the board."""
        if self.client.is_connected():
            self.client.publish(self.base + "data", frame, qos=1)
        else:
            self.up.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SerialBoard:
    """PyBoard on the master side of a pseudo-terminal: COBS frames out, commands in."""

    def __init__(self, board: PyBoard, master_fd: int) -> None:
        self.board = board
        self.fd = master_fd
        self.lock = threading.Lock()
        self.alive = True
        threading.Thread(target=self._read, daemon=True).start()

    def write(self, frame: bytes) -> bool:
        with self.lock:
            if not self.alive:
                return False
            try:
                os.write(self.fd, encode_stream_frame(frame))
                return True
            except OSError:
                return False

    def _read(self) -> None:
        reader = FrameReader(verify=False)
        while self.alive:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            if not data:
                return
            for r in reader.feed(data):
                for frame in self.board.handle_command(r.raw):
                    self.write(frame)

    def send_sample(self, **kw: Any) -> None:
        self.write(self.board.sample(**kw))

    def unplug(self) -> None:
        with self.lock:
            self.alive = False
            os.close(self.fd)
