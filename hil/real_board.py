"""Real-board mode: a HIL scenario against a board on a serial port, at speed 1.

    result = run_real(scenario.load(scenario.find("ntc-open")), port="/dev/ttyUSB0",
                      config_file=Path("board.json"))

The board runs this firmware with `sensor_source = "injected"` in its config.json (and a
key: `inject` is always signed): it reads no sensor, it takes its readings from the host's
`inject` commands, and a reading goes INVALID two sample ticks after it came. The rig sits
on the board's serial line between the board and the daemon:

    board (PORT) <-> Middle <-> SerialLine (a pty, the daemon's [[serial]] port) <-> daemon

`Middle` forwards the bytes both ways (the daemon's commands whole frames at a time, cut at
the COBS delimiter) and writes the rig's own signed `inject` frames between them, one per
sample tick of the board with the pack simulator's reading at that moment: before t = 0 the
pack at t = 0 (held while the daemon starts and sets the board's clock), then the scenario.
It reads every frame the board sends, before any link fault: the acks of its injections,
the board's boot and seqs, the daemon's acks. The daemon's side is hil/virtual_board.py's
SerialLine, so `serial_unplug` and `frames` link faults work as with a virtual board.

Before the run: `config_file` (the board's config.json as installed on it) must say
sensor_source injected, hold the board's key, and match what the scenario's pack and board
table imply; otherwise the run stops (exit status 2 from `hil run`) and writes the config the
scenario needs next to the run, to be installed with `packsentry board deploy --config` or
`packsentry send BOARD config` (docs/hil.md, "Real-board mode"). The first injection's ack
then tells whether the running board takes injections at all (result `disabled`: its config
says hardware; `bad_tag`: another key; `unsupported`: older firmware).

Time is real: a physical board cannot be compressed, so `speed` must be 1 and the scenario
takes its duration plus drain in real time.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packsentry.host.commands import Commands
from packsentry.protocol import codec, layout
from packsentry.protocol.errors import ProtocolError
from packsentry.protocol.stream import FrameReader, encode_stream_frame

from .rig import (
    SITE,
    Check,
    Daemon,
    RigError,
    RunResult,
    _hms,
    _link_fault,
    _Timeline,
    expectation_checks,
    prepare_workdir,
    simulator,
)
from .scenario import Scenario
from .virtual_board import SerialLine
from .wiring import BoardConfigError, board_config, parse_board_config

ACK_WAIT_S = 5.0  # how long the first injection's ack may take
SYNC_REAL_S = 60.0  # the daemon must have the board's birth and set its clock within this
DRAIN_REAL_S = 10.0  # after the drain, how long to wait for the last acks
# the daemon gives up a seq gap that no re-send has shrunk for this long (default 30 s): a
# board's re-send after a rebirth starts within a second, and the run must not wait long
# for the gap its frames from before the daemon leave
GAP_SETTLE_S = 5.0
U32_INVALID = layout.markers("I")[1]
TICK_MS = 1_000  # firmware/app.py: the board samples every second, or every sample period
# config fields a scenario decides (through its pack and its [board] table): the board's
# must match, or its alarms are not the scenario's
SCENARIO_FIELDS = ("chemistry", "cells_series", "rated_mah", "max_pack_mv", "max_temp_dc",
                   "n_cells", "probe_cell", "sample_period_ms", "thresholds")
REFUSALS = {
    "disabled": "the board refuses injections: the config it runs says sensor_source = "
                "\"hardware\" (install one with \"injected\", see docs/hil.md, "
                "'Real-board mode')",
    "bad_tag": "the board refuses the rig's signature: the key_hex of {config} is not the key "
               "the board runs with",
    "unsupported": "the board's firmware has no inject command: deploy this firmware "
                   "(packsentry board deploy --port {port} --config {config})",
    "invalid": "the board refuses the reading: its probe or cell count is not the one "
               "{config} gives (n_probes {n_probes}, n_cells {n_cells}): it runs another config",
}


# -- the board's config ------------------------------------------------------------------------


def check_board_config(sc: Scenario, path: Path | None, workdir: Path) -> dict[str, Any]:
    """The board's config.json, checked for this scenario; RigError naming what is wrong
    (and writing the config the scenario needs into workdir) otherwise."""
    if path is None:
        raise RigError("real-board mode needs --board-config FILE: the board's config.json "
                       "as installed on it (its board_id and key; sensor_source \"injected\")")
    try:
        cfg = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RigError(f"--board-config {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise RigError(f"--board-config {path}: invalid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise RigError(f"--board-config {path}: expected a JSON object")
    try:
        parsed = parse_board_config(cfg)
    except BoardConfigError as exc:
        raise RigError(f"--board-config {path}: the board would repair it: {exc}") from None
    from .packsim import PackSpec

    link = cfg.get("link") if isinstance(cfg.get("link"), dict) else {"kind": "serial"}
    needed = board_config(board_id=parsed["board_id"], site=parsed["site"],
                          pack=PackSpec(**sc.pack).birth_fields(), overrides=sc.board,
                          link=link)
    needed.update(key_hex=parsed["key_hex"], sensor_source="injected")
    want = parse_board_config(needed)
    problems = []
    if parsed["sensor_source"] != "injected":
        problems.append(f'sensor_source is "{parsed["sensor_source"]}", not "injected"')
    if not parsed["key_hex"]:
        problems.append("no key_hex (inject commands are always signed: provision a key with "
                        "packsentry board provision)")
    if parsed["link.kind"] != "serial":
        problems.append(f'link.kind is "{parsed["link.kind"]}": real-board mode runs on the '
                        f"serial link")
    for name in SCENARIO_FIELDS:
        if parsed[name] != want[name]:
            problems.append(f"{name} is {json.dumps(parsed[name])}, the scenario needs "
                            f"{json.dumps(want[name])}")
    if parsed.n_probes != want.n_probes:
        problems.append(f"{parsed.n_probes} temperature probes, the scenario needs "
                        f"{want.n_probes}")
    if problems:
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / "board-config.json"
        out.write_text(json.dumps(needed, indent=1) + "\n")
        raise RigError(
            f"--board-config {path} is not a config for scenario {sc.name}: "
            + "; ".join(problems) + f". The config it needs (this board's id and key) is in "
            f"{out}: install it (packsentry board deploy --port PORT --config {out}, or "
            f"packsentry send {parsed['board_id']} config {out} through a running daemon), "
            f"then pass it as --board-config")
    return cfg


# -- the rig in the middle ---------------------------------------------------------------------


@dataclass
class Seen:
    """What passed on the line, as the rig saw it (before any link fault)."""

    board_id: int | None = None
    boots: set[int] = field(default_factory=set)
    boot: int | None = None  # of the latest frame
    next_seq: int = 0  # after the latest frame of that boot
    births: int = 0
    synced: bool = False  # a frame carried time_synced
    stored: dict[int, set[int]] = field(default_factory=dict)  # boot -> sample/alarm seqs
    heap_free_min: int | None = None  # from status frames
    acked: dict[int, int] = field(default_factory=dict)  # boot -> the daemon's ack point
    inject_results: dict[int, str] = field(default_factory=dict)  # inject seq -> result
    bad_frames: int = 0


class Middle:
    """The board's port on one side, the daemon's SerialLine on the other; forwards both
    ways, decodes both ways, and writes the rig's frames between the daemon's."""

    def __init__(self, port: str, baud: int, line: SerialLine) -> None:
        from packsentry.host.board import BoardError, open_serial

        try:
            self.ser = open_serial(port, baud)
        except BoardError as exc:
            raise RigError(str(exc)) from None
        self.port = port
        self.seen = Seen()
        self.lock = threading.Lock()  # writes to the board: one whole frame at a time
        self.events = threading.Condition()
        self.stop_flag = False
        self.sock = socket.create_connection(("127.0.0.1", line.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.threads = [threading.Thread(target=self._from_board, daemon=True,
                                         name="real-board-rx"),
                        threading.Thread(target=self._from_host, daemon=True,
                                         name="real-board-tx")]
        self.failure: str | None = None
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop_flag = True
        with contextlib.suppress(OSError):
            self.sock.close()
        for t in self.threads:
            t.join(2)
        with contextlib.suppress(Exception):
            self.ser.close()

    def send(self, frame: bytes) -> None:
        """A bare frame to the board, COBS-framed as the host's serial writer frames it."""
        data = encode_stream_frame(frame)
        with self.lock:
            self.ser.write(data)

    def wait(self, pred: Callable[[Seen], bool], timeout_s: float) -> bool:
        with self.events:
            return self.events.wait_for(lambda: pred(self.seen) or self.failure is not None,
                                        timeout_s) and self.failure is None

    # -- pumps ------------------------------------------------------------------------------

    def _from_board(self) -> None:
        reader = FrameReader(verify=False)
        while not self.stop_flag:
            try:
                data = self.ser.read(max(1, min(self.ser.in_waiting, 65536)))
            except Exception as exc:  # the port went (a real cable): the run cannot go on
                if not self.stop_flag:
                    self._fail(f"{self.port}: {exc}")
                return
            if not data:
                continue
            with contextlib.suppress(OSError):  # the daemon's side; SerialLine handles faults
                self.sock.sendall(data)
            for r in reader.feed(data):
                self._board_frame(r.raw)

    def _from_host(self) -> None:
        reader = FrameReader(verify=False)
        buf = b""
        while not self.stop_flag:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            end = buf.rfind(b"\0")
            if end < 0:
                continue
            whole, buf = buf[:end + 1], buf[end + 1:]
            try:
                with self.lock:  # never an inject frame inside one of the daemon's
                    self.ser.write(whole)
            except Exception as exc:
                if not self.stop_flag:
                    self._fail(f"{self.port}: {exc}")
                return
            for r in reader.feed(whole):
                self._host_frame(r.raw)

    def _fail(self, why: str) -> None:
        with self.events:
            self.failure = why
            self.events.notify_all()

    def _board_frame(self, raw: bytes) -> None:
        try:
            f = codec.decode_frame(raw)  # the daemon verifies the tags; this is a monitor
        except ProtocolError:
            self.seen.bad_frames += 1
            return
        s = self.seen
        with self.events:
            s.board_id = f["board_id"]
            s.boots.add(f["boot"])
            if f["boot"] != s.boot:
                s.boot, s.next_seq = f["boot"], 0
            t = f["msg_type"]
            if not f["flags"] & codec.FLAGS["historical"]:
                s.next_seq = max(s.next_seq, f["seq"] + codec.seq_span(f))
            s.synced = s.synced or bool(f["flags"] & codec.FLAGS["time_synced"])
            p = f["payload"]
            if t == "birth":
                s.births += 1
            elif t in ("sample", "batch", "alarm"):
                seqs = s.stored.setdefault(f["boot"], set())
                seqs.update(range(f["seq"], f["seq"] + codec.seq_span(f)))
            elif t == "status":
                free = p["heap_free_bytes"]
                s.heap_free_min = free if s.heap_free_min is None else min(s.heap_free_min,
                                                                             free)
            elif t == "cmd_ack" and p["cmd_type"] == "inject":
                s.inject_results[p["cmd_seq"]] = p["result"]
            self.events.notify_all()

    def _host_frame(self, raw: bytes) -> None:
        try:
            f = codec.decode_frame(raw)
        except ProtocolError:
            return
        if f["msg_type"] == "ack":
            p = f["payload"]
            with self.events:
                acked = self.seen.acked
                acked[p["acked_boot"]] = max(acked.get(p["acked_boot"], -1), p["acked_seq"])
                self.events.notify_all()


