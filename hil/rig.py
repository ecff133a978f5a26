"""The HIL rig: one scenario (hil/scenario.py) against the real daemon.

    result = run(scenario.load(scenario.find("healthy-24h")), transport="serial")
    print(result.table())

For each run: a fresh working directory, the daemon (`packsentry daemon`, a process of its
own, with a temporary database), for MQTT a private Mosquitto on a free port, the pack
simulator (hil/packsim.py) with the scenario's pack, load and faults, and the board: the
virtual board (hil/virtual_board.py: the unchanged firmware in the MicroPython VM), its UART
on a pseudo-terminal that the daemon reads as a `[[serial]]` port, or its MQTT client on the
broker. The rig feeds the board's sensors each `feed_s` of board time, applies the link
faults when the board's clock says so, lets the board run on for `drain_s` after the
scenario so that the last frames and acks get through, stops everything, and then reads the
daemon's database: which alarms came when, the SoH estimates, what was stored. `RunResult`
holds the checks (expected vs got) and prints them as a pass/fail table.

A board on a serial port (`board="/dev/ttyUSB0"`, the board's config.json as
`config_file`): hil/real_board.py runs the same scenario at speed 1, the board in
injected-sensor mode (config sensor_source = "injected") and the rig sending it the
simulator's readings as signed `inject` commands on the daemon's serial line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenario import AlarmExpectation, LinkFault, Scenario, load_profile
from .virtual_board import BoardError, SerialLine, VirtualBoard, default_cpu
from .wiring import Wiring, board_config

BOARD_ID = 0x0051_1A00  # 5315072: the rig's board
SITE = "hil"
PRE_EVENT = 0x08  # frame flag (protocol schema)
# A run may take this many times its nominal real time (+ 60 s): a guard against a run that
# hangs, not a speed check. 4x was too tight on a slow shared box: insulation-3d (26 s
# nominal at 10 000x) took 159-168 s there against the 164 s it allowed.
REAL_TIMEOUT_FACTOR = 10.0
DRAIN_REAL_S = 10.0  # after the drain time, how long (real) to wait for the last acks
BOOT_SPEED = 10.0  # the board boots this fast (or faster for long feeds) until its clock is set
BOOT_REAL_S = 60.0  # and that must happen within this much real time
GAP_SETTLE_S = 2.0  # the daemon's gap_settle_s for compressed boards


class RigError(RuntimeError):
    pass


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """`packsentry daemon` as its users run it, on a database of its own."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.db = workdir / "depot.db"
        self.conf = workdir / "daemon.toml"
        self.conf.write_text(f'[storage]\npath = "{self.db}"\n' + config)
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "packsentry.host.cli", "daemon", "--config",
                 str(self.conf)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while "ready:" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RigError(f"the daemon did not start:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    got: str
    ok: bool | None  # None: for information, not a pass or a fail

    @property
    def status(self) -> str:
        return "INFO" if self.ok is None else "PASS" if self.ok else "FAIL"


@dataclass(frozen=True)
class AlarmSeen:
    t_s: float  # board time since the board started
    rule: str
    level: int
    prev_level: int
    event: str
    source: str
    alarm_id: int
    message: str


@dataclass
class RunResult:
    scenario: str
    transport: str
    speed: float
    cpu: float
    checks: list[Check] = field(default_factory=list)
    alarms: list[AlarmSeen] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def table(self) -> str:
        rows = [("check", "expected", "got", "")] + [
            (c.name, c.expected, c.got, c.status) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{self.scenario} over {self.transport}, speed {self.speed:g}"
                 f" (cpu {self.cpu:g}): {'PASS' if self.passed else 'FAIL'}"]
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  ----")
        s = self.stats
        if s.get("summary"):  # a real board's (hil/real_board.py): other figures
            lines.append(s["summary"])
        elif s:
            lines.append(
                f"board time {_hms(s['board_s'])} in {s['real_s']:.1f} s real (effective "
                f"{s['effective_speed']:.0f}x); heap free min {s['min_free_bytes']} B; "
                f"watchdog max gap {s['wdt_max_gap_ms'] / 1000:.1f} s; frames stored "
                f"{s['samples']} samples, {s['pre_event']} pre-event; rejected "
                f"{s['rejected']}; workdir {self.workdir}")
        return "\n".join(lines)


def _hms(t_s: float) -> str:
    if not math.isfinite(t_s):
        return "never"
    sign = "-" if t_s < 0 else ""
    t = abs(round(t_s))
    return f"{sign}{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}"


def _window(a: AlarmExpectation) -> str:
    hi = "end" if not math.isfinite(a.latest_s) else _hms(a.latest_s)
    return f"{_hms(a.earliest_s)} .. {hi}"


def match(a: AlarmExpectation, seen: list[AlarmSeen]) -> AlarmSeen | None:
    """The first event that meets the expectation (its rule, level, source, event)."""
    for e in seen:
        if e.rule != a.rule or e.event not in ("raised", "escalated"):
            continue
        if a.event is not None and e.event != a.event:
            continue
        if a.source is not None and e.source != a.source:
            continue
        if (e.level >= a.level) if a.at_least else (e.level == a.level):
            return e
    return None


# -- the run -----------------------------------------------------------------------------------


@dataclass
class _Timeline:
    """Link faults by board time: each starts once and ends once."""

    faults: list[LinkFault]
    started: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)

    def due(self, t_s: float) -> list[tuple[str, LinkFault]]:
        out = []
        for i, f in enumerate(self.faults):
            if i not in self.started and t_s >= f.start_s:
                self.started.add(i)
                out.append(("start", f))
            if i in self.started and i not in self.ended and t_s >= f.end_s:
                self.ended.add(i)
                out.append(("end", f))
        return out


