"""Generate everything derived from the schemas: `python -m packsentry.protocol.generate`.

Writes `firmware/wire.py` (the board's constants and struct layouts: the firmware cannot
import construct), `protocol/vectors/<type>.json` (golden vectors) and `docs/protocol.md`.
With `--check` it writes nothing and exits 1 naming each stale file; the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import codec, golden, jsonform, layout, replay, schema
from .layout import ByteString, Fixed, IntArray, Layout, Records, Scalar

REPO = Path(__file__).resolve().parent.parent
WIRE_PY = REPO / "firmware" / "wire.py"
PROTOCOL_MD = REPO / "docs" / "protocol.md"

_GENERATED = "Generated from protocol/schema.py by `make generate`. Do not edit."


# -- firmware/wire.py ----------------------------------------------------------------------


def _const(name: str, value: int, comment: str = "", *, hex_: bool = False) -> str:
    line = f"{name} = const({value:#x})" if hex_ else f"{name} = const({value})"
    return f"{line}  # {comment}" if comment else line


def _upper(name: str) -> str:
    return name.upper()


def _fixed_lines(prefix: str, seg: Fixed, base: int) -> list[str]:
    lines = [f'{prefix}_FMT = "{seg.fmt}"', _const(f"{prefix}_SIZE", seg.size)]
    off = base
    for f in seg.fields:
        lines.append(_const(f"{prefix}_OFF_{_upper(f.name)}", off - base, f.type_name))
        off += f.size
    return lines


def _layout_lines(name: str, lay: Layout) -> list[str]:
    p = _upper(name)
    lines = [f"# {name}"]
    fixed = [s for s in lay.segments if isinstance(s, Fixed)]
    if fixed:
        lines += _fixed_lines(p, fixed[0], 0)
    else:
        lines.append(_const(f"{p}_SIZE", 0))
    for seg in lay.segments:
        if isinstance(seg, IntArray):
            lines.append(f'{p}_{_upper(seg.name)}_FMT = "{seg.elem_fmt}"  # per {seg.count}')
        elif isinstance(seg, ByteString):
            lines.append(f"# {p}_{_upper(seg.name)}: {seg.count} raw bytes")
        elif isinstance(seg, Records):
            rec_fixed = seg.record.segments[0]
            assert isinstance(rec_fixed, Fixed)
            lines += _fixed_lines(f"{p}_REC", rec_fixed, 0)
            for inner in seg.record.segments[1:]:
                assert isinstance(inner, IntArray)
                lines.append(f'{p}_REC_{_upper(inner.name)}_FMT = "{inner.elem_fmt}"'
                             f"  # per {inner.count}")
    return lines


def wire_module() -> str:
    hdr = layout.header_layout()
    lines = [f'"""packsentry wire constants. {_GENERATED}', "",
             "Integers only, for `struct.pack_into` on preallocated buffers; every fmt is",
             'little-endian. Frame: header | payload | crc32 (u32) | tag (TAG_LEN, if signed)."""',
             "", "from micropython import const", "",
             _const("PROTOCOL_VERSION", schema.PROTOCOL_VERSION),
             _const("SCHEMA_FINGERPRINT", layout.schema_fingerprint(), hex_=True),
             _const("TAG_LEN", schema.TAG_LEN_BYTES),
             _const("CRC_LEN", schema.CRC_LEN_BYTES), "", "# header"]
    lines += _fixed_lines("HEADER", hdr, 0)
    lines += ["", "# message types"]
    lines += [_const(f"MSG_{_upper(k)}", v, hex_=True) for k, v in layout.msg_type_ids().items()]
    lines += ["", "# frame flags"]
    lines += [_const(f"FLAG_{_upper(k)}", v, hex_=True) for k, v in layout.frame_flags().items()]
    sample = layout.payload_layout("sample")
    alarm_flags = next(f for f in sample.scalars if f.name == "alarm_flags").flags or {}
    lines += ["", "# alarm flag bits (GB/T 32960 layout) and rule ids (= bit numbers)"]
    lines += [_const(f"ALARM_{_upper(k)}", v, hex_=True) for k, v in alarm_flags.items()]
    lines += [_const(f"RULE_{_upper(k)}", v.bit_length() - 1) for k, v in alarm_flags.items()]
    lines += ["", "# enums"]
    seen: set[str] = {"msg_type", "rule"}
    msg_types = {v: k for k, v in layout.msg_type_ids().items()}
    for lay in layout.all_payload_layouts().values():
        for f in lay.scalars:
            if f.enum and f.name not in seen and f.enum != msg_types:  # cmd_type: MSG_*
                seen.add(f.name)
                lines += [_const(f"{_upper(f.name)}_{_upper(v)}", k) for k, v in f.enum.items()]
    lines += ["", "# markers: abnormal (top value - 1) and invalid (top value), per field type"]
    for code in "BHIhi":
        abnormal, invalid = layout.markers(code)
        t = _upper(layout.TYPE_NAMES[code])
        lines += [_const(f"{t}_ABNORMAL", abnormal, hex_=True),
                  _const(f"{t}_INVALID", invalid, hex_=True)]
    lines += ["", "# limits on counted fields"]
    lines += [_const(f"MAX_{_upper(k)}", v) for k, v in schema.COUNT_LIMITS.items()]
    for name, lay in layout.all_payload_layouts().items():
        lines += ["", *_layout_lines(name, lay)]
    return "\n".join(lines) + "\n"