class Injector:
    """One inject frame per board tick, in a thread of its own (the daemon's start and the
    checks do not hold it up): `reading_at(t_s)` gives the reading, t_s None before t = 0."""

    def __init__(self, middle: Middle, commands: Commands, board_id: int, tick_s: float,
                 reading_at: Callable[[float | None], Mapping[str, Any]]) -> None:
        self.middle = middle
        self.commands = commands
        self.board_id = board_id
        self.tick_s = tick_s
        self.reading_at = reading_at
        self.t0: float | None = None  # time.monotonic() of t = 0
        self.sent: list[int] = []  # seqs of the inject frames sent
        self.late = 0  # injections sent more than a tick late
        self.next_at = time.monotonic()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="injector")

    def start(self) -> None:
        self.next_at = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def start_scenario(self) -> float:
        """t = 0 at the next injection; returns its time.monotonic()."""
        self.t0 = self.next_at
        return self.t0

    def inject_once(self) -> int:
        """Send one inject now (the pre-run check); its seq."""
        return self._send(self.reading_at(None))

    def _send(self, reading: Mapping[str, Any]) -> int:
        seq = self.commands.seq
        self.middle.send(self.commands.inject(self.board_id, reading))
        self.sent.append(seq)
        return seq

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            at = self.next_at
            t0 = self.t0
            try:
                self._send(self.reading_at(None if t0 is None or at < t0 else at - t0))
            except Exception as exc:  # the port is gone: the main loop reports it
                self.error = f"sending an injection: {exc}"
                return
            self.next_at = at + self.tick_s
            if time.monotonic() - self.next_at > self.tick_s:  # the machine stalled
                self.late += t0 is not None and at >= t0  # before t = 0 it does not matter
                self.next_at = time.monotonic()


