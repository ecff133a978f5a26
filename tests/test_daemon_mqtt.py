"""The daemon against a real Mosquitto: broker restarts and a SIGKILLed daemon lose nothing
acknowledged and store nothing twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import DaemonProc, wait_until

from packsentry.hil.model_board import MqttBoard, PyBoard

BOARD = 0xC0FFEE


def mqtt_config(port: int, **daemon: object) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in daemon.items())
    return (f'[daemon]\ngap_settle_s = 3.0\n{extra}\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'client_id = "test-daemon"\n')


def stored_seqs(d: DaemonProc) -> list[int]:
    return [s for (s,) in d.query("SELECT seq FROM samples WHERE board_id = ? ORDER BY seq",
                                  BOARD)]


class Publisher:
    """Publishes a sample every `period_s` from a thread until stopped."""

    def __init__(self, link: MqttBoard, period_s: float = 0.01) -> None:
        self.link = link
        self.period_s = period_s
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.link.send_sample()
            self.sent += 1
            time.sleep(self.period_s)

    def finish(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.sent


def drained(board: PyBoard, d: DaemonProc, n: int) -> bool:
    return not board.pending() and len(stored_seqs(d)) >= n


@pytest.fixture
def depot(broker, tmp_path: Path) -> Iterator[tuple[DaemonProc, PyBoard, MqttBoard]]:
    """The daemon (a process of its own) and a board publishing to the test's broker."""
    d = DaemonProc(tmp_path, mqtt_config(broker.port))
    board = PyBoard(BOARD)
    link = None
    try:
        d.start()
        link = MqttBoard(board, broker.port)
        assert link.up.wait(10)
        yield d, board, link
    finally:
        if link is not None:
            link.close()
        if d.proc:
            d.stop()
        d.close()


def test_broker_restarted_twice_every_frame_stored_once(broker, depot) -> None:
    d, board, link = depot
    pub = Publisher(link)
    for _ in range(2):
        wait_until(lambda: len(stored_seqs(d)) > 50, 20, "frames stored")
        time.sleep(0.5)
        broker.stop()
        time.sleep(1.0)  # the board keeps sampling: those frames are only in its store
        broker.start()
        time.sleep(1.5)
    sent = pub.finish()
    wait_until(lambda: drained(board, d, sent), 60,
               f"all {sent} samples stored and acked (pending {len(board.pending())})")
    samples = stored_seqs(d)
    assert len(samples) == sent, f"{sent} sent, {len(samples)} stored"
    assert len(set(samples)) == len(samples)  # exactly once
    assert board.acks and board.acked[1] >= max(samples)
    assert "lost the broker" in d.text() and d.text().count("connected to") >= 3
    assert d.stop() == 0


def test_sigkill_mid_stream_loses_nothing_acknowledged(depot) -> None:
    d, board, link = depot
    pub = Publisher(link)
    wait_until(lambda: board.acked[1] > 100, 20, "acks from the daemon")
    d.kill()
    acked = board.acked  # what the daemon promised to have stored when it died
    promised = [s for s in board.sample_seqs if (board.boot, s) <= acked]
    assert len(promised) > 50
    stored = set(stored_seqs(d))
    assert [s for s in promised if s not in stored] == []
    time.sleep(1.0)  # the board keeps publishing into the broker meanwhile
    d.start()
    sent = pub.finish()
    wait_until(lambda: drained(board, d, sent), 60,
               f"all {sent} samples after the restart (pending {len(board.pending())})")
    samples = stored_seqs(d)
    assert len(samples) == sent == len(set(samples))


class Watcher:
    """A plain MQTT subscriber collecting (topic, JSON payload)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[str, Any]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_alarms_go_out_on_mqtt_with_a_retained_active_set(broker, depot) -> None:
    d, _, link = depot
    w = Watcher(broker.port, f"packsentry/lab/{BOARD}/alarm/#")
    try:
        for _ in range(5):
            link.send_sample(temp_dc=620)  # 62 degC: L3 on the first sample
            time.sleep(0.05)
        events = wait_until(lambda: [p for t, p in w.got if t.endswith("/alarm")
                                     and p["rule"] == "temp_high"], 20,
                            "the temp_high alarm on MQTT")
        assert events[0]["level"] == 3 and events[0]["event"] == "raised"
        assert "62" in events[0]["message"]
        active = wait_until(lambda: [p for t, p in w.got if t.endswith("/alarm/active") and p],
                            10, "the active set")
        assert any(a["rule"] == "temp_high" for a in active[-1])
    finally:
        w.close()
    d.stop()
    # a late subscriber still learns what is active: the set is retained
    late = Watcher(broker.port, f"packsentry/lab/{BOARD}/alarm/active")
    try:
        wait_until(lambda: late.got, 10, "the retained active set")
        assert any(a["rule"] == "temp_high" for a in late.got[0][1])
    finally:
        late.close()


def _receiver_pids(daemon_pid: int) -> list[int]:
    """The daemon's MQTT receiver process (multiprocessing's spawn child)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (p / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid and b"spawn_main" in cmd:
            out.append(int(p.name))
    return out


def test_a_dead_receiver_process_is_replaced_and_nothing_is_lost(depot) -> None:
    """paho runs in a process of its own; killed, it is started again, and what it had
    not had acknowledged comes again from the broker: every frame stored, once."""
    import os
    import signal

    d, board, link = depot
    assert d.proc is not None
    pub = Publisher(link)
    wait_until(lambda: len(stored_seqs(d)) > 50, 20, "frames stored")
    (pid,) = _receiver_pids(d.proc.pid)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: any(p != pid for p in _receiver_pids(d.proc.pid)), 20,
               "a new receiver process")
    time.sleep(1.0)
    sent = pub.finish()
    wait_until(lambda: drained(board, d, sent), 60,
               f"all {sent} samples stored and acked (pending {len(board.pending())})")
    samples = stored_seqs(d)
    assert len(samples) == sent and len(set(samples)) == len(samples)
    assert "MQTT receiver process ended" in d.text()
    assert d.stop() == 0


def test_paho_in_the_daemons_own_process_works_too(broker, tmp_path: Path) -> None:
    d = DaemonProc(tmp_path, mqtt_config(broker.port) + 'receiver = "thread"\n')
    board = PyBoard(BOARD)
    try:
        d.start()
        link = MqttBoard(board, broker.port)
        assert link.up.wait(10)
        pub = Publisher(link)
        wait_until(lambda: len(stored_seqs(d)) > 20, 20, "frames stored")
        sent = pub.finish()
        wait_until(lambda: drained(board, d, sent), 30, "all stored and acked")
        assert _receiver_pids(d.proc.pid) == []
        link.close()
        assert d.stop() == 0
    finally:
        if d.proc:
            d.stop()
        d.close()
