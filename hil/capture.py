"""`packsentry capture`: every frame from a serial port or an MQTT broker, with its receive
time, into a trace file (host/trace_file.py), until Ctrl-C or SIGTERM.

Frames are recorded as they arrived, unverified (a frame the daemon would refuse is recorded
too, and `trace info` / `replay` show it rejected). Each frame is written and flushed to the
kernel before the next is read, and the format is append-safe: a capture that is killed loses
at most the frame it was writing, and a new capture to the same file continues it.

Serial: COBS frames between 0x00 delimiters, as the daemon reads them; a port that goes away
is looked for again every second. MQTT: the daemon's topics (packsentry/<site>/<board>/
{birth,data,status}) at QoS 1, each message acknowledged after it is written; with
--client-id the session persists, so a capture restarted with the same id also gets what the
broker queued meanwhile. A board's last will ("offline") is not a frame and is not recorded.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from packsentry.host.config import DEFAULT_TOPICS, SerialConfig
from packsentry.host.storage import now_ms
from packsentry.host.trace_file import TraceError, TraceWriter
from packsentry.protocol.cli import UsageError
from packsentry.protocol.stream import FrameReader

REOPEN_S = 1.0  # a vanished serial port is looked for this often
CONNECT_TIMEOUT_S = 10.0
SESSION_EXPIRY_S = 7 * 86_400  # with --client-id: the broker keeps our QoS 1 frames this long


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("capture", help="record frames from a serial port or a broker into a "
                       "trace file", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--serial", metavar="PORT", help="a serial device (COBS frames)")
    src.add_argument("--mqtt", metavar="URL", help="a broker: mqtt://[user:pass@]host[:port] "
                     "or mqtts://...")
    c.add_argument("--baud", type=int, help=f"serial speed (default {SerialConfig.baud})")
    c.add_argument("--site", help=f"site name recorded with serial frames (default "
                   f"{SerialConfig.site}); MQTT frames take theirs from the topic")
    c.add_argument("--topic", action="append", metavar="FILTER",
                   help="MQTT topic filter, repeatable (default: the daemon's "
                        f"{', '.join(DEFAULT_TOPICS)})")
    c.add_argument("--client-id", metavar="ID",
                   help="MQTT client id; also keeps a persistent session (default: a fresh, "
                        "clean session)")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="the trace file (appended to if it exists)")
    c.set_defaults(func=cmd_capture)


@dataclass
class CaptureStats:
    frames: int = 0  # recorded
    garbled: int = 0  # of them, chunks that were not even valid COBS (recorded as received)
    skipped: int = 0  # not recorded: last wills, empty retained messages, oversized runs


class _Counter:
    """The frame counter on stderr: redrawn in place on a terminal (at most 5 times a second),
    silent otherwise (the final count goes to stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.last = 0.0

    def update(self, stats: CaptureStats) -> None:
        if not self.live:
            return
        t = time.monotonic()
        if t - self.last >= 0.2:
            self.last = t
            self.stream.write(f"\r{stats.frames} frames")
            self.stream.flush()

    def close(self, stats: CaptureStats) -> None:
        if self.live and self.last:
            self.stream.write(f"\r{stats.frames} frames\n")
            self.stream.flush()


# -- serial --------------------------------------------------------------------------------------


def capture_serial(port: str, writer: TraceWriter, stop: threading.Event, *,
                   baud: int = SerialConfig.baud, site: str = SerialConfig.site,
                   on_frame: Callable[[CaptureStats], None] | None = None,
                   stats: CaptureStats | None = None) -> CaptureStats:
    """Record until `stop` is set, counting into `stats`. Raises UsageError if the port
    cannot be opened at all."""
    import serial  # pyserial only for serial captures

    stats = stats if stats is not None else CaptureStats()

    def open_port() -> serial.Serial:
        return serial.Serial(port, baud, timeout=0.2, exclusive=True)

    try:
        ser: serial.Serial | None = open_port()
    except (serial.SerialException, OSError, ValueError) as exc:
        raise UsageError(f"cannot open {port}: {_reason(exc)}") from None
    reader = FrameReader(verify=False)
    try:
        while not stop.is_set():
            if ser is None:
                try:
                    ser = open_port()
                    reader = FrameReader(verify=False)  # a partial frame from before is lost
                    print(f"{port}: back", file=sys.stderr)
                except (serial.SerialException, OSError, ValueError):
                    stop.wait(REOPEN_S)
                    continue
            try:
                data = ser.read(max(1, min(ser.in_waiting, 65536)))
            except (serial.SerialException, OSError) as exc:
                print(f"{port}: lost ({_reason(exc)}); looking for it every {REOPEN_S:g} s",
                      file=sys.stderr)
                _close(ser)
                ser = None
                continue
            if not data:
                continue
            rx = now_ms()
            for r in reader.feed(data):
                if not r.raw:  # an oversized run: nothing left of it to record
                    stats.skipped += 1
                    continue
                writer.append(rx, site, r.raw)
                stats.frames += 1
                stats.garbled += r.error is not None
                if on_frame is not None:
                    on_frame(stats)
    finally:
        if ser is not None:
            _close(ser)
    return stats


def _close(ser: Any) -> None:
    try:
        ser.close()
    except OSError:
        pass


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# -- MQTT ----------------------------------------------------------------------------------------


def capture_mqtt(url: str, writer: TraceWriter, stop: threading.Event, *,
                 topics: tuple[str, ...] = DEFAULT_TOPICS, client_id: str | None = None,
                 on_frame: Callable[[CaptureStats], None] | None = None,
                 stats: CaptureStats | None = None) -> CaptureStats:
    """Record until `stop` is set, counting into `stats`. Raises UsageError if the broker
    cannot be reached or refuses us."""
    import paho.mqtt.client as mqtt  # paho only for MQTT captures
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise UsageError(f"--mqtt {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise UsageError(f"--mqtt {url!r}: bad port") from None
    persistent = client_id is not None
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                    client_id=client_id or f"packsentry-capture-{time.time_ns() % 10**9}")
    if u.scheme == "mqtts":
        c.tls_set()
    if u.username:
        c.username_pw_set(u.username, u.password)
    c.reconnect_delay_set(0.5, 15)
    stats = stats if stats is not None else CaptureStats()
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            connected.set()
            return
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        if connected.is_set():
            print(f"{u.hostname}:{port}: connected again", file=sys.stderr)
        connected.set()

    def on_message(_client: Any, _ud: Any, msg: Any) -> None:
        # paho acknowledges a QoS 1 message after this returns: only once it is written
        payload = bytes(msg.payload)
        parts = msg.topic.split("/")
        if not payload or (parts[-1] == "status" and payload == b"offline"):
            stats.skipped += 1  # a cleared retained message, or a board's last will
            return
        writer.append(now_ms(), parts[1] if len(parts) == 4 else "", payload)
        stats.frames += 1
        if on_frame is not None:
            on_frame(stats)

    c.on_connect = on_connect
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
    try:
        c.connect(u.hostname, port, 30, clean_start=not persistent, properties=props)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot connect to {u.hostname}:{port}: {_reason(exc)}") from None
    c.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S):
            raise UsageError(f"{u.hostname}:{port}: no answer to our connect within "
                             f"{CONNECT_TIMEOUT_S:g} s")
        if refused:
            raise UsageError(f"{u.hostname}:{port} refused the connection: {refused[0]}")
        stop.wait()
    finally:
        c.disconnect()
        c.loop_stop()
    return stats