def run(sc: Scenario, *, transport: str = "serial", board: str = "virtual",
        speed: float | None = None, cpu: float | None = None, workdir: Path | None = None,
        log: Callable[[str], None] | None = None,
        config_file: Path | None = None) -> RunResult:
    """Run one scenario over one transport; return the checks. `board` is "virtual" or a
    serial port with a real board, whose config.json is `config_file` (hil/real_board.py)."""
    if board != "virtual":
        from .real_board import run_real

        return run_real(sc, port=board, config_file=config_file, transport=transport,
                        speed=speed, cpu=cpu, workdir=workdir, log=log)
    if transport not in sc.transports:
        raise RigError(f"scenario {sc.name} is not for {transport} "
                       f"(only {', '.join(sc.transports)})")
    speed = float(speed or sc.speed)
    cpu = float(cpu or sc.cpu or default_cpu(speed))
    say = log or (lambda _m: None)
    workdir = prepare_workdir(sc, workdir, transport)
    result = RunResult(sc.name, transport, speed, cpu, workdir=workdir)

    from .broker import Broker
    from .packsim import PackSpec

    sim = simulator(sc)
    pack = PackSpec(**sc.pack).birth_fields()
    line: SerialLine | None = None
    broker: Broker | None = None
    if transport == "serial":
        line = SerialLine(workdir / "ttyBOARD", speed=speed)
        link = {"kind": "serial", "uart": 1}
        source = (f'[[serial]]\nport = "{line.link}"\nsite = "{SITE}"\nreopen_s = 0.2\n')
    else:
        broker = Broker(workdir / "broker")
        broker.start()
        link = {"kind": "mqtt", "broker": "127.0.0.1", "port": broker.port,
                "wifi_ssid": "rig", "keepalive_s": 60}
        source = f'[mqtt]\nurl = "{broker.url}"\nclient_id = "hil-{os.getpid()}"\n'
    config = board_config(board_id=BOARD_ID, site=SITE, pack=pack, overrides=sc.board,
                          link=link)
    wiring = Wiring(config)
    # the daemon's real-time knobs, scaled for a compressed board: a gap that the board's
    # re-send has not filled within 2 s (real) is given up (default 30 s: at 3000x, a day)
    daemon = Daemon(workdir, f"[daemon]\ngap_settle_s = {GAP_SETTLE_S}\n\n" + source
                    + sc.daemon_toml)
    feed_ms = round(sc.feed_s * 1000)
    # feeds sent ahead: about half a second of real time at full speed (they wait in the
    # VM's socket buffer, outside the board's heap, until the board needs them)
    window = min(128, max(8, math.ceil(speed * 0.5 / sc.feed_s)))
    end_s = sc.duration_s + sc.drain_s
    last_k = math.ceil((end_s + DRAIN_REAL_S * speed) * 1000 / feed_ms) + 1  # feeds after t=0

    def reading() -> list[int]:
        r = sim.step(sc.feed_s if sim.t_s > 0 else 1e-3)
        return wiring.values(r.to_board_units(0), ntc_short=list(r.ntc_short[0]),
                             riso_ohm=(float(r.riso_pos_ohm[0]), float(r.riso_neg_ohm[0])))

    first = reading()  # the pack at t = 0, held while the board boots
    start_k: int | None = None  # the first feed of the scenario (t = 0)

    def feed(k: int) -> list[int]:
        return first if start_k is None or k <= start_k else reading()

    # Boot: a board's first frames carry no time until the host sets its clock (its answer
    # to the birth), and the host answers in real time: at full speed that would be minutes
    # of board time. So the board boots at BOOT_SPEED, and the scenario (t = 0, the pack
    # simulator's first step, full speed) starts at the first feed after its clock is set.
    boot_speed = min(speed, max(BOOT_SPEED, sc.feed_s * 5))  # a feed (report) in 0.2 s real
    vb = VirtualBoard(workdir / "board", config, wiring.layout(), wiring.static(),
                      speed=boot_speed, cpu=min(cpu, boot_speed), feed_s=sc.feed_s,
                      serial=line, mqtt_port=broker.port if broker else None)
    timeline = _Timeline(sc.link_faults_for(transport))
    report = None
    real0 = time.monotonic()
    end_seq: int | None = None
    try:
        say(f"{sc.name} over {transport}: daemon starting in {workdir}")
        daemon.start()
        say(f"board booting at {boot_speed:g}x")
        sent = window
        vb.start([first] * (sent + 1))
        boot_deadline = time.monotonic() + BOOT_REAL_S
        deadline = math.inf
        starved = 0
        drained = 0.0
        end_stored = 0
        while True:
            got = vb.next_report(1.0)
            if got is None:
                if time.monotonic() > min(deadline, boot_deadline if start_k is None
                                          else math.inf):
                    raise RigError("the board stopped reporting")
                continue
            report = got
            while not vb.reports.empty():  # catch up with the board
                report = vb.reports.get_nowait()
            if start_k is None:
                if report.synced:
                    start_k = sent + 1
                    vb.set_speed(speed, cpu)
                    real0 = time.monotonic()
                    deadline = real0 + 60 + REAL_TIMEOUT_FACTOR * end_s / speed
                    say(f"board clock set after {report.board_ms / 1000:.1f} s: the scenario "
                        f"starts, {speed:g}x (cpu {cpu:g}x), {_hms(sc.duration_s)}")
                elif time.monotonic() > boot_deadline:
                    raise RigError(f"the host did not set the board's clock within "
                                   f"{BOOT_REAL_S:g} s")
            t_s = (report.board_ms - (start_k or 10**12) * feed_ms) / 1000  # scenario time
            for what, f in timeline.due(t_s):
                say(f"{_hms(t_s)} link fault {f.kind} {what}s")
                _link_fault(what, f, line=line, broker=broker, vb=vb)
            while sent < report.k + window and (start_k is None or sent < start_k + last_k):
                sent += 1
                vb.send(sent, feed(sent))
            if report.starved > starved:
                say(f"{_hms(t_s)} the board's sensor feed ran dry ({report.starved} times): "
                    f"feed {report.k}, {sent} sent")
                starved = report.starved
            if t_s >= sc.duration_s and end_seq is None:
                end_seq = report.seq  # every frame before this one must be acknowledged
                end_stored = report.stored  # and every frame stored by then be in the DB
            if end_seq is not None and t_s >= sc.duration_s + sc.drain_s:
                drained = drained or time.monotonic()
                # the last frames need the daemon's acks: they come every 2 s of real time
                if report.acked >= end_seq - 1 or time.monotonic() - drained > DRAIN_REAL_S:
                    break
            if time.monotonic() > deadline:
                raise RigError(f"too slow: {_hms(t_s)} of {_hms(end_s)} after "
                               f"{time.monotonic() - real0:.0f} s real")
            if not daemon.alive():
                raise RigError(f"the daemon exited:\n{daemon.text()[-3000:]}")
        real_s = time.monotonic() - real0
        final = vb.stop()
        time.sleep(1.0)  # the daemon's last micro-batch and acks
        assert start_k is not None and end_seq is not None
        result.stats["start_s"] = start_k * sc.feed_s
        _evaluate(sc, result, daemon, vb, report, final, real_s, end_seq, start_k * feed_ms,
                  end_stored)
    except (BoardError, RigError) as exc:
        result.checks.append(Check("the run", "completes", str(exc).splitlines()[0], False))
        say(str(exc))
    finally:
        vb.close()
        rc = daemon.stop()
        if line is not None:
            line.close()
        if broker is not None:
            broker.stop()
        if rc not in (0, None):
            result.checks.append(Check("daemon exit status", "0", str(rc), False))
    return result


