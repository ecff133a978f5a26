"""The whole board program (firmware/app.py Board) in the MicroPython VM, reporting over MQTT
(firmware/mqtt_link.py, built as firmware/main.py builds it) to a real mosquitto on a free
loopback port, with mosquitto_sub/mosquitto_pub as the host.

Sensors come from the virtual board's `machine` stand-in (as in test_firmware_app.py), TCP and
WiFi from hil/vboard/socket.py and network.py. A test steps the VM through a control connection
(one line per step) and reads what the board published, decoded with the host's codec.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from test_firmware_app import BQ_REGS, ntc_uv
from test_firmware_mqtt import (
    VM,
    VM_CONTROL,
    Broker,
    Subscriber,
    publish,
    retained,
)

from packsentry.protocol import codec, golden, layout

SITE = "depot1"
BOARD = 0xC0FFEE
BASE = f"packsentry/{SITE}/{BOARD}"  # packsentry/depot1/12648430
CONFIG = {"board_id": BOARD, "site": SITE, "chemistry": "nmc", "cells_series": 4, "n_cells": 4,
          "max_pack_mv": 16_800, "sample_period_ms": 100, "riso_settle_ms": 0,
          "riso_period_ms": 1_000, "pins": {"ntc": [32, 33]},
          "pack_divider_ratio_c": 1_000,  # 10:1, so 1.5 V at the ADC is a 15 V pack
          "link": {"kind": "mqtt", "broker": "127.0.0.1", "port": 0, "wifi_ssid": "rig"}}
HISTORICAL = codec.FLAGS["historical"]
PRE_EVENT = codec.FLAGS["pre_event"]
TIME_SYNCED = codec.FLAGS["time_synced"]
# The board with its MQTT link, compiled from source, needs about 115 KB of the VM's heap
# (mem_alloc once started): it does not start in the default 128 KB (MemoryError). 192 KB here.
HEAP = 196_608

# The board as main.py starts it (link.kind "mqtt"), on a fresh flash; then the test's steps.
PRELUDE = """
import asyncio, json, os, time
import machine
import app, config, store, sampler, safety  # compiled from source: much garbage
await asyncio.sleep_ms(5)  # this port collects only when control returns to JS
import socket, network
await asyncio.sleep_ms(5)
import mqtt, mqtt_link
await asyncio.sleep_ms(5)
os.mkdir('/flash')
machine.inputs['adc_uv'].update({36: 1_500_000, 39: 1_650_000, 32: %(t25)d, 33: %(t26)d,
                                 34: 1_000_000, 35: 1_000_000})
machine.inputs['i2c'][0x08] = %(regs)r
cfg = config.parse(%(cfg)r)
assert cfg["link.kind"] == "mqtt" and not cfg.error, cfg.messages
await asyncio.sleep_ms(5)
link = mqtt_link.MqttLink(cfg, cfg["board_id"], frame_max=1024)  # as main.py
await asyncio.sleep_ms(5)
board = app.Board(cfg, machine, link, root='/flash/')
board.tick_ms = 100
await asyncio.sleep_ms(5)
import gc
print("FREE", gc.mem_free(), gc.mem_alloc())

""" + VM_CONTROL + """
task = asyncio.create_task(board.run())
await until(lambda: link.connected)
print("UP", link.client.connects)
"""

EPILOGUE = """
print("STATS", link.sent, link.dropped, link.cmd_dropped, board.seq, board.rx_errors,
      board.store.pending_count, link.client.connects)
board.running = False
await asyncio.sleep_ms(150)
await link.stop()
"""


class BoardVM(VM):
    """The MicroPython VM running the whole board: PRELUDE + script + EPILOGUE."""

    def __init__(self, broker: Broker, script: str) -> None:
        cfg = {**CONFIG, "link": {**CONFIG["link"], "port": broker.port}}
        super().__init__(lambda ctl: PRELUDE % {
            "t25": ntc_uv(25), "t26": ntc_uv(26), "regs": BQ_REGS, "cfg": json.dumps(cfg),
            "ctl": ctl} + script + EPILOGUE, heap_bytes=HEAP)

    def finish(self, timeout: float = 10) -> list[int]:
        """Stop the board; its STATS: sent, dropped, cmd_dropped, seq, rx_errors, pending,
        connects."""
        self.tell("stop")
        stats = [int(v) for v in self.wait("STATS").split()[1:]]
        code = self.proc.wait(timeout)
        self.err.drain(0.1)
        assert code == 0, f"VM exited {code}: {self.err.seen}"
        return stats



@pytest.fixture
def board(broker):
    started: list[BoardVM] = []

    def start(script: str) -> BoardVM:
        vm = BoardVM(broker, script)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.kill()


def frames(host: Subscriber, leaf: str | None = None) -> list[dict]:
    """What the board published so far (on BASE/leaf), decoded, each with its topic leaf."""
    out = []
    for topic, _, payload in host.messages(BASE):
        if not payload or (leaf is not None and topic != f"{BASE}/{leaf}"):
            continue  # the empty retained message that clears the will
        if topic == f"{BASE}/status" and payload == b"offline":
            continue  # the last will
        if topic == f"{BASE}/cmd":
            continue  # the host's own commands
        f = codec.decode_frame(payload)
        f["leaf"] = topic.rsplit("/", 1)[1]
        out.append(f)
    return out


def wait_for(host: Subscriber, cond, timeout: float, what: str):
    """Wait until cond(frames(host)) is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        host.lines.drain(0.05)
        got = cond(frames(host))
        if got:
            return got
        if time.monotonic() > deadline:
            seen = [(f["leaf"], f["msg_type"], f["seq"], f["flags"]) for f in frames(host)]
            raise AssertionError(f"timed out waiting for {what}; got {seen[-40:]}")


