"""A serial port (USB or UART) as a frame source, and the way back to the boards on it.

One thread per port. It cuts the byte stream into COBS frames (verification is the
processor's) and hands them on. A port that disappears (a USB cable pulled: reads fail with
EIO, the device node goes away) is closed, logged, and looked for again every `reopen_s`;
when it is back the outage is logged with its length and reading resumes. The boards re-send
what they stored meanwhile when the daemon asks (the processor's rebirth on a seq gap).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import serial

from packsentry.protocol.stream import FrameReader, encode_stream_frame

from .config import SerialConfig
from .pipeline import Inbound
from .storage import now_ms

log = logging.getLogger("packsentry.serial")


class SerialSource:
    def __init__(self, cfg: SerialConfig, put: Callable[[Inbound], None],
                 stop: threading.Event) -> None:
        self.cfg = cfg
        self.name = f"serial:{cfg.port}"
        self.put = put
        self.stop = stop
        self.port: serial.Serial | None = None
        self.lock = threading.Lock()  # writes (commands) come from the processor's thread
        self.outages = 0
        self.bytes_in = 0
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    @property
    def is_open(self) -> bool:
        return self.port is not None

    def _open(self) -> serial.Serial | None:
        try:
            return serial.Serial(self.cfg.port, self.cfg.baud, timeout=0.2, exclusive=True)
        except (serial.SerialException, OSError, ValueError):
            return None

    def _run(self) -> None:
        lost_at: float | None = None
        first = True
        while not self.stop.is_set():
            port = self._open()
            if port is None:
                if first:
                    log.warning("%s: cannot open; retrying every %.1f s", self.cfg.port,
                                self.cfg.reopen_s)
                    first = False
                    lost_at = time.monotonic()
                self.stop.wait(self.cfg.reopen_s)
                continue
            if lost_at is not None and not first:
                log.warning("%s: back after %.1f s", self.cfg.port, time.monotonic() - lost_at)
            else:
                log.info("%s: open at %d baud", self.cfg.port, self.cfg.baud)
            first = False
            with self.lock:
                self.port = port
            self._read(port)
            with self.lock:
                self.port = None
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
            if not self.stop.is_set():
                self.outages += 1
                lost_at = time.monotonic()

    def _read(self, port: serial.Serial) -> None:
        reader = FrameReader(verify=False)
        site = self.cfg.site
        while not self.stop.is_set():
            try:
                data = port.read(max(1, min(port.in_waiting, 65536)))
            except (serial.SerialException, OSError) as exc:
                log.warning("%s: port lost (%s); waiting for it to come back", self.cfg.port, exc)
                return
            if not data:
                continue
            self.bytes_in += len(data)
            rx = now_ms()
            for r in reader.feed(data):
                self.put(Inbound(r.raw, rx, self.name, site, link=self, error=r.error))

    def send_command(self, board_id: int, site: str, frame: bytes) -> bool:
        with self.lock:
            if self.port is None:
                return False
            try:
                self.port.write(encode_stream_frame(frame))
            except (serial.SerialException, OSError):
                return False
        return True
