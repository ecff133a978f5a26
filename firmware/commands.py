"""Parsing host -> board command frames (bare frames: one per MQTT message, or one decoded
from the serial stream's COBS). Commands are rare, so clarity beats allocation here.

Authentication policy: a board with a key accepts only commands carrying a valid tag for it;
`config_update`, `reboot` and `inject` change the board (or the readings its safety rules
act on), so they are refused unsigned even by a board that has no key (provision one first).
`inject` is parsed here; whether the board takes it is its config's (app.py).
"""

import struct

import wire
from crc32 import crc32_into

OK = wire.RESULT_OK
BAD_TAG = wire.RESULT_BAD_TAG
INVALID = wire.RESULT_INVALID
UNSUPPORTED = wire.RESULT_UNSUPPORTED
DISABLED = wire.RESULT_DISABLED

_MUST_SIGN = (wire.MSG_CONFIG_UPDATE, wire.MSG_REBOOT, wire.MSG_INJECT)


class Command:
    """A parsed command. `result` is OK or the reason it was refused (for the cmd_ack)."""

    def __init__(self) -> None:
        self.result = INVALID
        self.msg_type = 0
        self.seq = 0
        self.board_id = 0
        self.unix_ms = 0  # time_sync
        self.acked_boot = 0  # ack
        self.acked_seq = 0
        self.config_version = 0  # config_update
        self.config_json = b""
        self.delay_ms = 0  # reboot
        self.n_probes = 0  # inject: the reading's scalars; its arrays stay in `frame`
        self.n_cells = 0
        self.pack_mv = 0
        self.current_ma = 0
        self.riso_pos_kohm = 0
        self.riso_neg_kohm = 0
        self.frame = b""
        self.arrays_off = 0  # temps_dc (i16 each), then cells_mv (u16 each)

    def __repr__(self) -> str:
        return f"Command(type=0x{self.msg_type:02x}, seq={self.seq}, result={self.result})"


def parse_command(frame, board_id: int, signer=None) -> Command:
    """Check and decode one bare frame addressed to `board_id`. Never raises on bad input."""
    cmd = Command()
    n = len(frame)
    if n < wire.HEADER_SIZE + wire.CRC_LEN:
        return cmd
    (version, msg_type, flags, to_board, _boot, seq, _ts, payload_len) = struct.unpack_from(
        wire.HEADER_FMT, frame, 0)
    cmd.msg_type = msg_type
    cmd.seq = seq
    cmd.board_id = to_board
    tag_len = wire.TAG_LEN if flags & wire.FLAG_SIGNED else 0
    end = wire.HEADER_SIZE + payload_len
    if version != wire.PROTOCOL_VERSION or end + wire.CRC_LEN + tag_len != n:
        return cmd
    crc = bytearray(4)
    crc32_into(frame, end, crc, 0)
    if crc != frame[end:end + wire.CRC_LEN]:
        return cmd
    if to_board != board_id:
        return cmd
    if signer is not None or msg_type in _MUST_SIGN:
        if not tag_len or signer is None:
            cmd.result = BAD_TAG
            return cmd
        mac = signer.digest(memoryview(frame)[:end + wire.CRC_LEN])
        diff = 0
        for i in range(wire.TAG_LEN):  # compare all bytes: no early exit to time
            diff |= mac[i] ^ frame[end + wire.CRC_LEN + i]
        if diff:
            cmd.result = BAD_TAG
            return cmd
    p = wire.HEADER_SIZE
    if msg_type == wire.MSG_TIME_SYNC and payload_len == wire.TIME_SYNC_SIZE:
        (cmd.unix_ms,) = struct.unpack_from(wire.TIME_SYNC_FMT, frame, p)
    elif msg_type == wire.MSG_ACK and payload_len == wire.ACK_SIZE:
        cmd.acked_boot, cmd.acked_seq = struct.unpack_from(wire.ACK_FMT, frame, p)
    elif msg_type == wire.MSG_CONFIG_UPDATE and payload_len >= wire.CONFIG_UPDATE_SIZE:
        cmd.config_version, n_bytes = struct.unpack_from(wire.CONFIG_UPDATE_FMT, frame, p)
        if wire.CONFIG_UPDATE_SIZE + n_bytes != payload_len or n_bytes > wire.MAX_N_BYTES:
            return cmd
        start = p + wire.CONFIG_UPDATE_SIZE
        cmd.config_json = bytes(frame[start:start + n_bytes])
    elif msg_type == wire.MSG_REBIRTH and payload_len == wire.REBIRTH_SIZE:
        pass
    elif msg_type == wire.MSG_REBOOT and payload_len == wire.REBOOT_SIZE:
        (cmd.delay_ms,) = struct.unpack_from(wire.REBOOT_FMT, frame, p)
    elif msg_type == wire.MSG_INJECT and payload_len >= wire.INJECT_SIZE:
        (cmd.n_probes, cmd.n_cells, cmd.pack_mv, cmd.current_ma, cmd.riso_pos_kohm,
         cmd.riso_neg_kohm) = struct.unpack_from(wire.INJECT_FMT, frame, p)
        if wire.INJECT_SIZE + 2 * (cmd.n_probes + cmd.n_cells) != payload_len:
            return cmd
        cmd.frame = frame  # valid while the command is handled: the sampler copies it
        cmd.arrays_off = p + wire.INJECT_SIZE
    elif msg_type in (wire.MSG_TIME_SYNC, wire.MSG_ACK, wire.MSG_CONFIG_UPDATE,
                      wire.MSG_REBIRTH, wire.MSG_REBOOT, wire.MSG_INJECT):
        return cmd  # known command, wrong length
    else:
        cmd.result = UNSUPPORTED
        return cmd
    cmd.result = OK
    return cmd
