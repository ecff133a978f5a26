"""`packsentry decode` and `packsentry encode`: the protocol's tools for testers.

decode: hex strings, a binary file (one bare frame, or a COBS stream), or hex text (one frame
per line) -> one JSON object per frame on stdout, errors per frame with their byte offset.
encode: JSON objects (as decode prints them) -> one hex line per frame, or a COBS stream.
The two round-trip: `packsentry decode X | packsentry encode -` reproduces X.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import codec, jsonform, replay, stream
from .errors import ErrorCounters, ProtocolError
from .verify import Verifier

_HEX = re.compile(r"^[0-9a-fA-F\s]*$")


class UsageError(Exception):
    """Bad input to a command: printed as one line, exit code 2."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("decode", help="decode frames to JSON (one object per line)",
                       description=__doc__)
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a hex string, a file (binary or hex text), or - for stdin")
    d.add_argument("--format", choices=["auto", "bare", "cobs"], default="auto",
                   help="bare frame or COBS stream; auto: a frame starts with the protocol "
                        "version byte, a COBS stream cannot (default)")
    d.add_argument("--key", action="append", default=[], metavar="[BOARD=]HEX",
                   help="verify tags with this key (for one board, or all); repeatable")
    d.add_argument("--no-replay-check", action="store_true",
                   help="do not reject repeated or out-of-window (boot, seq)")
    d.add_argument("--strict", action="store_true",
                   help="exit 1 if any frame is rejected")
    d.set_defaults(func=cmd_decode)

    e = sub.add_parser("encode", help="encode JSON frames to hex (or a COBS stream)")
    e.add_argument("inputs", nargs="*", default=["-"], metavar="INPUT",
                   help="a JSON file (one object per line, or an array), inline JSON, or - "
                        "for stdin (default)")
    e.add_argument("--key", action="append", default=[], metavar="[BOARD=]HEX",
                   help="key to sign the frames flagged `signed` with (for one board, or all)")
    e.add_argument("--cobs", action="store_true",
                   help="write a COBS byte stream (with 0x00 delimiters) instead of hex lines")
    e.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    e.set_defaults(func=cmd_encode)


# -- keys ------------------------------------------------------------------------------------


def parse_keys(specs: list[str]) -> tuple[dict[int, bytes], bytes | None]:
    """`--key HEX` (any board) and `--key BOARD=HEX` -> (per-board keys, default key)."""
    per_board: dict[int, bytes] = {}
    default: bytes | None = None
    for spec in specs:
        board, sep, hexkey = spec.rpartition("=")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise UsageError(f"--key {spec!r}: the key is not hex") from None
        if len(key) < 16:
            raise UsageError(f"--key {spec!r}: {len(key)}-byte key, at least 16 expected")
        if not sep:
            default = key
            continue
        try:
            per_board[int(board, 0)] = key
        except ValueError:
            raise UsageError(f"--key {spec!r}: board id {board!r} is not a number") from None
    return per_board, default


# -- decode ----------------------------------------------------------------------------------


