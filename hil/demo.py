"""`packsentry demo`: a simulated depot through the real daemon, in compressed time.

    pack simulator (hil/packsim.py) ─► model boards ─► pseudo-terminals ─┐
                                                   └─► MQTT (a private   ├─► packsentry daemon
                                                       Mosquitto)        │   (a process of its
    pack simulator ─► the real firmware in the MicroPython VM ─► pty ────┘    own) ─► SQLite

The daemon runs on its embedded defaults (only the sources, the database path and the
compressed trend window are configured). Eight packs are model boards (hil/model_board.py:
the firmware's protocol in Python, fast enough for a depot at 360x); one more is the real
firmware on the virtual board (hil/virtual_board.py). Pack 3 develops an insulation fault,
pack 6 a thermal-runaway precursor. The terminal shows live SoH and alarms from the daemon's
database; at the end comes a summary: the alarm timeline, the SoH table, where the database is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import threading
import time
import tty
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packsentry.host.storage import Storage, StorageError, now_ms

from .broker import Broker, BrokerUnavailable, find_mosquitto
from .rig import Daemon

if TYPE_CHECKING:  # the simulator loads numba: only when the demo runs, not for every command
    from .packsim import Fault, LoadProfile, PackSpec

BOARD_BASE = 1001
BATCH = 10  # samples per frame: batch frames, as a busy board would send
TICK_S = 0.1  # real seconds between simulator advances


@dataclass
class DemoPack:
    name: str
    board: Any  # model_board.PyBoard
    link: Any  # model_board.SerialBoard | MqttBoard
    transport: str
    rows: list[tuple[int, dict[str, Any]]]


def _specs(n: int) -> list[PackSpec]:
    """A depot's mix: NMC and LFP packs of different ages (so the SoH table differs)."""
    from .packsim import NOT_ON_CELL, PackSpec

    out = []
    for i in range(n):
        lfp = i % 4 == 3
        out.append(PackSpec(chemistry="lfp" if lfp else "nmc", cells_series=16 if lfp else 12,
                            rated_ah=50.0, n_probes=4, probe_cell=(0, 5, 10, NOT_ON_CELL),
                            cycles=float(250 * (i % 5)), days=float(150 * (i % 5)),
                            initial_soc=0.9))
    return out


def _loads(n: int) -> list[LoadProfile]:
    """Daily work compressed: 1C down to 3.4 V a cell (short of the knee, where cells part),
    rest, CC-CV charge at 1C, rest; each pack starts at another point of the cycle."""
    from .packsim import LoadProfile, Segment

    h = 3600.0
    out = []
    for i, spec in enumerate(_specs(n)):
        v_min = 3.1 if spec.chemistry == "lfp" else 3.4
        cycle = (Segment(1.0 * h, "cc", 1.0, v_min_v=v_min), Segment(0.3 * h),
                 Segment(1.5 * h, "cccv", 1.0), Segment(0.3 * h))
        out.append(LoadProfile(cycle, repeat=True, offset_s=i * 0.4 * h))
    return out


def _faults(duration_s: float) -> list[Fault]:
    """Pack 3: insulation degrading in humid spells, each one deeper. Pack 6: a cell heading
    for thermal runaway in the last third of the run."""
    from .packsim import Fault

    return [
        Fault("insulation", start_s=0.0, pack=2, params={
            "days": duration_s * 0.8 / 86_400, "first_dip_h": 1.0, "dip_spacing_h": 3.0,
            "dips_per_day": 6, "dip_width_h": 1.0}),
        Fault("thermal_runaway", start_s=0.6 * duration_s, pack=5, cell=5),
    ]


def _config(ports: list[Path], broker: Broker | None) -> str:
    """The daemon's config but its [storage] (rig.Daemon writes that: workdir/depot.db)."""
    lines = ["[daemon]\ngap_settle_s = 10.0\n"]
    # compressed time: days of insulation history pass in minutes, so the trend is fitted over
    # buckets of simulated minutes instead of hours
    lines.append("[alarms]\ntrend_bucket_s = 300.0\ntrend_window_s = 14400.0\n"
                 "trend_min_points = 8\n")
    for p in ports:
        lines.append(f'[[serial]]\nport = "{p}"\nsite = "demo"\nreopen_s = 0.5\n')
    if broker is not None:
        lines.append(f'[mqtt]\nurl = "{broker.url}"\nclient_id = "packsentry-demo"\n')
    return "\n".join(lines)