# -- golden vectors --------------------------------------------------------------------------


def vector_docs() -> dict[str, dict]:
    """msg_type -> the content of vectors/<msg_type>.json."""
    out = {}
    for msg_type, items in golden.examples().items():
        vectors = []
        for name, frame, signed in items:
            raw = codec.encode_frame(frame, key=golden.GOLDEN_KEY if signed else None)
            vectors.append({"name": name, "signed": signed, "hex": raw.hex(),
                            "frame": jsonform.to_json(codec.decode_frame(raw))})
        out[msg_type] = {
            "_note": f"{_GENERATED} Golden vectors for '{msg_type}'; signed ones use the "
                     f"test key {golden.GOLDEN_KEY.hex()} (never on a real board).",
            "msg_type": msg_type, "key_hex": golden.GOLDEN_KEY.hex(), "vectors": vectors}
    return out


# -- docs/protocol.md ------------------------------------------------------------------------


def _table_rows(lay: Layout) -> list[str]:
    """Markdown rows; offsets are known up to the first variable-length field, then `+`."""
    rows = []
    off: int | None = 0
    for seg in lay.segments:
        where = "+" if off is None else str(off)
        if isinstance(seg, Fixed):
            for f in seg.fields:
                rows.append(f"| {'+' if off is None else off} | `{f.name}` | {f.type_name} | "
                            f"{_doc(f)} |")
                off = None if off is None else off + f.size
            continue
        if isinstance(seg, IntArray):
            kind = f"{layout.TYPE_NAMES[seg.elem_fmt]}[`{seg.count}`]"
        elif isinstance(seg, ByteString):
            kind = f"bytes[`{seg.count}`]"
        else:
            kind = f"record[`{seg.count}`]"
        doc = seg.doc + ("; record layout below" if isinstance(seg, Records) else "")
        rows.append(f"| {where} | `{seg.name}` | {kind} | {doc} |")
        off = None
    return rows


def _doc(f: Scalar) -> str:
    if f.enum:
        return f"{f.doc}: " + ", ".join(f"{v}={k}" for k, v in f.enum.items())
    return f.doc


def _payload_section(name: str, lay: Layout, msg_id: int, example: dict) -> list[str]:
    lines = [f"### `{name}` (0x{msg_id:02x})", ""]
    if not lay.segments:
        return [*lines, "Empty payload.", ""]
    lines += ["| offset | field | type | meaning |", "|---|---|---|---|", *_table_rows(lay), ""]
    for seg in lay.segments:
        if isinstance(seg, Records):
            lines += [f"Each `{seg.name}` record:", "",
                      "| offset | field | type | meaning |", "|---|---|---|---|",
                      *_table_rows(seg.record), ""]
    ex = example
    lines += [f"Example (`protocol/vectors/{name}.json`, `{ex['name']}`):", "", "```",
              _wrap_hex(ex["hex"]), "```", ""]
    return lines