def prepare_workdir(sc: Scenario, workdir: Path | None, tag: str) -> Path:
    """The run's folder (a new temporary one if None), without an earlier run's database."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"hil-{sc.name}-{tag}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("depot.db", "depot.db-wal", "depot.db-shm"):
        (workdir / name).unlink(missing_ok=True)
    return workdir


def simulator(sc: Scenario) -> Any:
    """The scenario's pack, faults and load as a packsim.PackSim."""
    from .packsim import Fault, PackSim, PackSpec

    return PackSim([PackSpec(**sc.pack)], seed=sc.seed, faults=[Fault(**f) for f in sc.faults],
                   load=load_profile(sc.load))


def _link_fault(what: str, f: LinkFault, *, line: SerialLine | None, broker: Any,
                vb: VirtualBoard) -> None:
    start = what == "start"
    if f.kind == "serial_unplug" and line is not None:
        line.unplug() if start else line.plug()
    elif f.kind == "broker_restart" and broker is not None:
        broker.stop() if start else broker.start()
    elif f.kind == "wifi_down":
        vb.set_wifi(not start)
    elif f.kind == "frames" and line is not None:
        line.faults = f.frame_faults() if start else None


def _evaluate(sc: Scenario, result: RunResult, daemon: Daemon, vb: VirtualBoard,
              report: Any, final: Any, real_s: float, end_seq: int, start_ms: int,
              end_stored: int) -> None:
    t0 = (vb.started_ms or 0) + start_ms  # the board's clock at the scenario's t = 0
    pre = expectation_checks(sc, result, daemon, t0)
    checks = result.checks
    if sc.all_frames:
        # what the board had stored when the scenario ended (seqs before end_seq; a frame
        # stored later may still be on its way when the board stops)
        got = daemon.query(
            "SELECT (SELECT count(*) FROM samples WHERE board_id = ? AND seq < ?) + "
            "(SELECT count(*) FROM board_frames WHERE board_id = ? AND seq < ? AND "
            "msg_type = 'alarm')", BOARD_ID, end_seq, BOARD_ID, end_seq)[0][0]
        checks.append(Check("every stored frame reached the host", f"{end_stored} frames",
                            f"{got} in the database", got == end_stored))
    if sc.all_frames and final is not None and report is not None:
        # seqs up to the scenario's end acknowledged (the host acks after committing), and
        # nothing dropped from the board's store
        ok = report.acked >= end_seq - 1 and final.store_dropped == 0
        checks.append(Check("every frame acknowledged", f"acked to seq {end_seq - 1}, 0 dropped",
                            f"acked to {report.acked}, {final.store_dropped} dropped", ok))
    if report is not None:
        checks.append(Check("watchdog fed in time", "0 late feeds",
                            f"{report.wdt_late} late (max gap "
                            f"{report.wdt_max_gap_ms / 1000:.1f} s)", report.wdt_late == 0))
        checks.append(Check("sensor feed on time", "0 starved", str(report.starved),
                            report.starved == 0))
    samples = daemon.query("SELECT count(*) FROM samples WHERE board_id = ?", BOARD_ID)[0][0]
    rejected = daemon.query("SELECT count(*) FROM rejected")[0][0]
    board_s = (report.board_ms - start_ms) / 1000 if report else 0.0
    result.stats = {
        "board_s": board_s, "real_s": real_s,
        "effective_speed": board_s / real_s if real_s > 0 else 0.0,
        "min_free_bytes": final.min_free_bytes if final else -1,
        "start_free_bytes": vb.start_free,
        "wdt_max_gap_ms": report.wdt_max_gap_ms if report else -1,
        "snapped_ms": report.snapped_ms if report else 0,
        "samples": samples, "pre_event": pre, "rejected": rejected,
        "link_dropped": final.link_dropped if final else -1,
    }
    with contextlib.suppress(Exception):
        result.stats["gaps"] = daemon.query(
            "SELECT outcome, count(*) FROM gaps WHERE board_id = ? GROUP BY outcome", BOARD_ID)