# -- the command -----------------------------------------------------------------------------------


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM end the capture cleanly (the handlers are put back after)."""
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def cmd_capture(args: argparse.Namespace) -> int:
    if args.serial is not None and (args.topic or args.client_id):
        raise UsageError("--topic and --client-id are for --mqtt captures")
    if args.mqtt is not None and (args.baud is not None or args.site is not None):
        raise UsageError("--baud and --site are for --serial captures (MQTT topics name the "
                         "site)")
    try:
        writer = TraceWriter(args.output)
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    counter = _Counter(sys.stderr)
    stats = CaptureStats()
    try:
        with _stop_on_signals() as stop:
            if args.serial is not None:
                capture_serial(args.serial, writer, stop, baud=args.baud or SerialConfig.baud,
                               site=args.site or SerialConfig.site, on_frame=counter.update,
                               stats=stats)
            else:
                capture_mqtt(args.mqtt, writer, stop, topics=tuple(args.topic or DEFAULT_TOPICS),
                             client_id=args.client_id, on_frame=counter.update, stats=stats)
    finally:
        writer.close()
        counter.close(stats)
    extra = [f"{stats.garbled} of them garbled"] if stats.garbled else []
    extra += [f"{stats.skipped} messages skipped (not frames)"] if stats.skipped else []
    print(f"captured {stats.frames} frames to {args.output}"
          + (f" ({'; '.join(extra)})" if extra else ""))
    return 0