def _wrap_hex(h: str, width: int = 96) -> str:
    return "\n".join(h[i:i + width] for i in range(0, len(h), width))


def protocol_doc(vectors: dict[str, dict]) -> str:
    hdr = layout.header_layout()
    header_lay = Layout("header", (hdr,))
    ids = layout.msg_type_ids()
    sample = layout.payload_layout("sample")
    alarm_flags = next(f for f in sample.scalars if f.name == "alarm_flags").flags or {}
    docs = {"historical": "re-sent from the board's store-and-forward buffer",
            "signed": f"a {schema.TAG_LEN_BYTES}-byte HMAC tag follows the CRC",
            "time_synced": "`ts_ms` comes from a synchronised clock (host time sync or NTP)",
            "pre_event": "sample from the 30 s ring buffer sent after a local L3/L4 event"}
    flags_rows = [f"| 0x{v:04x} | `{k}` | {docs.get(k, '')} |"
                  for k, v in layout.frame_flags().items()]
    markers = []
    for code in "BHIhi":
        a, i = layout.markers(code)
        markers.append(f"| {layout.TYPE_NAMES[code]} | 0x{a:X} | 0x{i:X} |")
    lines = [
        "# The packsentry wire protocol", "",
        f"<!-- {_GENERATED} -->", "",
        "The format is defined once, with `construct`, in `protocol/schema.py`; this page, the",
        "host's fast codec, the firmware's `firmware/wire.py` and the golden vectors in",
        "`protocol/vectors/` are all derived from it (`make generate`; a test fails when any of",
        "them is stale).", "",
        f"- Protocol version: **{schema.PROTOCOL_VERSION}**",
        f"- Schema fingerprint: **0x{layout.schema_fingerprint():08x}**", "",
        "## Frame", "",
        "```",
        f"header ({hdr.size} bytes) | payload (payload_len bytes) | crc32 (4) "
        f"| tag ({schema.TAG_LEN_BYTES}, only with flag `signed`)",
        "```", "",
        "All integers are little-endian. Field names carry their units: `_mv` millivolts,",
        "`_ma` milliamperes (+ = discharge), `_dc` tenths of a degree Celsius, `_kohm`",
        "kilo-ohms, `_ms` milliseconds, `_mah` milliampere-hours.", "",
        "### Header", "",
        "| offset | field | type | meaning |", "|---|---|---|---|", *_table_rows(header_lay), "",
        "### Flags", "", "| bit | flag | meaning |", "|---|---|---|", *flags_rows, "",
        "Undefined flag bits must be zero; a frame with one set is rejected.", "",
        "### CRC and tag", "",
        "- `crc32`: CRC-32/IEEE (`zlib.crc32`, MicroPython's `binascii.crc32`) over header and",
        "  payload, u32 little-endian.",
        "- `tag`: HMAC-SHA256 with the board's 32-byte key over header, payload and CRC,",
        f"  truncated to its first {schema.TAG_LEN_BYTES} bytes. A host that holds a key for",
        "  the board rejects unsigned frames from it (`missing_tag`) and frames whose tag does",
        "  not match (`bad_tag`). Commands that change a board (`config_update`, `reboot`,",
        "  `inject`) are signed by the host with the same key; the board refuses them unsigned",
        "  even when it has no key.",
        "- Check order on the host: length, CRC, version, type, flags, lengths, tag, replay",
        "  window. A corrupted frame is therefore reported as a CRC failure, with a hint when",
        "  its lengths disagree as well.", "",
        "### Replay window", "",
        "Per board, `(boot, seq)` must move forward: each boot keeps the set of seqs received",
        "and accepts an unseen seq at most `window` behind the newest (default",
        f"{replay.DEFAULT_WINDOW}, configurable), so store-and-forward frames re-sent after an",
        f"outage still arrive. The last {replay.DEFAULT_MAX_BOOTS} boots are tracked; older",
        "boots, seqs outside the window and seqs already",
        "received are rejected as `replayed`. A `batch` uses seqs `seq` … `seq + n_samples - 1`.",
        "", "## Framing", "",
        "- **Byte streams** (UART, USB serial, capture files): each frame is COBS-encoded and",
        "  followed by a single `0x00` delimiter. A corrupted frame costs that frame only: the",
        "  reader resynchronises at the next delimiter. Empty runs between delimiters are",
        "  ignored (a sender may emit a `0x00` to flush the line).",
        "- **MQTT**: one bare frame per message, no COBS, no delimiter.", "",
        "## Versioning", "",
        "- `version` (byte 0) changes on every incompatible change; the position of `version`",
        "  and `msg_type` (bytes 0-1), of `flags` (bytes 2-3) and the CRC/tag trailer never",
        "  change, so any host can say *which* version it was sent, instead of decoding",
        "  garbage. A host refuses a version it does not speak, naming both.",
        "- The **schema fingerprint** (first 4 bytes of SHA-256 over a canonical description",
        "  of every message layout, field names, enums, flags and limits) travels in the",
        "  `birth` message. A host refuses a board whose fingerprint differs from its own,",
        "  naming both, like MAVLink's CRC_EXTRA: a changed layout nobody remembered to version",
        "  is still caught.", "",
        "## Markers", "",
        "As in GB/T 32960, the two top values of a measurement field are markers, never",
        "readings: *abnormal* (sensor present but faulty: open or shorted probe, stuck ADC)",
        "and *invalid* (no value). For signed fields, the two top positive values.", "",
        "| type | abnormal | invalid |", "|---|---|---|", *markers, "",
        "## Alarm flags", "",
        "`alarm_flags` in samples uses GB/T 32960.3's general alarm flag bits where a rule has",
        "a counterpart (bits 0-23); bits 24-31 are packsentry's own. An `alarm` message's",
        "`rule` is the bit number.", "",
        "| bit | rule |", "|---|---|",
        *[f"| {v.bit_length() - 1} | `{k}` |" for k, v in alarm_flags.items()], "",
        "## Limits", "",
        "Counted fields above these limits are rejected as absurd (`bad_length`) before any",
        "allocation:", "",
        *[f"- `{k}` ≤ {v}" for k, v in schema.COUNT_LIMITS.items()], "",
        f"- payload ≤ {codec.MAX_PAYLOAD_SIZE} bytes; frame ≤ {codec.MAX_FRAME_SIZE} bytes", "",
        "## Messages", "",
        "Board → host: `birth` (on every boot and connect, and on `rebirth`), `sample`, `batch`,",
        "`alarm`, `status`, `cmd_ack`. Host → board: `time_sync`, `ack`, `config_update`,",
        "`rebirth`, `reboot`, `inject`; the board answers each with a `cmd_ack` naming its seq.",
        "`inject` (a HIL rig's reading, signed) is taken only by a board whose config says",
        "`sensor_source = \"injected\"`; any other board answers `disabled`.",
        "Offsets are from the start of the payload; `+` marks fields after a variable-length",
        "one.", "",
    ]
    for name, lay in layout.all_payload_layouts().items():
        lines += _payload_section(name, lay, ids[name], vectors[name]["vectors"][0])
    lines += [
        "## Rejections", "",
        "Every rejected frame raises a typed error (`protocol/errors.py`) whose `reason` is",
        "counted by the host:", "",
        "| reason | meaning |", "|---|---|",
        *[f"| `{cls.reason}` | {(cls.__doc__ or cls.__name__).strip().splitlines()[0]} |"
          for cls in _error_classes()], "",
    ]
    return "\n".join(lines)


def _error_classes() -> list[type]:
    from . import errors

    out = []
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.ProtocolError) \
                and obj is not errors.ProtocolError:
            out.append(obj)
    return sorted(out, key=lambda c: c.reason)


# -- entry point -----------------------------------------------------------------------------


def outputs() -> dict[Path, str]:
    vectors = vector_docs()
    files = {golden.VECTORS_DIR / f"{t}.json": json.dumps(doc, indent=1) + "\n"
             for t, doc in vectors.items()}
    return {**files, WIRE_PY: wire_module(), PROTOCOL_MD: protocol_doc(vectors)}


def stale() -> list[Path]:
    return [p for p, text in outputs().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m packsentry.protocol.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(REPO)} (run `make generate`)", file=sys.stderr)
        return 1 if bad else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
