"""Golden vectors: one example frame set per message type, written to protocol/vectors/.

The examples below are the source; `make generate` encodes them into `vectors/<type>.json`
(hex bytes plus the decoded fields). Tests check the committed files against both codecs, and
the firmware tests (in the MicroPython VM) check that the board encodes the same bytes.
Signed examples use GOLDEN_KEY, a published test key that no real board may ever use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import layout

VECTORS_DIR = Path(__file__).parent / "vectors"
GOLDEN_KEY = bytes(range(32))
_TS_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z

_FLAGS = layout.frame_flags()
TIME_SYNCED = _FLAGS["time_synced"]


def _header(msg_type: str, seq: int, flags: int = TIME_SYNCED, board_id: int = 0x00C0FFEE,
            boot: int = 3, ts_ms: int = _TS_MS) -> dict[str, Any]:
    return {"version": 1, "msg_type": msg_type, "flags": flags, "board_id": board_id,
            "boot": boot, "seq": seq, "ts_ms": ts_ms}


def _measurement(n_probes: int, n_cells: int, *, i: int = 0) -> dict[str, Any]:
    return {"pack_mv": 59_200 + i, "current_ma": -12_500 + 100 * i, "riso_pos_kohm": 4_444,
            "riso_neg_kohm": 3_220, "alarm_level": 0, "alarm_flags": 0,
            "temps_dc": [251 + 3 * p + i for p in range(n_probes)],
            "cells_mv": [3_700 + (c * 7) % 23 - i for c in range(n_cells)]}


# name -> (frame in canonical form without crc32/tag, signed?)
def examples() -> dict[str, list[tuple[str, dict[str, Any], bool]]]:
    flags = _FLAGS
    sample16 = {**_header("sample", 41), "payload": {"n_probes": 4, "n_cells": 16,
                                                     **_measurement(4, 16)}}
    fault = _measurement(3, 0)
    fault.update(riso_pos_kohm=0xFFFE, alarm_level=3,
                 alarm_flags=layout.payload_layout("sample").scalars[-1].flags["insulation"],
                 temps_dc=[0x7FFE, 0x7FFF, -105])
    sample_markers = {**_header("sample", 42), "payload": {"n_probes": 3, "n_cells": 0, **fault}}
    return {
        "birth": [
            ("nmc_16s_4probes", {**_header("birth", 0), "payload": {
                "fw_major": 0, "fw_minor": 1, "fw_patch": 0,
                "schema_fingerprint": layout.schema_fingerprint(), "chemistry": "nmc",
                "cells_series": 16, "rated_mah": 100_000, "max_pack_mv": 67_200,
                "max_temp_dc": 600, "sample_period_ms": 1_000, "riso_period_ms": 10_000,
                "current_sensor": "ina226", "config_error": 0, "n_probes": 4, "n_cells": 16,
                "probe_cell": [0, 5, 10, 0xFFFF]}}, False),
            ("lfp_signed_no_cells", {**_header("birth", 0, flags=0, board_id=7, boot=1,
                                               ts_ms=12_345), "payload": {
                "fw_major": 0, "fw_minor": 1, "fw_patch": 0,
                "schema_fingerprint": layout.schema_fingerprint(), "chemistry": "lfp",
                "cells_series": 96, "rated_mah": 280_000, "max_pack_mv": 350_400,
                "max_temp_dc": 550, "sample_period_ms": 1_000, "riso_period_ms": 10_000,
                "current_sensor": "shunt", "config_error": 0, "n_probes": 2, "n_cells": 0,
                "probe_cell": [0xFFFF, 0xFFFF]}}, True),
        ],
        "sample": [
            ("nmc_16_cells", sample16, False),
            ("nmc_16_cells_signed", {**sample16, "seq": 43}, True),
            ("markers_insulation_l3", sample_markers, False),
            ("historical_pre_event", {**_header(
                "sample", 44, flags=TIME_SYNCED | flags["historical"] | flags["pre_event"]),
                "payload": {"n_probes": 1, "n_cells": 0, **_measurement(1, 0)}}, False),
        ],
        "batch": [
            ("three_samples_2probes_4cells", {**_header("batch", 100), "payload": {
                "n_samples": 3, "n_probes": 2, "n_cells": 4, "samples": [
                    {"dt_ms": 1_000 * i, **_measurement(2, 4, i=i)} for i in range(3)]}}, False),
        ],
        "alarm": [
            ("insulation_l3_raised", {**_header("alarm", 45), "payload": {
                "rule": "insulation", "level": 3, "event": "raised", "subject": "pack",
                "subject_index": 0, "value": 85, "threshold": 100,
                "pre_event_samples": 30}}, True),
        ],
        "status": [
            ("mqtt_link", {**_header("status", 46), "payload": {
                "uptime_s": 86_400, "heap_free_bytes": 61_440, "store_pending_frames": 12,
                "store_dropped_frames": 0, "acked_seq": 40, "link": "mqtt", "rssi_dbm": -67,
                "config_error": 0, "rx_errors": 1}}, False),
        ],
        "cmd_ack": [
            ("config_ok", {**_header("cmd_ack", 47), "payload": {
                "cmd_type": "config_update", "cmd_seq": 9, "result": "ok"}}, True),
        ],
        "time_sync": [
            ("host_time", {**_header("time_sync", 8, flags=TIME_SYNCED, board_id=0x00C0FFEE,
                                     boot=1), "payload": {"unix_ms": _TS_MS + 250}}, False),
        ],
        "ack": [
            ("up_to_40", {**_header("ack", 10, boot=1), "payload": {
                "acked_boot": 3, "acked_seq": 40}}, True),
        ],
        "config_update": [
            ("period_2s", {**_header("config_update", 9, boot=1), "payload": {
                "config_version": 2, "n_bytes": 27,
                "config_json": b'{"sample_period_ms": 2000}\n'}}, True),
        ],
        "rebirth": [("plain", {**_header("rebirth", 11, boot=1), "payload": {}}, False)],
        "reboot": [("in_1s", {**_header("reboot", 12, boot=1), "payload": {"delay_ms": 1_000}},
                    True)],
        "inject": [("two_probes_three_cells", {**_header("inject", 13, boot=1), "payload": {
            "n_probes": 2, "n_cells": 3, "pack_mv": 11_100, "current_ma": -2_500,
            "riso_pos_kohm": 4_444, "riso_neg_kohm": 0xFFFF, "temps_dc": [251, 0x7FFE],
            "cells_mv": [3_700, 3_701, 3_699]}}, True)],
    }


def load(msg_type: str) -> list[dict[str, Any]]:
    """The committed vectors of one message type: [{name, hex, signed, frame(JSON form)}]."""
    return json.loads((VECTORS_DIR / f"{msg_type}.json").read_text())["vectors"]