def live(fs: list[dict], msg_type: str = "sample") -> list[dict]:
    return [f for f in fs if f["msg_type"] == msg_type
            and not f["flags"] & (HISTORICAL | PRE_EVENT)]


def time_sync() -> bytes:
    return bytes.fromhex(golden.load("time_sync")[0]["hex"])


def ack(acked_seq: int, acked_boot: int = 1) -> bytes:
    """The host's ack command: it has stored everything up to (acked_boot, acked_seq)."""
    a = codec.decode_frame(bytes.fromhex(golden.load("ack")[0]["hex"]))
    del a["crc32"], a["tag"]
    assert a["board_id"] == BOARD
    return codec.encode_frame({**a, "flags": 0, "payload": {"acked_boot": acked_boot,
                                                            "acked_seq": acked_seq}})


def test_board_connects_with_a_retained_birth_and_streams_samples(broker, host, board) -> None:
    t0 = time.monotonic()
    vm = board("await step()\n")
    vm.wait("UP 1")
    wait_for(host, lambda fs: len(live(fs)) >= 15, 10, "15 live samples")
    connect_s = time.monotonic() - t0
    stats = vm.finish()
    fs = frames(host)

    births = [f for f in fs if f["leaf"] == "birth"]
    assert len(births) == 1 and births[0]["msg_type"] == "birth"
    assert births[0]["board_id"] == BOARD and births[0]["boot"] == 1
    b = births[0]["payload"]
    assert b["schema_fingerprint"] == layout.schema_fingerprint()
    assert (b["n_probes"], b["n_cells"], b["config_error"]) == (2, 4, 0)
    # retained: a host subscribing only now still learns what the board is
    flag, payload = retained(broker, f"{BASE}/birth")
    assert flag == 1 and codec.decode_frame(payload)["seq"] == births[0]["seq"]
    assert (f"{BASE}/status", 0, b"") in host.messages(BASE)  # the will cleared at connect

    data = [f for f in fs if f["leaf"] == "data"]
    assert all(f["msg_type"] == "sample" for f in data)
    samples = live(data)
    seqs = [f["seq"] for f in samples]
    assert seqs == sorted(set(seqs)) and seqs[0] > births[0]["seq"]
    for s in samples:
        p = s["payload"]
        assert abs(p["pack_mv"] - 15_000) <= 2
        assert all(abs(t - e) <= 2 for t, e in zip(p["temps_dc"], [250, 260], strict=True))
        assert p["cells_mv"] == [9343 * 396 // 1000] * 4 and p["alarm_level"] == 0
        assert not s["flags"] & TIME_SYNCED
    # samples taken before the first CONNACK were stored and re-sent (historical) on connect:
    # every seq the board used up to the last one seen reached the host
    got = {f["seq"] for f in fs}
    assert got >= set(range(max(seqs) + 1)), sorted(set(range(max(seqs) + 1)) - got)
    by_seq = {f["seq"]: f for f in samples}
    for f in data:  # re-sent as stored: the same frames, flagged and resealed
        if f["flags"] & HISTORICAL and f["seq"] in by_seq:
            assert f["payload"] == by_seq[f["seq"]]["payload"]
    _, dropped, cmd_dropped, _, _, _, connects = stats
    assert connects == 1 and cmd_dropped == 0
    assert dropped <= births[0]["seq"], stats  # only while not yet connected
    heap = [x for x in vm.out.seen if x.startswith("FREE")]
    print(f"start to 15 samples {connect_s:.2f}s; stats {stats}; {heap}")


def test_time_sync_from_the_host_is_acked_on_status_and_marks_later_samples(
        broker, host, board) -> None:
    vm = board("await step()\n")
    vm.wait("UP 1")
    wait_for(host, lambda fs: len(live(fs)) >= 3, 10, "samples")
    sync = time_sync()
    unix_ms = codec.decode_frame(sync)["payload"]["unix_ms"]
    publish(broker, f"{BASE}/cmd", sync)
    acks = wait_for(host, lambda fs: [f for f in fs if f["msg_type"] == "cmd_ack"], 5,
                    "the cmd_ack")
    ack_seq = acks[0]["seq"]
    wait_for(host, lambda fs: len([f for f in live(fs) if f["seq"] > ack_seq]) >= 5, 5,
             "samples after the time sync")
    stats = vm.finish()
    fs = frames(host)
    acks = [f for f in fs if f["msg_type"] == "cmd_ack"]
    assert [(a["leaf"], a["payload"]["cmd_type"], a["payload"]["result"]) for a in acks] == [
        ("status", "time_sync", "ok")]
    assert acks[0]["payload"]["cmd_seq"] == codec.decode_frame(sync)["seq"]
    before = [f for f in live(fs) if f["seq"] < ack_seq]
    after = [f for f in live(fs) if f["seq"] > ack_seq]
    assert before and all(not f["flags"] & TIME_SYNCED for f in before)
    assert after and all(f["flags"] & TIME_SYNCED for f in after)
    assert all(0 <= f["ts_ms"] - unix_ms < 5_000 for f in after)
    assert stats[2] == 0 and stats[4] == 0  # no command dropped, no rx error


def run_local_l3(host: Subscriber, board) -> tuple[list[dict], list[dict], int, list[int]]:
    """Run the board, then raise probe 2 to 62 degC; return (frames, alarms, the pre-event
    samples the alarms announce, the board's STATS)."""
    vm = board(f"""
await step()
machine.inputs['adc_uv'][33] = {ntc_uv(62)}  # probe 2 jumps to 62 degC
await step()
""")
    vm.wait("UP 1")
    wait_for(host, lambda fs: len(live(fs)) >= 8, 10, "samples")
    vm.tell("hot")
    alarms = wait_for(host, lambda fs: len(alarm_frames(fs)) >= 2 and alarm_frames(fs), 5,
                      "two alarms")
    wait_for(host, lambda fs: len([f for f in live(fs) if f["seq"] > alarms[-1]["seq"]]) >= 3,
             5, "samples after the alarm")
    announced = max(a["payload"]["pre_event_samples"] for a in alarms)
    # the pre-event samples follow the alarms as the link's publish slots free up
    wait_for(host, lambda fs: len([f for f in fs if f["flags"] & PRE_EVENT]) >= announced,
             10, "the announced pre-event samples")
    stats = vm.finish()
    fs = frames(host)
    alarms = alarm_frames(fs)
    return fs, alarms, max(a["payload"]["pre_event_samples"] for a in alarms), stats


def alarm_frames(fs):
    """Alarm frames travel on `data`, stored and acknowledged like samples."""
    return [f for f in fs if f["leaf"] == "data" and f["msg_type"] == "alarm"]


def test_local_l3_publishes_alarms_and_pre_event_samples(broker, host, board) -> None:
    fs, alarms, n_pre, _ = run_local_l3(host, board)
    assert all(f["msg_type"] == "alarm" and not f["flags"] & HISTORICAL for f in alarms)
    # 62 degC next to 25 degC: both the high temperature and the spread are L3
    assert sorted((a["payload"]["rule"], a["payload"]["level"], a["payload"]["event"])
                  for a in alarms) == [("temp_high", 3, "raised"), ("temp_spread", 3, "raised")]
    raised = next(a["payload"] for a in alarms if a["payload"]["rule"] == "temp_high")
    assert raised["value"] >= 600 and raised["subject"] == "probe"
    assert raised["subject_index"] == 1
    assert n_pre >= 8  # the samples taken before it, up to the ring's 30
    pre = [f for f in fs if f["flags"] & PRE_EVENT]
    assert pre and all(f["leaf"] == "data" and f["msg_type"] == "sample" for f in pre)
    # replayed right after the alarms, oldest first, with fresh seqs and their own times
    last_alarm = max(a["seq"] for a in alarms)
    assert [f["seq"] for f in pre] == list(range(last_alarm + 1, last_alarm + 1 + len(pre)))
    assert [f["ts_ms"] for f in pre] == sorted(f["ts_ms"] for f in pre)
    assert all(f["payload"]["alarm_level"] == 0 for f in pre)  # what led up to it
    later = [f for f in live(fs) if f["seq"] > last_alarm]
    assert later and all(f["payload"]["alarm_level"] == 3 for f in later)


def test_every_announced_pre_event_sample_reaches_the_host_while_connected(
        broker, host, board) -> None:
    fs, _, n_pre, stats = run_local_l3(host, board)
    pre = [f for f in fs if f["flags"] & PRE_EVENT]
    assert len(pre) == n_pre, (
        f"alarm announces {n_pre} pre-event samples, {len(pre)} published; "
        f"STATS (sent, dropped, ...) {stats}")


@pytest.mark.parametrize("how", [
    "restart", "frozen"])
def test_after_a_broker_restart_a_new_birth_and_unacked_frames_resent_historical(
        broker, host, board, how) -> None:
    vm = board("""
await step()
t = time.ticks_ms()
await until(lambda: not link.connected, 15_000)  # the broker is gone
print("LOST", time.ticks_diff(time.ticks_ms(), t))
network.set_wifi(False)  # only so that the host is back on the new broker before the board
await step()
network.set_wifi(True)
await step()
""")
    vm.wait("UP 1")
    fs = wait_for(host, lambda fs: len(live(fs)) >= 10 and fs, 10, "samples")
    acked = live(fs)[4]["seq"]
    publish(broker, f"{BASE}/cmd", ack(acked))  # the host stored everything up to here
    wait_for(host, lambda fs: [f for f in fs if f["msg_type"] == "cmd_ack"], 5, "the ack's ack")
    first_birth = next(f for f in frames(host) if f["msg_type"] == "birth")

    t_down = time.monotonic()
    if how == "frozen":  # the broker hangs first: what the board sends stays unacknowledged
        broker.freeze()
        time.sleep(1.5)
        broker.stop(signal.SIGKILL)
    else:
        broker.stop()
        time.sleep(0.5)  # the board samples on, into its store; the link drops them
    vm.tell("wifi off")
    lost_ms = int(vm.wait("LOST", 15).split()[1])
    time.sleep(0.5)
    broker.start()  # no persistence: the retained birth is gone with the old broker
    host.sync()  # what the board re-sends must find the host subscribed
    vm.tell("wifi on")
    try:
        births = wait_for(host, lambda fs: [f for f in fs if f["msg_type"] == "birth"
                                            and f["seq"] > first_birth["seq"]], 6, "a new birth")
    except AssertionError:
        vm.out.drain(0.1)
        vm.err.drain(0.1)
        print("VM said", vm.out.seen, vm.err.seen)
        raise
    back_s = time.monotonic() - t_down
    rebirth = births[0]["seq"]
    wait_for(host, lambda fs: len([f for f in live(fs) if f["seq"] > rebirth]) >= 5, 10,
             "samples after the reconnect")
    time.sleep(0.5)  # the paced re-send runs alongside
    stats = vm.finish()
    assert stats[6] == 2  # connects

    flag, payload = retained(broker, f"{BASE}/birth")  # the new broker has the new birth
    assert flag == 1 and codec.decode_frame(payload)["seq"] == rebirth
    fs = frames(host)
    after = fs[next(i for i, f in enumerate(fs) if f["seq"] == rebirth):]
    hist = [f for f in after if f["flags"] & HISTORICAL]
    assert hist, ("nothing was re-sent after the reconnect",
                  " ".join(f"{f['leaf'][0]}{f['seq']}:{f['flags']}" for f in fs), stats, acked)
    assert all(f["leaf"] == "data" and f["msg_type"] == "sample" for f in hist)
    hist_seqs = sorted(f["seq"] for f in hist)
    assert len(set(hist_seqs)) == len(hist_seqs)
    assert hist_seqs[0] > acked  # acknowledged frames are not re-sent
    # every stored frame (sample) the host has not acknowledged, up to the reconnect, is
    # re-sent: those delivered live before the outage and those taken while it lasted
    stored = {s for s in range(acked + 1, rebirth)} - {
        f["seq"] for f in fs if f["msg_type"] in ("birth", "cmd_ack", "status")}
    missing = sorted(stored - set(hist_seqs))
    assert not missing, f"not re-sent: {missing}; link stats {stats}"
    first = {f["seq"]: f for f in fs if not f["flags"] & HISTORICAL}
    for f in hist:  # the same frames as sent live, flagged and resealed
        if f["seq"] in first:
            assert f["payload"] == first[f["seq"]]["payload"]
    print(f"loss noticed {lost_ms} ms after 'wifi off'; broker stop to new birth "
          f"{back_s:.2f}s; {len(hist)} re-sent; stats {stats}")
