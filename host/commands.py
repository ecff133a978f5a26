"""Host -> board command frames: time sync, ack, rebirth, config update, reboot, inject.

A board with a key accepts only commands signed with it, and `config_update`, `reboot` and
`inject` must be signed whatever the board (firmware/commands.py): so every command to a
board we hold a key for is signed, and those three are refused here without one, before
anything is sent. `inject` sets the readings of a board in injected-sensor mode (a HIL rig's
board, hil/real_board.py): readings that drive a safety device's alarms.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from packsentry.protocol import codec

MUST_SIGN = ("config_update", "reboot", "inject")


class BoardLink(Protocol):
    """Where a board was last heard: the way back to it."""

    name: str

    def send_command(self, board_id: int, site: str, frame: bytes) -> bool: ...


class CommandError(Exception):
    pass


class Commands:
    """Encodes commands. The header's boot is this host's start time in seconds, and seq
    counts up from 0, so a command frame's (boot, seq) never repeats across host restarts."""

    def __init__(self, keys: Mapping[int, bytes],
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.keys = keys
        self.clock_ms = clock_ms
        self.boot = (clock_ms() // 1000) & 0xFFFFFFFF
        self.seq = 0

    def frame(self, board_id: int, msg_type: str, payload: Mapping[str, Any]) -> bytes:
        key = self.keys.get(board_id)
        if key is None and msg_type in MUST_SIGN:
            raise CommandError(f"{msg_type} must be signed and there is no key for board "
                               f"{board_id} (add it under [keys] in the daemon's config)")
        frame = {"msg_type": msg_type, "flags": 0, "board_id": board_id, "boot": self.boot,
                 "seq": self.seq, "ts_ms": self.clock_ms(), "payload": dict(payload)}
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return codec.encode_frame(frame, key=key)

    def time_sync(self, board_id: int) -> bytes:
        return self.frame(board_id, "time_sync", {"unix_ms": self.clock_ms()})

    def ack(self, board_id: int, boot: int, seq: int) -> bytes:
        return self.frame(board_id, "ack", {"acked_boot": boot, "acked_seq": seq})

    def rebirth(self, board_id: int) -> bytes:
        return self.frame(board_id, "rebirth", {})

    def reboot(self, board_id: int, delay_ms: int = 1000) -> bytes:
        return self.frame(board_id, "reboot", {"delay_ms": delay_ms})

    def config_update(self, board_id: int, version: int, config: Mapping[str, Any]) -> bytes:
        body = json.dumps(config, separators=(",", ":")).encode()
        return self.frame(board_id, "config_update",
                          {"config_version": version, "n_bytes": len(body), "config_json": body})

    def inject(self, board_id: int, reading: Mapping[str, Any]) -> bytes:
        """One reading in board units, a sample's fields (pack_mv, current_ma,
        riso_pos_kohm, riso_neg_kohm, temps_dc, cells_mv; markers as in a sample)."""
        temps, cells = list(reading["temps_dc"]), list(reading["cells_mv"])
        return self.frame(board_id, "inject", {
            "n_probes": len(temps), "n_cells": len(cells), "pack_mv": reading["pack_mv"],
            "current_ma": reading["current_ma"], "riso_pos_kohm": reading["riso_pos_kohm"],
            "riso_neg_kohm": reading["riso_neg_kohm"], "temps_dc": temps, "cells_mv": cells})
