"""The `packsentry` command: one entry point, subcommands registered by each part."""

from __future__ import annotations

import argparse
import sys

from packsentry.hil import capture, demo, replay, trace_cli
from packsentry.hil import cli as hil_cli
from packsentry.protocol import cli as protocol_cli

from . import board, operator_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="packsentry",
        description="Battery-pack safety net: protocol tools, host daemon, HIL rig.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    protocol_cli.add_parsers(sub)
    board.add_parsers(sub)
    operator_cli.add_parsers(sub)
    capture.add_parsers(sub)
    trace_cli.add_parsers(sub)
    replay.add_parsers(sub)
    demo.add_parsers(sub)
    hil_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except protocol_cli.UsageError as exc:
        print(f"packsentry {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, full disk, closed pipe
        print(f"packsentry {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(
            ": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