# -- the run -----------------------------------------------------------------------------------


def run_real(sc: Scenario, *, port: str, config_file: Path | None, transport: str = "serial",
             speed: float | None = None, cpu: float | None = None, workdir: Path | None = None,
             log: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario against the board on `port` (see the module's docstring). Raises
    RigError for what stops a run before it starts (a config, the port, refused
    injections); what goes wrong during it is a failed check."""
    if transport != "serial":
        raise RigError(f"real-board mode runs over the serial link, not {transport}: the rig "
                       f"sends its injections on the board's serial line")
    if "serial" not in sc.transports:
        raise RigError(f"scenario {sc.name} is not for serial (only {', '.join(sc.transports)})")
    if (speed not in (None, 1, 1.0)) or (cpu not in (None, 1, 1.0)):
        raise RigError("a physical board runs in real time: real-board mode runs at speed 1 "
                       "(leave out --speed and --cpu)")
    say = log or (lambda _m: None)
    workdir = prepare_workdir(sc, workdir, "board")
    cfg = check_board_config(sc, config_file, workdir)
    parsed = parse_board_config(cfg)
    board_id = parsed["board_id"]
    key = bytes.fromhex(parsed["key_hex"])
    n_cells = parsed["n_cells"]
    tick_s = min(TICK_MS, parsed["sample_period_ms"]) / 1000
    result = RunResult(sc.name, f"serial ({port})", 1.0, 1.0, workdir=workdir)

    sim = simulator(sc)

    def step() -> dict[str, Any]:
        r = sim.step(sc.feed_s if sim.t_s > 0 else 1e-3).to_board_units(0)
        r["cells_mv"] = r["cells_mv"][:n_cells]  # the board reads at most one AFE's cells
        return r

    first = step()  # the pack at t = 0, held until the scenario starts
    state = {"k": 0, "reading": first}

    def reading_at(t_s: float | None) -> Mapping[str, Any]:
        if t_s is None:
            return first
        k = math.floor(t_s / sc.feed_s + 1e-9)  # feed k: the simulator at k * feed_s
        while state["k"] < k:
            state["k"] += 1
            state["reading"] = step()
        return state["reading"]

    line = SerialLine(workdir / "ttyBOARD", speed=1.0)
    keys = f'[keys]\n"{board_id}" = "{key.hex()}"\n'
    daemon = Daemon(workdir, f"[daemon]\ngap_settle_s = {GAP_SETTLE_S}\n\n"
                    f'[[serial]]\nport = "{line.link}"\nsite = "{SITE}"\n'
                    f"reopen_s = 0.2\nbaud = {parsed['link.baud']}\n\n{keys}\n"
                    + sc.daemon_toml)
    middle: Middle | None = None
    injector: Injector | None = None
    started = False
    try:
        middle = Middle(port, parsed["link.baud"], line)
        injector = Injector(middle, Commands({board_id: key}), board_id, tick_s, reading_at)
        say(f"{sc.name} on the board at {port} (board {board_id}), real time; workdir "
            f"{workdir}")
        _check_injection(injector, middle, port, config_file, parsed)
        injector.start()  # the pack at t = 0 until the scenario starts
        daemon.start()
        if not middle.wait(lambda s: s.births > 0 and s.synced, SYNC_REAL_S):
            raise RigError(middle.failure or (
                f"within {SYNC_REAL_S:g} s the daemon did not get the board's birth and set "
                f"its clock (frames seen: {'yes' if middle.seen.boots else 'none'}; "
                f"daemon log {daemon.log})"))
        # The board ran before the daemon listened: what it sent then and did not store (its
        # boot birth, the check's acks) is a gap the daemon gives up after gap_settle_s, with
        # a "frames lost" alarm. Start once the daemon has acknowledged up to now: that is
        # settled, and its alarm falls before t = 0 (listed, not judged).
        mark = middle.seen.next_seq
        if not middle.wait(lambda s: s.acked.get(s.boot or 0, -1) >= mark - 1, SYNC_REAL_S):
            raise RigError(middle.failure or (
                f"within {SYNC_REAL_S:g} s the daemon did not acknowledge the board's frames "
                f"up to seq {mark - 1} (daemon log {daemon.log})"))
        t0_real = injector.start_scenario()
        started = True
        # t = 0 on the host's clock, which the daemon's time sync gave the board (to within
        # the sync's transit: milliseconds on a serial line)
        t0_ms = time.time_ns() // 1_000_000 + round((t0_real - time.monotonic()) * 1000)
        boot = middle.seen.boot
        say(f"board clock set: the scenario starts, {_hms(sc.duration_s)} + "
            f"{_hms(sc.drain_s)} drain in real time")
        timeline = _Timeline(sc.link_faults_for("serial"))
        end_seq: int | None = None
        end_s = sc.duration_s + sc.drain_s
        while True:
            t_s = time.monotonic() - t0_real
            for what, f in timeline.due(t_s):
                say(f"{_hms(t_s)} link fault {f.kind} {what}s")
                _link_fault(what, f, line=line, broker=None, vb=None)  # type: ignore[arg-type]
            if middle.failure or injector.error:
                raise RigError(middle.failure or injector.error or "")
            if not daemon.alive():
                raise RigError(f"the daemon exited:\n{daemon.text()[-3000:]}")
            if t_s >= sc.duration_s and end_seq is None:
                end_seq = middle.seen.next_seq  # every frame before it must reach the host
            if t_s >= end_s:
                break
            time.sleep(min(0.2, max(0.0, end_s - t_s)))
        assert end_seq is not None and boot is not None
        real_s = time.monotonic() - t0_real
        middle.wait(lambda s: s.acked.get(boot, -1) >= end_seq - 1, DRAIN_REAL_S)
        injector.stop()
        middle.wait(lambda s: set(injector.sent) <= set(s.inject_results), 2.0)
        time.sleep(1.0)  # the daemon's last micro-batch
        _evaluate(sc, result, daemon, middle.seen, injector, board_id, boot, t0_ms, end_seq,
                  real_s)
    except RigError as exc:
        if not started:
            raise  # nothing ran: the port, the board's answer, the daemon (exit status 2)
        result.checks.append(Check("the run", "completes", str(exc).splitlines()[0], False))
        say(str(exc))
    finally:
        if injector is not None:
            injector.stop()
        rc = daemon.stop()
        if middle is not None:
            middle.close()
        line.close()
        if rc not in (0, None):
            result.checks.append(Check("daemon exit status", "0", str(rc), False))
    return result


def _check_injection(injector: Injector, middle: Middle, port: str, config: Path | None,
                     parsed: Any) -> None:
    """One injection, and its ack: does the running board take them? Tried three times
    (a board that is booting answers nothing for a moment)."""
    for _ in range(3):
        seq = injector.inject_once()
        if middle.wait(lambda s, seq=seq: seq in s.inject_results, ACK_WAIT_S / 3):
            result = middle.seen.inject_results[seq]
            if result == "ok":
                return
            why = REFUSALS.get(result, "the board refuses the injection ({result})")
            raise RigError(f"board on {port}: inject answered {result}: " + why.format(
                config=config, port=port, result=result, n_probes=parsed.n_probes,
                n_cells=parsed["n_cells"]))
        if middle.failure:
            raise RigError(middle.failure)
    seen = middle.seen
    raise RigError(f"no answer from the board on {port} to an inject command within "
                   f"{ACK_WAIT_S:g} s (" + (f"frames from board {seen.board_id} seen: is it "
                                             f"running this firmware, at "
                                             f"{parsed['link.baud']} baud?"
                                             if seen.boots else
                                             "no frames from it at all: is it powered and "
                                             "running, and is this its port?") + ")")


def _evaluate(sc: Scenario, result: RunResult, daemon: Daemon, seen: Seen, injector: Injector,
              board_id: int, boot: int, t0_ms: int, end_seq: int, real_s: float) -> None:
    pre = expectation_checks(sc, result, daemon, t0_ms, board_id)
    checks = result.checks
    if sc.all_frames:
        sent = len([q for q in seen.stored.get(boot, set()) if q < end_seq])
        got = daemon.query(
            "SELECT (SELECT count(*) FROM samples WHERE board_id = ? AND boot = ? AND seq < ?)"
            " + (SELECT count(*) FROM board_frames WHERE board_id = ? AND boot = ? AND seq < ?"
            " AND msg_type = 'alarm')", board_id, boot, end_seq, board_id, boot, end_seq)[0][0]
        checks.append(Check("every frame the board sent reached the host", f"{sent} frames",
                            f"{got} in the database", got == sent))
        acked = seen.acked.get(boot, -1)
        checks.append(Check("every frame acknowledged", f"acked to seq {end_seq - 1}",
                            f"acked to {acked}", acked >= end_seq - 1))
    boots = sorted(seen.boots)
    checks.append(Check("the board did not reset", f"boot {boot} throughout",
                        ", ".join(map(str, boots)), boots == [boot]))
    results = [seen.inject_results.get(q) for q in injector.sent]
    refused = sorted({r for r in results if r not in (None, "ok")})
    unanswered = results.count(None)
    checks.append(Check("every injection taken", f"{len(results)} ok",
                        f"{results.count('ok')} ok, {unanswered} unanswered"
                        + (f", refused: {', '.join(refused)}" if refused else ""),
                        not refused and unanswered == 0))
    stale = daemon.query("SELECT count(*) FROM samples WHERE board_id = ? AND boot = ? AND "
                         "ts_ms >= ? AND seq < ? AND pack_mv = ?", board_id, boot, t0_ms,
                         end_seq, U32_INVALID)[0][0]
    checks.append(Check("injections on time", "0 late, 0 stale samples",
                        f"{injector.late} late, {stale} stale",
                        injector.late == 0 and stale == 0))
    samples = daemon.query("SELECT count(*) FROM samples WHERE board_id = ?", board_id)[0][0]
    rejected = daemon.query("SELECT count(*) FROM rejected")[0][0]
    heap = "unknown (no status frame, one a minute)" if seen.heap_free_min is None else \
        f"{seen.heap_free_min} B (status frames)"
    result.stats = {
        "board_s": real_s, "real_s": real_s, "effective_speed": 1.0,
        "samples": samples, "pre_event": pre, "rejected": rejected,
        "injections": len(results), "heap_free_min": seen.heap_free_min,
        "summary": f"board time {_hms(real_s)} in real time; injections {len(results)} "
                   f"({injector.late} late); heap free min {heap}; frames "
                   f"stored {samples} samples, {pre} pre-event; rejected {rejected}; workdir "
                   f"{result.workdir}",
    }