class VmPack:
    """One pack on the real firmware: the virtual board (hil/virtual_board.py) with its UART
    on a pseudo-terminal the daemon reads, fed by its own pack simulator, as the HIL rig runs
    it (hil/rig.py): boot slowly until the daemon has set the board's clock, then run at the
    demo's speed, sending readings ahead of the board's clock."""

    BOARD_ID = 1100

    def __init__(self, workdir: Path, speed: float) -> None:
        from .packsim import NOT_ON_CELL, LoadProfile, PackSim, PackSpec, Segment
        from .virtual_board import SerialLine, VirtualBoard
        from .wiring import Wiring, board_config

        spec = PackSpec(chemistry="nmc", cells_series=12, rated_ah=50.0, n_probes=4,
                        probe_cell=(0, 5, 10, NOT_ON_CELL), initial_soc=0.9)
        h = 3600.0
        self.sim = PackSim([spec], seed=11, load=LoadProfile(
            (Segment(1.0 * h, "cc", 1.0, v_min_v=3.4), Segment(0.3 * h),
             Segment(1.5 * h, "cccv", 1.0), Segment(0.3 * h)), repeat=True))
        self.speed = speed
        self.line = SerialLine(workdir / "tty-vm", speed=speed)
        self.port = self.line.link
        config = board_config(board_id=self.BOARD_ID, site="demo", pack=spec.birth_fields(),
                              link={"kind": "serial", "uart": 1})
        self.wiring = Wiring(config)
        self.vb = VirtualBoard(workdir / "vm-board", config, self.wiring.layout(),
                               self.wiring.static(), speed=10.0, cpu=10.0, serial=self.line)
        self.error: str | None = None
        self.stop_flag = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="vm-pack")

    def _reading(self) -> list[int]:
        r = self.sim.step(1.0)
        return self.wiring.values(r.to_board_units(0), ntc_short=list(r.ntc_short[0]),
                                  riso_ohm=(float(r.riso_pos_ohm[0]), float(r.riso_neg_ohm[0])))

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            first = self._reading()
            window = 32
            sent = window
            self.vb.start([first] * (sent + 1))
            fast = False
            while not self.stop_flag:
                report = self.vb.next_report(1.0)
                if report is None:
                    continue
                while not self.vb.reports.empty():
                    report = self.vb.reports.get_nowait()
                if not fast and report.synced:  # the daemon answered its birth: full speed
                    self.vb.set_speed(self.speed)
                    fast = True
                while sent < report.k + window:
                    sent += 1
                    self.vb.send(sent, self._reading() if fast else first)
        except Exception as exc:  # the demo goes on with the model boards; say why
            self.error = f"the virtual board stopped: {exc}"

    def close(self) -> None:
        self.stop_flag = True
        self.thread.join(5)
        with contextlib.suppress(Exception):
            self.vb.stop(timeout_s=5)
        self.vb.close()
        self.line.close()