def _read_inputs(inputs: list[str]) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) per input unit: a hex string or hex line is one unit, a binary file one."""
    for item in inputs:
        if item == "-":
            data = sys.stdin.buffer.read()
            label = "stdin"
        elif _is_file(item):
            data = Path(item).read_bytes()
            label = item
        elif _HEX.match(item):
            yield "argument", _unhex(item, "argument")
            continue
        else:
            raise UsageError(f"{item!r} is neither a file nor a hex string")
        if data and _HEX.match(data.decode("latin-1")):
            for n, line in enumerate(data.decode().splitlines(), 1):
                if line.strip():
                    yield f"{label}:{n}", _unhex(line, f"{label} line {n}")
        else:
            yield label, data


def _is_file(item: str) -> bool:
    try:
        return Path(item).is_file()
    except OSError:  # e.g. a long hex string is not a valid file name
        return False


def _unhex(text: str, where: str) -> bytes:
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        raise UsageError(f"{where}: odd number of hex digits") from None


def _is_bare(data: bytes, fmt: str) -> bool:
    if fmt != "auto":
        return fmt == "bare"
    # A bare frame starts with its version byte (1). A COBS stream starts with a code byte:
    # the offset of the frame's first zero + 1, at least 3 since version and msg_type are
    # never zero. So a first byte below 3 means a bare frame.
    return data[0] < 3


def cmd_decode(args: argparse.Namespace) -> int:
    per_board, default = parse_keys(args.key)

    def lookup(board_id: int) -> bytes | None:
        return per_board.get(board_id, default)

    window = None if args.no_replay_check else replay.DEFAULT_WINDOW
    verifier = Verifier(lookup, replay_window=window)
    out = sys.stdout
    n_ok = 0
    for label, data in _read_inputs(args.inputs):
        if not data:
            continue
        if _is_bare(data, args.format):
            items = [_decode_bare(verifier, data)]
        else:
            reader = stream.FrameReader(verifier)
            items = reader.feed(data)
            if not data.endswith(b"\0"):
                items += reader.feed(b"\0")  # a stream cut after its last frame
        for item in items:
            out.write(json.dumps(item_json(label, item)) + "\n")
            n_ok += item.frame is not None
    counters: ErrorCounters = verifier.counters
    n_bad = sum(counters.values())
    summary = f"{n_ok} frame(s) decoded, {n_bad} rejected"
    if n_bad:
        summary += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(counters.items())) + ")"
    print(summary, file=sys.stderr)
    return 1 if args.strict and n_bad else 0


def _decode_bare(verifier: Verifier, data: bytes) -> stream.Received:
    try:
        return stream.Received(0, data, frame=verifier.verify(data))
    except ProtocolError as exc:
        exc.offset = 0
        return stream.Received(0, data, error=exc)


def item_json(label: str, item: stream.Received) -> dict[str, Any]:
    """A received frame as `decode` prints it (and `encode` reads it back)."""
    if item.frame is not None:
        return {"source": label, "offset": item.offset, **jsonform.to_json(item.frame)}
    assert item.error is not None
    return {"source": label, "offset": item.offset, "error": item.error.reason,
            "message": item.error.message, "raw": item.raw.hex()}


# -- encode ----------------------------------------------------------------------------------


def _read_json(inputs: list[str]) -> Iterator[tuple[str, Any]]:
    for item in inputs:
        if item == "-":
            text, label = sys.stdin.read(), "stdin"
        elif _is_file(item):
            text, label = Path(item).read_text(), item
        elif item.lstrip().startswith(("{", "[")):
            text, label = item, "argument"
        else:
            raise UsageError(f"{item!r} is neither a file nor inline JSON")
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                objs = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{label}: invalid JSON: {exc}") from None
            yield from ((f"{label}[{i}]", o) for i, o in enumerate(objs))
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"{label}:{n}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{label} line {n}: invalid JSON: {exc}") from None


def cmd_encode(args: argparse.Namespace) -> int:
    per_board, default = parse_keys(args.key)
    chunks: list[bytes] = []
    for label, obj in _read_json(args.inputs):
        if not isinstance(obj, dict):
            raise UsageError(f"{label}: expected a JSON object, got {type(obj).__name__}")
        if "error" in obj:
            raise UsageError(f"{label}: this is a rejected frame ({obj['error']}), not a frame")
        try:
            frame = jsonform.from_json(
                {k: v for k, v in obj.items() if k not in ("source", "offset", "crc32", "tag")})
            key = None
            if int(frame.get("flags", 0)) & codec.FLAG_SIGNED:  # the frame says if it is signed
                key = per_board.get(frame.get("board_id", -1), default)
                if key is None:
                    raise UsageError(f"{label}: frame is flagged signed; pass --key to sign it")
            raw = codec.encode_frame(frame, key=key)
        except ProtocolError as exc:
            raise UsageError(f"{label}: {exc.message}") from None
        chunks.append(stream.encode_stream_frame(raw) if args.cobs else raw.hex().encode() + b"\n")
    data = b"".join(chunks)
    if args.output:
        args.output.write_bytes(data)
    elif args.cobs and sys.stdout.isatty():
        raise UsageError("refusing to write a binary stream to a terminal; use -o FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
