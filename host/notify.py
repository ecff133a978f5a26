"""Alarm notifications: who hears about which alarm event, and how.

- `Notifier` is anything with `notify(n: Notification) -> None` that never blocks its caller
  and never raises: `LogNotifier` (python logging), `WebhookNotifier` (JSON POST from its own
  thread), `MqttAlarmPublisher` (the broker, through the daemon's paho client).
- `Dispatcher` decides what goes where. People (log, webhook) hear about the events in
  `settings.notify_events` of alarms that are not shelved or suppressed, and more than
  `flood_count` notifications in `flood_window_s` at one site are grouped into one summary;
  L3/L4 are never grouped or held back. Machines (notifiers with `machine = True`: the MQTT
  publisher) get every event, one by one and ungrouped, because the retained active-alarm
  set they keep must be exact.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import alarm_text as text
from .alarm_settings import AlarmSettings
from .alarms import AlarmEvent

log = logging.getLogger(__name__)

_LOG_LEVELS = {1: logging.WARNING, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}


@dataclass(frozen=True)
class Notification:
    """One message for people (or one event for machines)."""

    site: str
    level: int  # the highest level among its events
    title: str
    text: str  # message and what to do
    ts_ms: int
    events: tuple[AlarmEvent, ...]
    grouped: bool = False  # a flood summary

    @classmethod
    def of(cls, ev: AlarmEvent) -> Notification:
        head = f"L{ev.level} {text.title(ev.rule, _scope_kind(ev.scope))}"
        return cls(site=ev.site, level=ev.level,
                   title=f"{head} {ev.event}: board {ev.board_id} ({ev.site})",
                   text=f"{ev.message}\n{ev.action}", ts_ms=ev.ts_ms, events=(ev,))

    @classmethod
    def summary(cls, site: str, events: list[AlarmEvent]) -> Notification:
        counts: dict[tuple[int, str], int] = {}
        for ev in events:
            counts[(ev.level, ev.rule)] = counts.get((ev.level, ev.rule), 0) + 1
        level = max(ev.level for ev in events)
        first, last = events[0].ts_ms, events[-1].ts_ms
        lines = [text.summary(site, counts, first, last)]
        lines += [f"- {ev.message}" for ev in events[:20]]
        if len(events) > 20:
            lines.append(f"- ... and {len(events) - 20} more (see the alarm list)")
        return cls(site=site, level=level,
                   title=f"alarm flood at {site}: {len(events)} notifications (up to L{level})",
                   text="\n".join(lines), ts_ms=last, events=tuple(events), grouped=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON a webhook receives."""
        return {"site": self.site, "level": self.level, "grouped": self.grouped,
                "count": len(self.events), "ts_ms": self.ts_ms, "title": self.title,
                "text": self.text, "events": [ev.to_dict() for ev in self.events]}


class Notifier(Protocol):
    def notify(self, n: Notification) -> None:
        """Hand over one notification: never blocks the caller, never raises."""


# -- log ----------------------------------------------------------------------------------------


class LogNotifier:
    """Alarm notifications as log records: L1/L2 warning, L3 error, L4 critical (cleared and
    other good news: info)."""

    machine = False

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("packsentry.alarms")

    def notify(self, n: Notification) -> None:
        try:
            good_news = not n.grouped and all(not ev.active for ev in n.events)
            level = logging.INFO if good_news else _LOG_LEVELS.get(n.level, logging.WARNING)
            self.logger.log(level, "%s", n.text.replace("\n", " | "))
        except Exception:  # a broken handler must not take the alarm path down
            log.exception("log notifier failed")


# -- webhook ------------------------------------------------------------------------------------


