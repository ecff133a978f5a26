"""Notifications: flood grouping (L3/L4 never grouped), what people and machines hear, the
log, a webhook against a real local HTTP server (retries, bounded queue), and the MQTT
topics with their retained active-alarm set."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from test_alarms import BOARD, Rig, hot

from packsentry.host.alarm_settings import AlarmSettings
from packsentry.host.alarms import AlarmEvent
from packsentry.host.notify import (
    Dispatcher,
    LogNotifier,
    MqttAlarmPublisher,
    Notification,
    WebhookNotifier,
)

T0 = 1_764_000_000_000
MIN = 60_000


def event(level: int = 1, ts_ms: int = T0, site: str = "depot", alarm_id: int = 1,
          event: str = "raised", state: str = "active_unack", rule: str = "temp_high",
          board_id: int = 7) -> AlarmEvent:
    return AlarmEvent(alarm_id=alarm_id, board_id=board_id, site=site, rule=rule, level=level,
                      prev_level=0, event=event, state=state, subject="probe",
                      subject_index=0, value=510.0, threshold=500, unit="0.1 degC",
                      ts_ms=ts_ms, source="host", message=f"alarm {alarm_id} L{level}",
                      action="do something", active=state.startswith("active"))


class Collect:
    """A notifier that keeps what it is given."""

    def __init__(self, machine: bool = False) -> None:
        self.machine = machine
        self.got: list[Notification] = []

    def notify(self, n: Notification) -> None:
        self.got.append(n)


# -- dispatcher ---------------------------------------------------------------------------------

def test_flood_more_than_10_in_10_min_grouped_l3_never() -> None:
    people, mqtt = Collect(), Collect(machine=True)
    d = Dispatcher([people, mqtt], AlarmSettings())
    for i in range(11):
        d.dispatch([event(1, T0 + i * 30_000, alarm_id=i + 1)])
    assert [n.grouped for n in people.got] == [False] * 10  # the 11th waits in a group
    d.dispatch([event(3, T0 + 6 * MIN, alarm_id=50)])  # an L3 in the flood: at once, alone
    assert (people.got[-1].level, people.got[-1].grouped) == (3, False)
    d.dispatch([event(2, T0 + 7 * MIN, alarm_id=12)])
    d.dispatch([event(1, T0 + 8 * MIN, site="lab", alarm_id=13)])  # another site: no flood
    assert people.got[-1].site == "lab" and not people.got[-1].grouped
    d.tick(T0 + 15 * MIN - 1)
    assert not any(n.grouped for n in people.got)
    d.tick(T0 + 15 * MIN)  # the group's window is over: one summary
    summary = people.got[-1]
    assert summary.grouped and summary.level == 2
    assert [e.alarm_id for e in summary.events] == [11, 12]
    assert "alarm flood, 2 more notifications" in summary.text
    assert len(people.got) == 10 + 1 + 1 + 1
    # machines got every event, one by one
    assert len(mqtt.got) == 14 and not any(n.grouped for n in mqtt.got)


def test_flood_of_l3_and_l4_is_never_grouped() -> None:
    people = Collect()
    d = Dispatcher([people])
    for i in range(30):
        d.dispatch([event(3 + i % 2, T0 + i * 1000, alarm_id=i)])
    assert len(people.got) == 30 and not any(n.grouped for n in people.got)


def test_what_people_hear() -> None:
    people, mqtt = Collect(), Collect(machine=True)
    d = Dispatcher([people, mqtt])
    d.dispatch([
        event(1, state="shelved"), event(1, state="suppressed"),
        event(1, event="acknowledged", state="active_ack"),
        event(1, event="unshelved", state="cleared"),
        event(1, event="unshelved", state="active_unack"),
        event(1, event="cleared", state="cleared_unack"),
        event(2, event="escalated"),
    ], T0)
    assert [n.events[0].event for n in people.got] == ["unshelved", "cleared", "escalated"]
    assert len(mqtt.got) == 7


def test_a_broken_notifier_does_not_stop_the_others() -> None:
    class Broken:
        machine = False

        def notify(self, n: Notification) -> None:
            raise RuntimeError("boom")

    people = Collect()
    d = Dispatcher([Broken(), people])
    d.dispatch([event(3)])
    assert len(people.got) == 1


def test_log_notifier_levels(caplog: pytest.LogCaptureFixture) -> None:
    n = LogNotifier()
    with caplog.at_level(logging.INFO, logger="packsentry.alarms"):
        for level in (1, 3, 4):
            n.notify(Notification.of(event(level)))
        n.notify(Notification.of(event(3, event="cleared", state="cleared_unack")))
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.ERROR,
                                                   logging.CRITICAL, logging.INFO]
    assert "alarm 1 L4 | do something" in caplog.records[2].getMessage()


# -- webhook against a real HTTP server ----------------------------------------------------------

class Hook:
    """A local HTTP server: answers with the queued status codes (then 200), keeps bodies."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.arrived.set()
                hook.hold.wait(10)
                hook.bodies.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alarms"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def test_webhook_posts_json(hook: Hook) -> None:
    w = WebhookNotifier(hook.url, timeout_s=5, headers={"Authorization": "Bearer t0ken"})
    w.notify(Notification.of(event(3)))
    assert w.wait_idle(5)
    w.close()
    assert w.sent == 1 and w.failed == 0
    body = hook.bodies[0]
    assert (body["site"], body["level"], body["grouped"], body["count"]) == ("depot", 3, False, 1)
    assert body["events"][0]["rule"] == "temp_high" and body["text"].startswith("alarm 1 L3")
    assert hook.headers[0]["Authorization"] == "Bearer t0ken"
    assert hook.headers[0]["Content-Type"] == "application/json"


