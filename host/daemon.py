"""`packsentry daemon`: sources -> bounded queue -> processor (one thread) -> SQLite.

    serial ports (one thread each) ─┐
    MQTT (paho's network thread)  ──┼─► queue (bounded) ─► processor: micro-batch, one
    trace files (one thread)      ──┘                       transaction, then acks and alarms

Sources only queue; every frame is handled on the processor thread, so the estimator, the
alarm engine and the database have one owner and need no locks. The queue is bounded: a
source that finds it full counts it, logs it, and waits (serial: the kernel's buffer and the
boards' stores hold the data; MQTT: Receive Maximum stops the broker first).

Crash-only: an unexpected error in the processor is logged and the daemon exits with status
3 (systemd restarts it). Nothing is lost by that, since nothing is acknowledged before it is
committed; estimator and alarm state are saved every 10 s (a tenth of it each second) and a
board's alarm state on every change of its alarms.
SIGTERM/SIGINT stop it cleanly: sources stop, the queue is drained and committed, state saved.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .alarms import AlarmEngine, AlarmEvent
from .config import DaemonConfig
from .ingest_queue import IngestQueue
from .notify import Dispatcher, LogNotifier, MqttAlarmPublisher, WebhookNotifier
from .pipeline import Inbound, Processor, collect_rarely
from .serial_source import SerialSource
from .storage import Storage, now_ms
from .trace_file import TraceError
from .trace_file import read as read_trace

log = logging.getLogger("packsentry.daemon")

TICK_S = 1.0
HEARTBEAT_S = 5.0
RETENTION_EVERY_S = 3600.0
EXIT_CRASH = 3


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.queue = IngestQueue(cfg.queue_size)
        self.queue_full = 0
        self._full_logged = 0.0
        self.sources: list[Any] = []
        self.mqtt = None
        self.storage: Storage | None = None
        self.processor: Processor | None = None
        self.dispatcher: Dispatcher | None = None

    # -- sources' side -----------------------------------------------------------------------

    def put(self, item: Inbound) -> None:
        self.put_many([item])

    def put_many(self, items: list[Inbound]) -> None:
        """What a source received, in order. A full queue makes the source wait."""
        self.queue.put_many(items, self.stop, self._queue_is_full)

    def _queue_is_full(self) -> None:
        self.queue_full += 1
        t = time.monotonic()
        if t - self._full_logged > 10:
            self._full_logged = t
            log.warning("ingest queue full (%d frames): sources wait for the processor "
                        "(%d times so far)", self.cfg.queue_size, self.queue_full)

    def _trace_thread(self, path: str) -> None:
        try:
            n = 0
            for rec in read_trace(path):
                if self.stop.is_set():
                    return
                if isinstance(rec, TraceError):
                    log.warning("%s", rec)
                    continue
                self.put(Inbound(rec.frame, rec.rx_ms, f"trace:{path}", rec.site or "local"))
                n += 1
            log.info("trace %s: %d frames queued", path, n)
        except TraceError as exc:
            log.error("%s", exc)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        self.storage = Storage(cfg.storage.path, synchronous=cfg.storage.synchronous,
                               background_checkpoint=True)
        notifiers: list[Any] = []
        if cfg.log_alarms:
            notifiers.append(LogNotifier())
        notifiers += [WebhookNotifier(w.url, timeout_s=w.timeout_s, headers=dict(w.headers))
                      for w in cfg.webhooks]
        if cfg.mqtt is not None:
            from .mqtt_source import MqttSource  # paho only when a broker is configured

            self.mqtt = MqttSource(cfg.mqtt, self.put_many)
            if cfg.mqtt_alarms:
                publisher = MqttAlarmPublisher(self.mqtt.publish)
                self.mqtt.on_connected = publisher.republish  # retained sets after an outage
                notifiers.append(publisher)
        self.dispatcher = Dispatcher(notifiers, cfg.alarms)
        engine = AlarmEngine(cfg.alarms)
        self.processor = Processor(self.storage, engine, keys=dict(cfg.keys),
                                   gap_settle_s=cfg.gap_settle_s,
                                   estimate_every_s=cfg.storage.estimate_every_s,
                                   notify=self._notify)
        for n in notifiers:  # the retained active-alarm sets match the restored engine
            if isinstance(n, MqttAlarmPublisher):
                n.sync(engine.active(), [(bs.site, bs.board_id)
                                         for bs in self.processor.boards.values()])
        for s in cfg.serial:
            src = SerialSource(s, self.put, self.stop)
            src.start()
            self.sources.append(src)
        if self.mqtt is not None:
            self.mqtt.start()
            self.sources.append(self.mqtt)
        for t in cfg.trace:
            th = threading.Thread(target=self._trace_thread, args=(t.path,), daemon=True,
                                  name=f"trace:{t.path}")
            th.start()

    def _notify(self, events: list[AlarmEvent]) -> None:
        assert self.dispatcher is not None
        self.dispatcher.dispatch(events, now_ms())

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or stop is set). Returns the exit status."""
        try:
            self.start()
        except Exception as exc:
            log.error("cannot start: %s", exc)
            return 2
        assert self.processor is not None and self.storage is not None
        log.info("ready: database %s, %d serial port(s), mqtt %s, %d trace file(s)",
                 self.cfg.storage.path, len(self.cfg.serial),
                 self.cfg.mqtt.url if self.cfg.mqtt else "off", len(self.cfg.trace))
        _sd_notify(b"READY=1")
        status = 0
        try:
            self._loop()
        except Exception:
            log.exception("processor failed; exiting so the service manager restarts us "
                          "(nothing unacknowledged is lost)")
            status = EXIT_CRASH
        finally:
            self.stop.set()
            for s in self.sources:
                if hasattr(s, "stop") and callable(s.stop):
                    s.stop()
            if status == 0:
                self._drain()
                self.processor.save()
            if self.dispatcher is not None:
                self.dispatcher.close()
            self.storage.close()
            log.info("stopped")
        return status

    def _loop(self) -> None:
        assert self.processor is not None and self.storage is not None
        cfg = self.cfg
        p = self.processor
        next_tick = next_beat = time.monotonic()
        next_retention = time.monotonic() + 60
        wait_s = cfg.batch_wait_ms / 1000
        while not self.stop.is_set():
            batch = self.queue.take(cfg.batch_max, wait_s)
            if batch:
                p.process(batch)
            t = time.monotonic()
            if t >= next_tick:
                next_tick = t + TICK_S
                p.tick(self._heard_until_ms())
                assert self.dispatcher is not None
                self.dispatcher.tick(now_ms())  # flood summaries whose window is over
            if t >= next_beat:
                next_beat = t + HEARTBEAT_S
                self._heartbeat()
            if t >= next_retention and cfg.storage.retention_days > 0:
                next_retention = t + RETENTION_EVERY_S
                cutoff = now_ms() - int(cfg.storage.retention_days * 86_400_000)
                n = self.storage.downsample_before(cutoff, cfg.storage.downsample_s * 1000)
                if n:
                    log.info("retention: %d samples older than %.1f days downsampled", n,
                             cfg.storage.retention_days)

    def _heard_until_ms(self) -> int | None:
        """The receive time of the oldest frame waiting in the queue (None: it is empty).
        A full queue means the sources are blocked with more behind them: judge no one."""
        if self.queue.full():
            return 0
        return self.queue.oldest_rx_ms()

    def _drain(self) -> None:
        assert self.processor is not None
        while batch := self.queue.take(self.cfg.batch_max, 0.0, first_wait_s=0.0):
            self.processor.process(batch)

    def _heartbeat(self) -> None:
        assert self.processor is not None and self.storage is not None
        s = self.processor.stats
        with self.storage.transaction():
            self.storage.set_meta("daemon_heartbeat_ms", str(now_ms()))
            self.storage.set_meta("daemon_pid", str(os.getpid()))
            self.storage.set_meta("daemon_stats", _stats_json(
                s, self.queue_full, self.queue.qsize(), self.processor.delivery.reordered))
        _sd_notify(b"WATCHDOG=1")


def _stats_json(s: Any, queue_full: int, queued: int, reordered: int) -> str:
    import json

    return json.dumps({"frames": dict(s.frames), "rejected": dict(s.rejected),
                       "samples": s.samples, "duplicates": s.duplicates,
                       "reordered": reordered,
                       "gaps_opened": s.gaps_opened, "gaps_lost": s.gaps_lost,
                       "seqs_lost": s.seqs_lost, "commits": s.commits,
                       "commands_sent": s.commands_sent, "queue_full": queue_full,
                       "queued": queued})


def _sd_notify(msg: bytes) -> None:
    """systemd's readiness/watchdog protocol (Type=notify), without a dependency."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg)
    except OSError:
        pass


def run(cfg: DaemonConfig) -> int:
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    d = Daemon(cfg)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        d.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Path(cfg.storage.path).parent.mkdir(parents=True, exist_ok=True)
    collect_rarely()
    return d.run()
