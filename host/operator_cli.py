"""Operator commands: `daemon`, `status`, `alarms list|ack|shelve|unshelve|service`, `export`,
`config check`.

They read the daemon's database (WAL: safe while the daemon writes). Changes to alarms are
queued in the database and applied by the running daemon within about a second, through
the alarm engine, so the lifecycle and its audit log have one owner; without a running
daemon they are applied when it next starts (the command says so).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packsentry.protocol.cli import UsageError

from . import config as config_mod
from .storage import ESTIMATE_COLUMNS, Storage, StorageError, blob_cells, blob_temps, now_ms

DEFAULT_CONFIG = "/etc/packsentry/depot.toml"
HEARTBEAT_STALE_MS = 15_000


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="run the host daemon (ingest, SoH, alarms, storage)")
    p.add_argument("--config", required=True, help="the daemon's TOML config (docs/daemon.md)")
    p.add_argument("--db", help="database path (overrides [storage] path)")
    p.set_defaults(func=cmd_daemon)

    def db_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"the daemon's config, for its database path "
                       f"(default: $PACKSENTRY_CONFIG or {DEFAULT_CONFIG})")
        p.add_argument("--db", help="the database path (overrides --config)")

    p = sub.add_parser("status", help="boards, last seen, link, SoH, active alarms")
    db_args(p)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("alarms", help="list, acknowledge, shelve alarms")
    asub = p.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")
    a = asub.add_parser("list", help="active alarms (--all: every alarm)")
    db_args(a)
    a.add_argument("--all", action="store_true", help="cleared alarms too")
    a.add_argument("--board", type=int, help="one board")
    a.add_argument("--history", type=int, metavar="ALARM_ID", help="one alarm's audit log")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_alarms_list)
    for name, helptext in (("ack", "acknowledge an alarm"), ("unshelve", "unshelve an alarm")):
        a = asub.add_parser(name, help=helptext)
        db_args(a)
        a.add_argument("alarm_id", type=int)
        a.add_argument("--note", help="why (goes into the audit log)")
        a.add_argument("--actor", default=None, help="who (default: the login name)")
        a.set_defaults(func=cmd_alarm_action, action=name)
    a = asub.add_parser("shelve", help="shelve an alarm for a while (not L3/L4)")
    db_args(a)
    a.add_argument("alarm_id", type=int)
    a.add_argument("--for", dest="duration", default="8h",
                   help="how long: 30m, 8h, 2d (default 8h)")
    a.add_argument("--note", help="why (goes into the audit log)")
    a.add_argument("--actor", default=None)
    a.set_defaults(func=cmd_alarm_action, action="shelve")
    a = asub.add_parser("service", help="take a board out of service (alarms suppressed) or "
                        "back in")
    db_args(a)
    a.add_argument("board_id", type=int)
    a.add_argument("state", choices=("in", "out"))
    a.add_argument("--actor", default=None)
    a.set_defaults(func=cmd_alarm_action, action="service")

    p = sub.add_parser("send", help="a command to a board, through the running daemon")
    db_args(p)
    p.add_argument("board_id", type=int)
    p.add_argument("command", choices=("config", "reboot", "rebirth", "time-sync"),
                   help="config: push a config.json (signed with the board's key); reboot "
                   "(signed); rebirth: birth and re-send; time-sync")
    p.add_argument("file", nargs="?", help="for config: the board's new config.json")
    p.add_argument("--actor", default=None)
    p.set_defaults(func=cmd_alarm_action, action="command")

    p = sub.add_parser("export", help="samples or estimates of a board as CSV")
    db_args(p)
    p.add_argument("--board", type=int, required=True)
    p.add_argument("--from", dest="t0", help="start, ISO-8601 (default: the beginning)")
    p.add_argument("--to", dest="t1", help="end, ISO-8601, exclusive (default: now)")
    p.add_argument("--what", choices=("samples", "estimates"), default="samples")
    p.add_argument("-o", "--output", help="CSV file (default: stdout)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="check a daemon config")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="list every error in a config, with its key and line")
    c.add_argument("file")
    c.set_defaults(func=cmd_config_check)


# -- helpers -------------------------------------------------------------------------------


def _open_db(args: argparse.Namespace) -> Storage:
    path = args.db
    if path is None:
        cfg_path = args.config or os.environ.get("PACKSENTRY_CONFIG") or DEFAULT_CONFIG
        if not Path(cfg_path).exists():
            raise UsageError(f"no database given: pass --db PATH or --config FILE "
                             f"({cfg_path} does not exist)")
        try:
            path = config_mod.load(cfg_path).storage.path
        except config_mod.ConfigError as exc:
            raise UsageError(f"{cfg_path} has errors (packsentry config check {cfg_path})\n"
                             + str(exc)) from None
    try:
        return Storage(path, readonly=True)
    except StorageError as exc:
        raise UsageError(str(exc)) from None


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ms: int | None, now: int) -> str:
    if not ms:
        return "never"
    s = max(0, (now - ms) // 1000)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _daemon_alive(st: Storage) -> bool:
    beat = st.meta("daemon_heartbeat_ms")
    return beat is not None and now_ms() - int(beat) < HEARTBEAT_STALE_MS


def _parse_time(text: str | None, default: int) -> int:
    if text is None:
        return default
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-24T08:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _duration_s(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if not m:
        raise UsageError(f"--for {text!r}: expected a number and a unit s, m, h or d (e.g. 8h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# -- commands ------------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon import run  # numba and paho load only for the daemon

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"packsentry daemon: the config has errors:\n{exc}", file=sys.stderr)
        return 2
    if args.db:
        import dataclasses

        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, path=args.db))
    return run(cfg)


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.file)
    except config_mod.ConfigError as exc:
        for line in exc.lines():
            print(line)
        n = len(exc.problems)
        print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok — database {cfg.storage.path}; {len(cfg.serial)} serial port(s); "
          f"mqtt {cfg.mqtt.url if cfg.mqtt else 'off'}; {len(cfg.keys)} board key(s); "
          f"{len(cfg.webhooks)} webhook(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = _open_db(args)
    now = now_ms()
    boards = st.boards()
    alarms = st.alarms(active_only=True)
    beat = st.meta("daemon_heartbeat_ms")
    stats = json.loads(st.meta("daemon_stats") or "{}")
    rows = []
    for b in boards:
        est = st.latest_estimates(b["board_id"])
        soh = [e["soh_pct"] for e in est if e["soh_pct"] is not None]
        r0g = [e["r0_growth_pct"] for e in est if e["r0_growth_pct"] is not None]
        mine = [a for a in alarms if a["board_id"] == b["board_id"]]
        rows.append({"board_id": b["board_id"], "site": b["site"], "link": b["link"],
                     "online": bool(b["online"]), "in_service": bool(b["in_service"]),
                     "last_seen_ms": b["last_seen_ms"], "chemistry": b["chemistry"],
                     "cells_series": b["cells_series"],
                     "soh_pct": min(soh) if soh else None,  # the weakest cell sets the pack's
                     "r0_growth_pct": max(r0g) if r0g else None,
                     "alarms": len(mine), "max_level": max((a["level"] for a in mine),
                                                           default=0)})
    if args.json:
        print(json.dumps({"daemon": {"alive": _daemon_alive(st),
                                     "heartbeat_ms": int(beat) if beat else None,
                                     "stats": stats},
                          "boards": rows, "alarms": alarms}, indent=2))
        return 0
    alive = _daemon_alive(st)
    print(f"daemon: {'running' if alive else 'NOT RUNNING'} (last heartbeat "
          f"{_ago(int(beat) if beat else None, now)}); database {st.path}")
    if stats:
        rej = sum(stats.get("rejected", {}).values())
        print(f"frames: {sum(stats.get('frames', {}).values())} stored, {rej} rejected, "
              f"{stats.get('duplicates', 0)} duplicates, {stats.get('seqs_lost', 0)} seqs lost")
    print()
    print(f"{'board':>10} {'site':<10} {'link':<7} {'last seen':<11} {'SoH %':>6} "
          f"{'R0 +%':>6} {'alarms':>6}  state")
    for r in rows:
        state = [] if r["online"] else ["offline"]
        if not r["in_service"]:
            state.append("out of service")
        soh = f"{r['soh_pct']:.1f}" if r["soh_pct"] is not None else "-"
        r0 = f"{r['r0_growth_pct']:.0f}" if r["r0_growth_pct"] is not None else "-"
        al = f"{r['alarms']} L{r['max_level']}" if r["alarms"] else "0"
        print(f"{r['board_id']:>10} {r['site']:<10} {r['link'] or '-':<7} "
              f"{_ago(r['last_seen_ms'], now):<11} {soh:>6} {r0:>6} {al:>6}  "
              f"{', '.join(state) or 'ok'}")
    if not rows:
        print("(no boards yet)")
    if alarms:
        print()
        _print_alarms(alarms)
    return 0


def _print_alarms(alarms: list[dict[str, Any]]) -> None:
    print(f"{'id':>6} {'L':>1} {'board':>10} {'rule':<18} {'state':<14} {'raised (UTC)':<19}  "
          f"message")
    for a in alarms:
        print(f"{a['alarm_id']:>6} {a['level']:>1} {a['board_id']:>10} {a['rule']:<18} "
              f"{a['state']:<14} {_when(a['raised_ms']):<19}  {a['message']}")


def cmd_alarms_list(args: argparse.Namespace) -> int:
    st = _open_db(args)
    if args.history is not None:
        audit = st.alarm_audit(args.history)
        if not audit:
            raise UsageError(f"no alarm {args.history}")
        if args.json:
            print(json.dumps(audit, indent=2))
        else:
            for e in audit:
                who = f" by {e['actor']}" if e["actor"] else ""
                note = f" ({e['note']})" if e["note"] else ""
                print(f"{_when(e['ts_ms'])}  L{e['level']} {e['event']:<20} -> {e['state']}"
                      f"{who}{note}: {e['message']}")
        return 0
    alarms = st.alarms(active_only=not args.all, board_id=args.board, limit=10_000)
    if args.json:
        print(json.dumps(alarms, indent=2))
    elif alarms:
        _print_alarms(alarms)
    else:
        print("no active alarms" if not args.all else "no alarms")
    return 0


def cmd_alarm_action(args: argparse.Namespace) -> int:
    st = _open_db(args)
    actor = args.actor or getpass.getuser()
    action = args.action
    if action == "command":
        payload = {"board_id": args.board_id, "command": args.command.replace("-", "_")}
        if args.command == "config":
            if not args.file:
                raise UsageError("config needs the board's new config.json")
            try:
                payload["config"] = json.loads(Path(args.file).read_text())
            except json.JSONDecodeError as exc:
                raise UsageError(f"{args.file}: invalid JSON: {exc}") from None
            if not isinstance(payload["config"], dict) or \
                    payload["config"].get("board_id") != args.board_id:
                raise UsageError(f"{args.file}: a board config with board_id {args.board_id} "
                                 f"is expected (the board refuses another board's config)")
            payload["command"] = "config_update"
    elif action == "service":
        payload: dict[str, Any] = {"board_id": args.board_id, "in_service": args.state == "in"}
        if not any(b["board_id"] == args.board_id for b in st.boards()):
            raise UsageError(f"no board {args.board_id} in {st.path}")
    else:
        payload = {"alarm_id": args.alarm_id, "note": args.note}
        if not st.alarm_audit(args.alarm_id):
            raise UsageError(f"no alarm {args.alarm_id} in {st.path}")
        if action == "shelve":
            payload["until_ms"] = now_ms() + int(_duration_s(args.duration) * 1000)
    action_id = st.queue_action(action, payload, actor)
    if not _daemon_alive(st):
        print(f"queued (#{action_id}): the daemon is not running; it applies this when it "
              f"starts")
        return 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        result = st.action_result(action_id)
        if result is not None:
            if result == "ok":
                print("done")
                return 0
            print(f"refused: {result.removeprefix('error: ')}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"queued (#{action_id}): the daemon has not applied it within 10 s", file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    st = _open_db(args)
    t0 = _parse_time(args.t0, 0)
    t1 = _parse_time(args.t1, now_ms() + 86_400_000)
    board = next((b for b in st.boards() if b["board_id"] == args.board), None)
    if board is None:
        raise UsageError(f"no board {args.board} in {st.path}")
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    n = 0
    try:
        w = csv.writer(out)
        if args.what == "samples":
            n_probes = board["n_probes"] or 0
            n_cells = board["n_cells"] or 0
            w.writerow(["time_utc", "ts_ms", "boot", "seq", "pack_mv", "current_ma",
                        "riso_pos_kohm", "riso_neg_kohm", "alarm_level", "alarm_flags", "flags"]
                       + [f"temp_dc_{i + 1}" for i in range(n_probes)]
                       + [f"cell_mv_{i + 1}" for i in range(n_cells)])
            for row in st.samples(args.board, t0, t1):
                (_b, boot, seq, ts, _rx, flags, pack, cur, rp, rn, lvl, af, temps, cells) = row
                w.writerow([_when(ts), ts, boot, seq, pack, cur, rp, rn, lvl, af, flags,
                            *blob_temps(temps), *blob_cells(cells)])
                n += 1
        else:
            w.writerow(["time_utc", *ESTIMATE_COLUMNS])
            for row in st.estimates(args.board, t0, t1):
                w.writerow([_when(row[2]), *("" if v is None else v for v in row)])
                n += 1
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"{n} rows -> {args.output}", file=sys.stderr)
    return 0