def test_webhook_retries_after_a_500(hook: Hook) -> None:
    hook.codes = [500, 503]
    w = WebhookNotifier(hook.url, timeout_s=5, backoff_s=0.01)
    w.notify(Notification.of(event(2)))
    assert w.wait_idle(5)
    w.close()
    assert (w.sent, w.retries, w.failed, len(hook.bodies)) == (1, 2, 0, 3)


def test_webhook_does_not_retry_a_refusal(hook: Hook) -> None:
    hook.codes = [400]
    w = WebhookNotifier(hook.url, timeout_s=5, backoff_s=0.01)
    w.notify(Notification.of(event(2)))
    assert w.wait_idle(5)
    w.close()
    assert (w.sent, w.retries, w.failed, len(hook.bodies)) == (0, 0, 1, 1)


def test_webhook_unreachable_gives_up_without_blocking_the_caller() -> None:
    h = Hook()
    url = h.url
    h.close()  # nothing listens there any more
    w = WebhookNotifier(url, timeout_s=1, max_attempts=3, backoff_s=0.01)
    started = time.monotonic()
    for i in range(5):
        w.notify(Notification.of(event(1, alarm_id=i)))
    assert time.monotonic() - started < 0.1
    assert w.wait_idle(10)
    w.close()
    assert (w.sent, w.failed, w.retries) == (0, 5, 10)


def test_webhook_queue_is_bounded_but_never_drops_l3(hook: Hook) -> None:
    hook.hold.clear()  # the server sits on the first request
    w = WebhookNotifier(hook.url, timeout_s=10, queue_size=2)
    w.notify(Notification.of(event(1, alarm_id=1)))
    assert hook.arrived.wait(5)
    for i in (2, 3, 4):
        w.notify(Notification.of(event(1, alarm_id=i)))
    w.notify(Notification.of(event(3, alarm_id=5)))  # queue full of L1: one of them goes
    w.notify(Notification.of(event(4, alarm_id=6)))
    assert w.dropped == 3
    hook.hold.set()
    assert w.wait_idle(5)
    w.close()
    assert [b["events"][0]["alarm_id"] for b in hook.bodies] == [1, 5, 6]


def test_webhook_close_drains_the_queue(hook: Hook) -> None:
    w = WebhookNotifier(hook.url, timeout_s=5)
    for i in range(5):
        w.notify(Notification.of(event(1, alarm_id=i)))
    w.close()
    assert w.sent == 5 and len(hook.bodies) == 5
    w.notify(Notification.of(event(1)))
    assert w.dropped == 1
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookNotifier("ftp://x")


# -- MQTT ---------------------------------------------------------------------------------------

class Broker:
    """Stands in for the paho client's publish: keeps what was published, retained too."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, int, bool]] = []
        self.retained: dict[str, Any] = {}

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        doc = json.loads(payload)
        self.sent.append((topic, doc, qos, retain))
        if retain:
            self.retained[topic] = doc


def test_mqtt_every_event_and_the_exact_retained_active_set() -> None:
    broker = Broker()
    mqtt = MqttAlarmPublisher(broker.publish)
    d = Dispatcher([mqtt])
    rig = Rig()
    d.dispatch(rig.feed(11, temps=hot(510)))
    active = "packsentry/depot/7/alarm/active"
    assert [a["rule"] for a in broker.retained[active]] == ["temp_high"]
    topic, doc, qos, retain = broker.sent[0]
    assert (topic, qos, retain) == ("packsentry/depot/7/alarm", 1, False)
    assert doc["event"] == "raised" and doc["level"] == 1
    a = rig.alarm("temp_high")
    d.dispatch(rig.feed(1, temps=hot(250)))  # cleared, not acknowledged: still listed
    assert [x["state"] for x in broker.retained[active]] == ["cleared_unack"]
    d.dispatch(rig.engine.acknowledge(a.alarm_id, rig.t, "ana"))
    assert broker.retained[active] == []
    events = [doc["event"] for t, doc, _, _ in broker.sent if t.endswith("/alarm")]
    assert events == ["raised", "cleared", "acknowledged"]
    # the retained set always equals what the engine says is open
    d.dispatch(rig.feed(1, cells=(3700, 4310, 3700, 3700)) + rig.feed(11, temps=hot(510)))
    assert sorted(x["alarm_id"] for x in broker.retained[active]) == sorted(
        e.alarm_id for e in rig.engine.active())


def test_mqtt_sync_at_start_up_and_bad_sites() -> None:
    broker = Broker()
    mqtt = MqttAlarmPublisher(broker.publish)
    rig = Rig()
    rig.feed(1, cells=(3700, 4310, 3700, 3700))
    mqtt.sync(rig.engine.active(), boards=[("depot", BOARD), ("lab", 9)])
    assert [a["rule"] for a in broker.retained["packsentry/depot/7/alarm/active"]] == [
        "cell_overvoltage", "cell_spread"]
    assert broker.retained["packsentry/lab/9/alarm/active"] == []
    mqtt.notify(Notification.of(event(1, site="a/b")))
    assert mqtt.errors == 1

    def down(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        raise OSError("not connected")

    MqttAlarmPublisher(down).notify(Notification.of(event(1)))  # never raises