class Demo:
    def __init__(self, workdir: Path, packs: int, minutes: float, speed: float, forever: bool,
                 use_mqtt: bool | None, vm: bool = True) -> None:
        self.use_vm = vm
        self.t0_ms = now_ms()  # the simulated time line starts when the run does
        self.vm: VmPack | None = None
        self.workdir = workdir
        self.n = packs
        self.minutes = minutes
        self.speed = speed
        self.forever = forever
        self.use_mqtt = use_mqtt
        self.broker: Broker | None = None
        self.daemon: Daemon | None = None
        self.packs: list[DemoPack] = []
        self.ptys: list[tuple[int, int]] = []

    # -- set-up ------------------------------------------------------------------------------

    def start(self) -> None:
        from .model_board import MqttBoard, Profile, PyBoard, SerialBoard

        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        want_mqtt = self.use_mqtt is not False and find_mosquitto() is not None
        if self.use_mqtt and not want_mqtt:
            raise BrokerUnavailable("mosquitto not found: install the Debian package mosquitto")
        if want_mqtt:
            self.broker = Broker(self.workdir / "broker")
            self.broker.start()
        serial_n = self.n if self.broker is None else (self.n + 1) // 2
        ports = []
        for i in range(serial_n):
            master, slave = os.openpty()
            tty.setraw(slave)
            link = self.workdir / f"tty-pack{i + 1}"
            link.symlink_to(os.ttyname(slave))
            self.ptys.append((master, slave))
            ports.append(link)
        if self.use_vm:
            self.vm = VmPack(self.workdir, self.speed)
            ports.append(self.vm.port)
        self.daemon = Daemon(self.workdir, _config(ports, self.broker))
        self.daemon.start(60)
        for i, spec in enumerate(_specs(self.n)):
            board = PyBoard(BOARD_BASE + i, profile=Profile(
                chemistry=spec.chemistry, n_cells=spec.cells_series,
                n_probes=spec.n_probes, probe_cell=spec.probe_cell,
                rated_mah=int(spec.rated_ah * 1000)))
            if i < serial_n:
                link: Any = SerialBoard(board, self.ptys[i][0])
                link.write(board.birth())
                transport = "serial"
            else:
                assert self.broker is not None
                link = MqttBoard(board, self.broker.port, site="demo")
                transport = "mqtt"
            self.packs.append(DemoPack(f"pack {i + 1}", board, link, transport, []))
        if self.vm is not None:
            self.vm.start()

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> int:
        from .model_board import SerialBoard
        from .packsim import PackSim

        duration_s = self.minutes * 60 * self.speed
        sim = PackSim(_specs(self.n), seed=7, faults=_faults(duration_s), load=_loads(self.n))
        t0_ms = self.t0_ms = now_ms()
        real0 = time.monotonic()
        next_show = real0
        tty_out = sys.stdout.isatty()
        while self.forever or time.monotonic() - real0 < self.minutes * 60:
            target_s = (time.monotonic() - real0) * self.speed
            while sim.t_s < target_s:
                r = sim.step(1.0)
                ts = t0_ms + int(r.t_s * 1000)
                for i, pack in enumerate(self.packs):
                    pack.rows.append((ts, r.to_board_units(i)))
                    if len(pack.rows) >= BATCH:
                        frame = pack.board.batch_from(pack.rows)
                        pack.rows = []
                        if isinstance(pack.link, SerialBoard):
                            pack.link.write(frame)
                        else:
                            pack.link.publish_frame(frame)
            if time.monotonic() >= next_show:
                next_show += 1.0 if tty_out else 15.0  # a log gets a screen every 15 s
                self.show(sim.t_s, clear=tty_out)
            if self.daemon is not None and not self.daemon.alive():
                print("the daemon stopped; see", self.workdir / "daemon.log", file=sys.stderr)
                return 1
            time.sleep(TICK_S)
        time.sleep(2.0)  # let the daemon commit what is in flight
        return 0

    def show(self, sim_s: float, clear: bool) -> None:
        try:
            st = Storage(self.workdir / "depot.db", readonly=True)
        except StorageError:
            return
        try:
            n = len(self.table_rows())
            out = [f"packsentry demo: {n} packs, simulated "
                   f"{sim_s / 3600:5.1f} h at {self.speed:.0f}x"]
            out += _soh_table(st, self.table_rows())
            alarms = st.alarms(active_only=True)
            out.append("")
            out.append(f"active alarms: {len(alarms)}")
            for a in alarms[:8]:
                out.append(f"  L{a['level']} board {a['board_id']} {a['rule']:<16} "
                           f"{a['state']:<13} {a['message'][:70]}")
        finally:
            st.close()
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print("\n".join(out), flush=True)

    def table_rows(self) -> list[tuple[str, int, str, str]]:
        rows = [(p.name, p.board.board_id, p.transport, p.board.chemistry) for p in self.packs]
        if self.vm is not None:
            rows.append((f"pack {len(rows) + 1} (fw)", VmPack.BOARD_ID, "serial", "nmc"))
        return rows

    # -- the end -----------------------------------------------------------------------------

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.close()
            if self.vm.error:
                print(self.vm.error, file=sys.stderr)
        for pack in self.packs:
            if pack.transport == "mqtt":
                pack.link.close()
        if self.daemon is not None:
            self.daemon.stop()
        for master, slave in self.ptys:
            for fd in (master, slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.broker is not None:
            self.broker.stop()

    def summary(self) -> None:
        st = Storage(self.workdir / "depot.db", readonly=True)
        try:
            rows = st.db.execute(
                "SELECT u.ts_ms, a.board_id, a.rule, u.level, u.event, u.message "
                "FROM alarm_audit u JOIN alarms a USING (alarm_id) "
                "WHERE u.event IN ('raised', 'escalated') ORDER BY u.id").fetchall()
            first = self.t0_ms
            print("\nalarm timeline (raised and escalated; simulated time since the start):")
            i = 0
            while i < len(rows):  # the same alarm on many cells at once is one line
                ts, _, _, level, event, msg = rows[i]
                j = i + 1
                while j < len(rows) and rows[j][:3] == rows[i][:3]:
                    j += 1
                more = f" (and {j - i - 1} more)" if j - i > 1 else ""
                print(f"  {_hms((ts - first) / 1000)}  L{level} {event:<9} {msg[:95]}{more}")
                i = j
            if not rows:
                print("  (none)")
            levels = sorted({r[3] for r in rows})
            print(f"  levels seen: {', '.join(f'L{x}' for x in levels) or '-'}")
            print("\nstate of health:")
            print("\n".join(_soh_table(st, self.table_rows())))
            n = st.count("samples")
            print(f"\n{n} samples stored. Database: {st.path}")
            print(f"Look around: packsentry status --db {st.path}")
            print(f"             packsentry alarms list --all --db {st.path}")
        finally:
            st.close()


def _soh_table(st: Storage, packs: list[tuple[str, int, str, str]]) -> list[str]:
    """(name, board id, link, chemistry) per pack -> the table's lines."""
    out = [f"{'pack':<15} {'board':>6} {'link':<7} {'chem':<4} {'SoH %':>6} {'cap Ah':>7} "
           f"{'R0 mOhm':>8} {'alarms':>6}"]
    alarms = st.alarms(active_only=True)
    for name, board_id, link, chem in packs:
        est = st.latest_estimates(board_id)
        soh = [e["soh_pct"] for e in est if e["soh_pct"] is not None]
        cap = [e["capacity_ah"] for e in est if e["capacity_ah"] is not None]
        r0 = [e["r0_mohm"] for e in est if e["r0_mohm"] is not None]
        worst = max((a["level"] for a in alarms if a["board_id"] == board_id), default=0)
        out.append(f"{name:<15} {board_id:>6} {link:<7} {chem:<4} "
                   f"{_f(min(soh) if soh else None, 6, 1)} "
                   f"{_f(min(cap) if cap else None, 7, 2)} "
                   f"{_f(max(r0) if r0 else None, 8, 2)} "
                   f"{(f'L{worst}' if worst else '-'):>6}")
    return out


def _f(v: float | None, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600:3d}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a simulated depot through the real daemon (2 minutes)")
    p.add_argument("--packs", type=int, default=8)
    p.add_argument("--minutes", type=float, default=2.0, help="how long (default 2)")
    p.add_argument("--speed", type=float, default=360.0,
                   help="simulated seconds per real second (default 360: 12 h in 2 min)")
    p.add_argument("--forever", action="store_true", help="keep running until Ctrl-C")
    p.add_argument("--dir", default="packsentry-demo", help="where the database and logs go")
    p.add_argument("--no-vm", dest="vm", action="store_false",
                   help="no pack on the real firmware in the MicroPython VM")
    mq = p.add_mutually_exclusive_group()
    mq.add_argument("--mqtt", dest="mqtt", action="store_true", default=None,
                    help="half the packs over MQTT (default: when mosquitto is installed)")
    mq.add_argument("--no-mqtt", dest="mqtt", action="store_false")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from packsentry.protocol.cli import UsageError

    if args.packs < 6:
        raise UsageError("--packs: at least 6 (the faults are on packs 3 and 6)")
    demo = Demo(Path(args.dir).resolve(), args.packs, args.minutes, args.speed, args.forever,
                args.mqtt, vm=args.vm)
    started = datetime.now(UTC)
    try:
        demo.start()
        status = demo.run()
    except KeyboardInterrupt:
        status = 0
    except BrokerUnavailable as exc:
        raise UsageError(str(exc)) from None
    finally:
        demo.stop()
    demo.summary()
    took = (datetime.now(UTC) - started).total_seconds()
    print(f"demo took {took:.0f} s")
    return status