class WebhookNotifier:
    """JSON POST of each notification to `url`, from a worker thread of its own.

    The queue is bounded (`queue_size`): when it is full an L1/L2 notification is dropped and
    counted (`dropped`); an L3/L4 one pushes out the oldest L1/L2 instead, and is queued even
    beyond the bound if there is none. A failed POST (connection error, timeout, HTTP 5xx or
    429) is retried `max_attempts` times in all with exponential backoff; other HTTP errors are
    not retried. `sent`, `failed`, `dropped`, `retries` count what happened. `close()` gives the
    queue `timeout_s` to drain, then stops.
    """

    machine = False

    def __init__(self, url: str, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None,
                 *, queue_size: int = 1000, max_attempts: int = 5, backoff_s: float = 0.5,
                 backoff_max_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http:// or https://, not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "User-Agent": "packsentry",
                        **(headers or {})}
        self.queue_size = queue_size
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.sent = self.failed = self.dropped = self.retries = 0
        self._queue: deque[Notification] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"webhook:{url}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + self._busy

    def notify(self, n: Notification) -> None:
        with self._cv:
            if self._closing:
                self.dropped += 1
                return
            if len(self._queue) >= self.queue_size:
                if n.level < 3:
                    self.dropped += 1
                    log.warning("webhook %s: queue full, notification dropped: %s", self.url,
                                n.title)
                    return
                low = next((q for q in self._queue if q.level < 3), None)
                if low is not None:  # L3/L4 are never the ones dropped
                    self._queue.remove(low)
                    self.dropped += 1
            self._queue.append(n)
            self._cv.notify()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or in flight; False if that took too long."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()  # stop retrying; what is left is counted as dropped
            self._thread.join(self.timeout_s + 1.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                n = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(n)
            finally:
                with self._cv:
                    self._busy = False
            if self._abort.is_set():
                with self._cv:
                    self.dropped += len(self._queue)
                    self._queue.clear()
                return

    def _deliver(self, n: Notification) -> None:
        body = json.dumps(n.to_dict()).encode()
        for attempt in range(1, self.max_attempts + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=self.headers,
                                             method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    self.failed += 1
                    log.error("webhook %s refused a notification: HTTP %d", self.url, exc.code)
                    return
                why = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:  # URLError, timeouts, resets
                why = str(getattr(exc, "reason", exc))
            if attempt == self.max_attempts or self._abort.is_set():
                break
            self.retries += 1
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
            log.warning("webhook %s: %s; retry %d in %.1f s", self.url, why, attempt, delay)
            if self._abort.wait(delay):
                break
        self.failed += 1
        log.error("webhook %s: gave up on a notification (%s): %s", self.url, why, n.title)


# -- MQTT ---------------------------------------------------------------------------------------

Publish = Callable[[str, bytes, int, bool], Any]


class MqttAlarmPublisher:
    """Alarm events on the broker, for machines (dashboards, SCADA, other gateways):

    - every event, as JSON (`AlarmEvent.to_dict()`), on `packsentry/<site>/<board_id>/alarm`,
      QoS 1, not retained;
    - the board's open alarms (the latest event of each, highest level first) as a retained
      JSON list on `packsentry/<site>/<board_id>/alarm/active`; `[]` when none.

    `publish(topic, payload, qos, retain)` is the daemon's (its paho client's publish). Call
    `sync(engine.active(), boards)` at start-up, so the retained sets match the restored
    engine, and `republish()` after a reconnect if the client does not queue while offline.
    """

    machine = True

    def __init__(self, publish: Publish, prefix: str = "packsentry") -> None:
        self.publish = publish
        self.prefix = prefix
        self.errors = 0
        self._active: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def topic(self, site: str, board_id: int, leaf: str = "alarm") -> str:
        if not site or any(c in site for c in "/+#"):
            raise ValueError(f"site {site!r} cannot be an MQTT topic level")
        return f"{self.prefix}/{site}/{board_id}/{leaf}"

    def notify(self, n: Notification) -> None:
        for ev in n.events:
            try:
                d = ev.to_dict()
                with self._lock:
                    mine = self._active.setdefault((ev.site, ev.board_id), {})
                    if ev.state == "cleared":
                        mine.pop(ev.alarm_id, None)
                    else:
                        mine[ev.alarm_id] = d
                self._send(self.topic(ev.site, ev.board_id), json.dumps(d).encode(), False)
                self._send_active(ev.site, ev.board_id)
            except Exception:  # never into the caller
                self.errors += 1
                log.exception("MQTT alarm publish failed")

    def sync(self, active: Iterable[AlarmEvent],
             boards: Iterable[tuple[str, int]] = ()) -> None:
        """Replace the retained sets: `active` (engine.active()) for the boards it names, and
        an empty set for the other `boards` (site, board_id) known."""
        fresh: dict[tuple[str, int], dict[int, dict[str, Any]]] = {b: {} for b in boards}
        for ev in active:
            fresh.setdefault((ev.site, ev.board_id), {})[ev.alarm_id] = ev.to_dict()
        with self._lock:
            self._active.update(fresh)
        for site, board_id in fresh:
            self._send_active(site, board_id)

    def republish(self) -> None:
        with self._lock:
            boards = list(self._active)
        for site, board_id in boards:
            self._send_active(site, board_id)

    def _send_active(self, site: str, board_id: int) -> None:
        with self._lock:
            alarms = sorted(self._active.get((site, board_id), {}).values(),
                            key=lambda d: (-d["level"], d["alarm_id"]))
        self._send(self.topic(site, board_id, "alarm/active"), json.dumps(alarms).encode(), True)

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            res = self.publish(topic, payload, 1, retain)
            if getattr(res, "rc", 0):  # paho's MQTTMessageInfo: non-zero is an error
                self.errors += 1
                log.warning("MQTT publish to %s: rc %s", topic, res.rc)
        except Exception:
            self.errors += 1
            log.exception("MQTT publish to %s failed", topic)


# -- dispatch -----------------------------------------------------------------------------------


@dataclass
class _Site:
    sent_ms: deque[int] = field(default_factory=deque)  # human notifications in the window
    group: list[AlarmEvent] = field(default_factory=list)  # grouped, waiting for the summary
    group_due_ms: int = 0


class Dispatcher:
    """Alarm events to notifiers, with flood grouping for people (see the module doc).

    Time is the caller's: `dispatch(events, now_ms)` (default: each event's ts_ms) and
    `tick(now_ms)`, which sends a flood summary once its window is over. Call `tick`
    regularly (the daemon's tick), or a summary waits for the next dispatch.
    """

    def __init__(self, notifiers: Iterable[Notifier], settings: AlarmSettings | None = None
                 ) -> None:
        self.notifiers = list(notifiers)
        self.settings = settings or AlarmSettings()
        self.grouped = 0  # notifications folded into summaries
        self._sites: dict[str, _Site] = {}
        self._lock = threading.Lock()

    def dispatch(self, events: Iterable[AlarmEvent], now_ms: int | None = None) -> None:
        with self._lock:
            for ev in events:
                t = ev.ts_ms if now_ms is None else now_ms
                self._flush_due(t)
                self._machines(Notification.of(ev))
                if self.wanted(ev):
                    self._human(ev, t)
            if now_ms is not None:
                self._flush_due(now_ms)

    def tick(self, now_ms: int) -> None:
        with self._lock:
            self._flush_due(now_ms)

    def flush(self) -> None:
        """Send every pending summary now."""
        with self._lock:
            for site, st in self._sites.items():
                self._send_group(site, st)

    def close(self) -> None:
        self.flush()
        for n in self.notifiers:
            close = getattr(n, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing notifier %r failed", n)

    def wanted(self, ev: AlarmEvent) -> bool:
        """Does a person hear about this event?"""
        if ev.event not in self.settings.notify_events or ev.state in ("shelved", "suppressed"):
            return False
        if ev.event in ("unshelved", "returned_to_service"):
            return ev.state == "active_unack"  # back in view and still needing someone
        return True

    def _human(self, ev: AlarmEvent, t: int) -> None:
        st = self._sites.setdefault(ev.site, _Site())
        window_ms = int(self.settings.flood_window_s * 1000)
        while st.sent_ms and st.sent_ms[0] <= t - window_ms:
            st.sent_ms.popleft()
        if ev.level >= 3 or (not st.group and len(st.sent_ms) < self.settings.flood_count):
            st.sent_ms.append(t)  # L3/L4: always on their own, at once
            self._people(Notification.of(ev))
            return
        if not st.group:
            st.group_due_ms = t + window_ms
        st.group.append(ev)
        self.grouped += 1

    def _flush_due(self, t: int) -> None:
        for site, st in self._sites.items():
            if st.group and t >= st.group_due_ms:
                self._send_group(site, st)
                st.sent_ms.append(t)

    def _send_group(self, site: str, st: _Site) -> None:
        if st.group:
            events, st.group = st.group, []
            self._people(Notification.summary(site, events))

    def _people(self, n: Notification) -> None:
        for nt in self.notifiers:
            if not getattr(nt, "machine", False):
                _safe(nt, n)

    def _machines(self, n: Notification) -> None:
        for nt in self.notifiers:
            if getattr(nt, "machine", False):
                _safe(nt, n)


def _safe(nt: Notifier, n: Notification) -> None:
    try:
        nt.notify(n)
    except Exception:  # a notifier that breaks its promise must not stop the others
        log.exception("notifier %r raised", nt)


def _scope_kind(scope: str) -> str:
    return scope if scope in ("forecast", "seq") else ""

