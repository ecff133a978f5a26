"""`packsentry hil run|list`: HIL scenarios (hil/scenarios/*.toml) against the real daemon.

    packsentry hil list
    packsentry hil run insulation-3d --transport mqtt
    packsentry hil run healthy-24h --speed 2000 --workdir /tmp/hil
    packsentry hil run ntc-open --board /dev/ttyUSB0 --board-config board.json   # speed 1

`add_parsers(sub)` registers the `hil` command (the top-level parser is host/cli.py's).
Exit status of `run`: 0 when every check passes, 1 when one fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .scenario import TRANSPORTS, ScenarioError, available, find, load


def add_parsers(sub: argparse._SubParsersAction) -> None:
    hil = sub.add_parser("hil", help="hardware-in-the-loop scenarios against the real daemon",
                         description="Run the HIL scenarios of hil/scenarios: the unchanged "
                         "firmware in the MicroPython VM (or a board on a serial port) fed "
                         "by the pack simulator, reporting to `packsentry daemon`.")
    hsub = hil.add_subparsers(dest="hil_command", required=True, metavar="{run,list}")
    ls = hsub.add_parser("list", help="the scenarios there are")
    ls.add_argument("--dir", type=Path, default=None, help="scenario directory")
    ls.set_defaults(func=_list)
    run = hsub.add_parser("run", help="run one scenario and print the pass/fail table")
    run.add_argument("scenario", help="a name from `hil list`, or a .toml file")
    run.add_argument("--board", default="virtual",
                     help="virtual (default), or a serial port with a real board in "
                     "injected-sensor mode (real time, serial only)")
    run.add_argument("--board-config", type=Path, default=None, metavar="FILE",
                     help="with --board PORT: the board's config.json as installed on it "
                     "(sensor_source \"injected\", its board_id and key)")
    run.add_argument("--transport", choices=[*TRANSPORTS, "both"], default=None,
                     help="the board's link (default: each the scenario is for)")
    run.add_argument("--speed", type=float, default=None,
                     help="time compression (default: the scenario's)")
    run.add_argument("--cpu", type=float, default=None,
                     help="board ms per ms the VM computes (default: min(speed, 30))")
    run.add_argument("--workdir", type=Path, default=None,
                     help="keep the run here (database, logs); default: a temporary "
                     "directory, kept and printed")
    run.add_argument("--dir", type=Path, default=None, help="scenario directory")
    run.add_argument("-q", "--quiet", action="store_true", help="only the table")
    run.set_defaults(func=_run)


def _list(args: argparse.Namespace) -> int:
    found = available(args.dir) if args.dir else available()
    for name, path in found.items():
        try:
            sc = load(path)
        except ScenarioError as exc:
            print(f"{name:24} (broken: {exc})")
            continue
        hours = sc.duration_s / 3600
        first = sc.description.split(". ")[0].replace("\n", " ")
        print(f"{name:24} {hours:6.1f} h  {','.join(sc.transports):12} {sc.speed:>6g}x  "
              f"{first[:80]}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .rig import RigError, run

    try:
        sc = load(find(args.scenario, args.dir) if args.dir else find(args.scenario))
    except ScenarioError as exc:
        print(f"packsentry hil: {exc}", file=sys.stderr)
        return 2
    transports = (sc.transports if args.transport in (None, "both") else (args.transport,))
    if args.board != "virtual" and args.transport in (None, "both"):
        transports = ("serial",)  # a real board is driven over its serial line
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    ok = True
    for t in transports:
        workdir = args.workdir / t if args.workdir and len(transports) > 1 else args.workdir
        try:
            result = run(sc, transport=t, board=args.board, speed=args.speed, cpu=args.cpu,
                         workdir=workdir, log=say, config_file=args.board_config)
        except RigError as exc:
            print(f"packsentry hil: {exc}", file=sys.stderr)
            return 2
        print(result.table())
        print()
        ok = ok and result.passed
    return 0 if ok else 1
