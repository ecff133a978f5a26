"""The virtual board: the unchanged firmware, compiled as for the board (mpy-cross), running in
the MicroPython VM (hil/mpvm.mjs) with stand-ins for the ESP32's hardware (hil/vboard), its
sensors fed by the rig, its UART on a pseudo-terminal or its MQTT client on a real broker.

    line = SerialLine(workdir / "ttyBOARD")            # the daemon's [[serial]] port
    board = VirtualBoard(workdir, config, speed=3000, serial=line)
    board.start(wiring.values(first_reading))
    board.send(1, wiring.values(next_reading))          # feed k, applied at k * feed_ms
    ...
    final = board.stop()

Time: at `speed` N the board's clock runs N times faster than real time while it waits and
`cpu` times faster while it computes (hil/mpvm.mjs, "Time compression"); its clock is not a
function of real time, so the board reports it (`Report`) once per feed and the rig schedules
everything by it. docs/hil.md, "Virtual board", has the whole picture and measured speeds.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import queue
import select
import socket
import struct
import subprocess
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packsentry.host.firmware_build import build

from .mpvm import (
    DEFAULT_HEAP_BYTES,
    GC_PAUSE_MS,
    REPO_ROOT,
    RUNNER,
    check_package,
    clock_args,
    find_node,
)

FIRMWARE = REPO_ROOT / "firmware"
VBOARD = REPO_ROOT / "hil" / "vboard"
BOOT_SCRIPT = "from launch import main\nawait main()\n"
# The launcher and the stand-ins for machine, network and socket (C modules on a board) take
# about 23 KB of the VM's heap (measured: gc.mem_alloc() with and without them); the VM gets
# that on top of the 128 KB an ESP32 without PSRAM leaves to Python.
RIG_HEAP_BYTES = 24_576
BOARD_HEAP_BYTES = DEFAULT_HEAP_BYTES + RIG_HEAP_BYTES


class BoardError(RuntimeError):
    """The virtual board did not start, or died."""


CPU_FACTOR = 30.0


def default_cpu(speed: float) -> float:
    """Computing costs at most CPU_FACTOR times its VM time of board time: an ESP32 runs
    MicroPython some 10-30 times slower than this VM does (an estimate, not a measurement),
    so the board does not look faster than it is, while the rig's own hiccups (the OS not
    scheduling the VM for 50 ms) do not become minutes of board time, as they would at
    the full speed factor."""
    return min(speed, CPU_FACTOR)


def default_min_sleep_ms(speed: float) -> int:
    """Sleeps shorter than a quarter of a real millisecond are lengthened to it (at most 1 s
    of board time): polling loops then wake a few thousand times per real second, not
    hundreds of thousands, and every sleep still ends on its deadline."""
    return int(min(1000, max(1, round(speed / 4))))


@dataclass(frozen=True)
class Report:
    """The board's word after feed k was applied (launch.py's T line)."""

    k: int
    board_ms: int  # since the board started (its ticks)
    wdt_late: int  # watchdog feeds that came too late (a board would have reset)
    wdt_max_gap_ms: int
    free_bytes: int  # gc.mem_free()
    starved: int  # feeds that were due before the rig had sent them
    snapped_ms: int  # board ms taken out by ending sleeps on their deadline
    pending: int  # frames in the board's store the host has not acknowledged
    seq: int  # the board's next seq
    acked: int  # the host's cumulative ack point (this boot)
    synced: int  # 1 once the host has set the board's clock
    stored: int  # frames the board has put in its store so far
    real_s: float  # time.monotonic() when it arrived


@dataclass(frozen=True)
class Final:
    seq: int
    pending: int
    link_dropped: int  # frames the link refused (MQTT down): the store re-sends them
    wdt_late: int
    min_free_bytes: int
    starved: int
    store_dropped: int  # frames the full store had to drop: lost
    stored: int  # frames the board put in its store (samples, alarms, pre-event samples)


def build_vm_tree(out: Path) -> tuple[Path, Path]:
    """Firmware and stand-ins compiled with mpy-cross into out/firmware and out/vboard, as
    `packsentry board build` does for the board (main.py stays source)."""
    fw = build(out / "firmware", FIRMWARE).out
    vb = build(out / "vboard", VBOARD).out
    return fw, vb


class VirtualBoard:
    def __init__(self, workdir: Path, config: dict[str, Any], layout: list[list[int]],
                 static: dict[str, Any], *, speed: float = 1.0, cpu: float | None = None,
                 heap_bytes: int = BOARD_HEAP_BYTES, feed_s: float = 1.0,
                 epoch_ms: int | None = None, min_sleep_ms: int | None = None,
                 serial: SerialLine | None = None, mqtt_port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.config = config
        self.layout = layout
        self.static = static
        self.speed = speed
        self.cpu = default_cpu(speed) if cpu is None else cpu
        self.heap_bytes = heap_bytes
        self.feed_ms = round(feed_s * 1000)
        self.epoch_ms = epoch_ms
        self.min_sleep_ms = default_min_sleep_ms(speed) if min_sleep_ms is None else min_sleep_ms
        self.serial = serial
        self.mqtt_port = mqtt_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "vm.log"
        self.reports: queue.Queue[Report] = queue.Queue()
        self.last: Report | None = None
        self.boot: int | None = None
        self.start_free: int | None = None
        self.started_ms: int | None = None  # the board's clock (epoch ms) when main.py ran
        self.final: Final | None = None
        self.failure: str | None = None
        self._ctl: socket.socket | None = None
        self._feed: socket.socket | None = None
        self._events = threading.Condition()

    # -- life -----------------------------------------------------------------------------------

    def start(self, feeds: list[list[int]], timeout_s: float = 60.0) -> None:
        """Start the VM with feeds 0, 1, ... sent (feed 0 in place before main.py runs: the
        board's drivers find their chips); return when main.py runs."""
        check_package()
        self.workdir.mkdir(parents=True, exist_ok=True)
        fw, vb = build_vm_tree(self.workdir / "vm")
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.2)
        feed_server = socket.create_server(("127.0.0.1", 0))
        feed_server.settimeout(0.2)
        rig = {"control_port": server.getsockname()[1],
               "feed_port": feed_server.getsockname()[1], "feed_ms": self.feed_ms,
               "min_sleep_ms": self.min_sleep_ms, "gc_pause_ms": GC_PAUSE_MS,
               "serial_port": self.serial.port if self.serial else None,
               "mqtt_port": self.mqtt_port}
        (self.workdir / "config.json").write_text(json.dumps(self.config, indent=1))
        (self.workdir / "rig.json").write_text(json.dumps(rig))
        args = [find_node(), str(RUNNER), "--heap", str(self.heap_bytes),
                *clock_args(self.speed, self.cpu)]
        if self.epoch_ms is not None:
            args += ["--epoch", str(self.epoch_ms)]
        args += ["--dir", f"{fw}=/fw", "--dir", f"{vb}=/vb",
                 "--file", f"{self.workdir / 'config.json'}=/config.json",
                 "--file", f"{self.workdir / 'rig.json'}=/rig.json", "-"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT)
        assert self.proc.stdin is not None
        self.proc.stdin.write(BOOT_SCRIPT.encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        try:
            self._ctl = self._accept(server, deadline)
            self._feed = self._accept(feed_server, deadline)
        finally:
            server.close()
            feed_server.close()
        threading.Thread(target=self._read, daemon=True, name="vboard-ctl").start()
        self._line("L", json.dumps(self.layout), to=self._feed)
        self._line("I", json.dumps(self.static), to=self._feed)
        for k, values in enumerate(feeds):
            self.send(k, values)
        with self._events:
            while not self._events.wait_for(lambda: self.boot is not None or self.failure,
                                            timeout=0.2):
                if self.proc.poll() is not None or time.monotonic() > deadline or \
                        "Error" in self.vm_log():  # a full heap can hang the VM: no exit
                    raise BoardError(f"the board did not start:\n{self.vm_log()}")
        if self.failure:
            raise BoardError(f"the board did not start: {self.failure}\n{self.vm_log()}")

    def send(self, k: int, values: list[int]) -> None:
        """The readings of feed k (applied k * feed_ms after the board started)."""
        self._line("R", k, struct.pack(f"<{len(values)}i", *values).hex(), to=self._feed)

    def _accept(self, server: socket.socket, deadline: float) -> socket.socket:
        assert self.proc is not None
        while True:
            try:
                conn, _ = server.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BoardError(f"the VM did not call back:\n{self.vm_log()}") from None

    def set_wifi(self, up: bool) -> None:
        self._line("W", 1 if up else 0)

    def set_speed(self, speed: float, cpu: float | None = None,
                  min_sleep_ms: int | None = None) -> None:
        self.speed = speed
        self.cpu = default_cpu(speed) if cpu is None else cpu
        self.min_sleep_ms = default_min_sleep_ms(speed) if min_sleep_ms is None else min_sleep_ms
        self._line("S", f"{self.speed:g}", f"{self.cpu:g}", self.min_sleep_ms)

    def next_report(self, timeout_s: float) -> Report | None:
        try:
            return self.reports.get(timeout=timeout_s)
        except queue.Empty:
            self.check_alive()
            return None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and self.final is None:
            raise BoardError(f"the VM exited ({self.proc.returncode}):\n{self.vm_log()}")

    def stop(self, timeout_s: float = 30.0) -> Final | None:
        """Stop the board (board.running = False, as a clean shutdown) and the VM."""
        if self.proc is None:
            return self.final
        with contextlib.suppress(OSError):
            self._line("Q")
        with self._events:
            self._events.wait_for(lambda: self.final is not None or self.proc is None
                                  or self.proc.poll() is not None, timeout=timeout_s)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.close()
        return self.final

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for conn in (self._ctl, self._feed):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()

    def vm_log(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    # -- control channel --------------------------------------------------------------------

    def _line(self, *fields: Any, to: socket.socket | None = None) -> None:
        conn = to or self._ctl
        if conn is None:
            raise BoardError("the board is not started")
        conn.sendall((" ".join(str(f) for f in fields) + "\n").encode())

    def _read(self) -> None:
        assert self._ctl is not None
        buf = b""
        while True:
            try:
                data = self._ctl.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._events:
                    self._events.notify_all()
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._handle(line.decode(errors="replace").split(" ", 1))

    def _handle(self, parts: list[str]) -> None:
        kind, rest = parts[0], parts[1] if len(parts) > 1 else ""
        with self._events:
            if kind == "T":
                f = [int(x) for x in rest.split()]
                self.last = Report(*f, real_s=time.monotonic())
                self.reports.put(self.last)
            elif kind == "B":
                boot, free, epoch_ms = (int(x) for x in rest.split())
                self.boot, self.start_free, self.started_ms = boot, free, epoch_ms
            elif kind == "E":
                self.final = Final(*(int(x) for x in rest.split()))
            elif kind == "X":
                self.failure = rest
            self._events.notify_all()


OVERRUN_S = 2.0  # a host that reads nothing for this long (real) loses what the board writes


class SerialLine:
    """The virtual board's UART as a host sees it: a pseudo-terminal behind a stable name (as
    udev's /dev/serial/by-id links are), carried to the VM over a TCP connection (the VM's
    UART stand-in, through its socket bridge). `unplug()` / `plug()` pull and put back the
    USB cable: the pty goes (the host's reads fail) and a new one comes under the same name;
    meanwhile what the board writes goes nowhere, as on a real line. `faults` (a
    packsim.LinkFaults, or None) decides each frame from the board: dropped, one bit flipped,
    duplicated, delayed (its delay in board seconds, over the line's `speed`)."""

    def __init__(self, link: Path, speed: float = 1.0) -> None:
        self.link = Path(link)
        self.speed = speed
        self.faults: Any = None  # packsim.LinkFaults
        self.frames_from_board = 0
        self.lost_unplugged = 0  # frames the board wrote while the cable was out
        self.overruns = 0  # frames dropped because the host did not read (pty full)
        self.dropped = self.corrupted = self.duplicated = self.delayed = 0
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._vm: socket.socket | None = None
        self._later: list[tuple[float, int, bytes]] = []  # delayed frames: (due, n, bytes)
        self._gen = 0  # which pty the host-side reader belongs to
        self._wake = threading.Event()
        self._stop = False
        self.plug()
        threading.Thread(target=self._accept, daemon=True, name="uart-accept").start()
        threading.Thread(target=self._delayed, daemon=True, name="uart-delay").start()

    # -- the cable ----------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            tty.setraw(slave)  # a binary line: no echo, no line editing
            os.set_blocking(master, False)
            if self.link.is_symlink() or self.link.exists():
                self.link.unlink()
            self.link.symlink_to(os.ttyname(slave))
            self._master, self._slave = master, slave
            self._gen += 1
            gen = self._gen
        threading.Thread(target=self._from_host, args=(master, gen), daemon=True,
                         name="uart-rx").start()

    def unplug(self) -> None:
        with self._lock:
            if self._master is None:
                return
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self._gen += 1  # its reader stops (before the fd number can be reused)
            os.close(self._master)  # the host's reads on the slave now fail (EIO)
            assert self._slave is not None
            os.close(self._slave)
            self._master = self._slave = None

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self.unplug()
        self._server.close()
        if self._vm is not None:
            with contextlib.suppress(OSError):
                self._vm.close()

    # -- pumps --------------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._vm = conn
        buf = b""
        while not self._stop:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            *frames, buf = buf.split(b"\0")
            for f in frames:
                self._from_board(f + b"\0")

    def _from_board(self, frame: bytes) -> None:
        n = self.frames_from_board
        self.frames_from_board += 1
        copies = [(0.0, frame)]
        if self.faults is not None:
            body = self.faults.apply(frame[:-1], n)  # the delimiter stays: framing survives
            copies = [(d, b + b"\0") for d, b in body]
            a = self.faults.decide(n)
            self.dropped += a.drop
            self.corrupted += (not a.drop) and a.corrupt_bit is not None
            self.duplicated += (not a.drop) and a.duplicate
            self.delayed += (not a.drop) and a.delay_s > 0
        for delay_s, data in copies:
            if delay_s > 0:
                with self._lock:
                    heapq.heappush(self._later, (time.monotonic() + delay_s / self.speed, n,
                                                 data))
                self._wake.set()
            else:
                self._to_host(data)

    def _to_host(self, data: bytes) -> None:
        with self._lock:
            if self._master is None:
                self.lost_unplugged += 1
                return
            view = memoryview(data)
            deadline = time.monotonic() + OVERRUN_S
            while view:  # a pty takes a few KB at a time: the rest when the host has read
                try:
                    view = view[os.write(self._master, view):]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        self.overruns += 1  # the host has stopped reading: the rest is lost
                        return
                    select.select([], [self._master], [], 0.05)
                except OSError:
                    self.lost_unplugged += 1
                    return

    def _delayed(self) -> None:
        while not self._stop:
            with self._lock:
                due = self._later[0][0] if self._later else None
            self._wake.wait(None if due is None else max(0.0, due - time.monotonic()))
            self._wake.clear()
            now = time.monotonic()
            ready = []
            with self._lock:
                while self._later and self._later[0][0] <= now:
                    ready.append(heapq.heappop(self._later)[2])
            for data in ready:
                self._to_host(data)

    def _from_host(self, master: int, gen: int) -> None:
        """Commands from the host to the VM's UART, until this pty is unplugged."""
        while not self._stop:
            try:
                r, _, _ = select.select([master], [], [], 0.1)
            except (OSError, ValueError):
                return
            with self._lock:
                if self._gen != gen:
                    return
                if not r:
                    continue
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    return
            if not data:
                return
            if self._vm is not None:
                with contextlib.suppress(OSError):
                    self._vm.sendall(data)