def expectation_checks(sc: Scenario, result: RunResult, daemon: Daemon, t0: int,
                       board_id: int = BOARD_ID) -> int:
    """The scenario's own checks (alarms, the board's alarms, order, only expected, SoH,
    pre-event samples) from the daemon's database, with t = 0 at the board's clock `t0`
    (epoch ms); return the pre-event samples stored."""
    rows = daemon.query(
        "SELECT u.ts_ms, a.rule, u.level, u.prev_level, u.event, a.source, u.alarm_id, "
        "u.message FROM alarm_audit u JOIN alarms a USING (alarm_id) "
        "WHERE a.board_id = ? ORDER BY u.id", board_id)
    everything = [AlarmSeen((ts - t0) / 1000, *rest) for ts, *rest in rows]
    result.alarms = everything
    # before t = 0 the board was booting, its first frames stamped with its uptime (1970)
    # until the host set its clock: those, and the host's own clock's events, come first
    seen = [e for e in everything if e.t_s >= 0]
    boot = sorted({f"{e.rule} L{e.level} {e.event}" for e in everything if e.t_s < 0
                   and e.event in ("raised", "escalated")})
    checks = result.checks
    checks.append(Check("alarms while booting (t < 0)", "none", ", ".join(boot) or "none",
                        None if boot else True))
    for a in sc.alarms:
        e = match(a, seen)
        got = "never" if e is None else f"{_hms(e.t_s)} ({e.event}, {e.source})"
        ok = e is not None and a.earliest_s <= e.t_s <= a.latest_s
        checks.append(Check(a.name, _window(a), got, ok))
    frames = daemon.query("SELECT ts_ms, payload FROM board_frames WHERE board_id = ? AND "
                          "msg_type = 'alarm' ORDER BY ts_ms", board_id)
    board_seen = []
    for ts, payload in frames:
        p = json.loads(payload)
        board_seen.append(AlarmSeen((ts - t0) / 1000, p["rule"], p["level"], 0, p["event"],
                                    "board", 0, ""))
    for a in sc.board_alarms:
        e = match(a, board_seen)
        got = "never" if e is None else f"{_hms(e.t_s)} ({e.event})"
        ok = e is not None and a.earliest_s <= e.t_s <= a.latest_s
        checks.append(Check(f"board's own {a.name}", _window(a), got, ok))
    for o in sc.order:
        first, then = match(o.first, seen), match(o.then, seen)
        ok = first is not None and (then is None or first.t_s <= then.t_s)
        got = (f"{_hms(first.t_s) if first else 'never'} / "
               f"{_hms(then.t_s) if then else 'never'}")
        checks.append(Check(f"{o.first.name} before {o.then.name}", "first / then", got, ok))
    if sc.only_expected:
        expected = {a.rule for a in sc.alarms} | set(sc.allow)
        others = sorted({f"{e.rule} L{e.level}" for e in seen
                         if e.event in ("raised", "escalated") and e.rule not in expected})
        checks.append(Check("no other alarms", "none" if not expected else "only expected",
                            ", ".join(others) or "none", not others))
    estimates = daemon.query(
        "SELECT unit, soh_pct, ts_ms FROM estimates WHERE board_id = ? AND soh_pct IS NOT NULL "
        "ORDER BY ts_ms", board_id)
    latest: dict[int, float] = {}
    for unit, soh, _ in estimates:
        latest[unit] = soh
    for s in sc.soh:
        units = sorted(latest) if s.unit is None else [s.unit]
        vals = [latest[u] for u in units if u in latest]
        name = "SoH " + ("every unit" if s.unit is None else
                         "pack" if s.unit == -1 else f"cell {s.unit + 1}")
        ok = bool(vals) and all(s.min_pct <= v <= s.max_pct for v in vals)
        got = "no estimate" if not vals else f"{min(vals):.1f} .. {max(vals):.1f} %"
        checks.append(Check(name, f"{s.min_pct:g} .. {s.max_pct:g} %", got, ok))
    pre = daemon.query("SELECT count(*) FROM samples WHERE board_id = ? AND flags & ? != 0",
                       board_id, PRE_EVENT)[0][0]
    if sc.pre_event_samples:
        checks.append(Check("pre-event samples stored", f">= {sc.pre_event_samples}",
                            str(pre), pre >= sc.pre_event_samples))
    return pre
