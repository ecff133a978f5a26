"""Encoding the board's frames into one preallocated buffer.

Every format and offset comes from the generated `wire` module; the argument order of each
pack follows the schema's field order, and the golden-vector tests (run in the MicroPython
VM) fail if the two ever drift. The sample path allocates nothing: the buffer, its views
and the timestamp bytes are made once, values stay small ints, and the CRC is computed in
place (crc32.py). Signing allocates a little (signer.py). Framing for byte streams is the
link's job (app.SerialLink), not this module's.
"""

import struct

import wire
from crc32 import crc32_into

_H = wire.HEADER_SIZE


class FrameWriter:
    def __init__(self, board_id: int, boot: int, n_probes: int, n_cells: int,
                 batch_max: int = 1, signer=None) -> None:
        self.n_probes = n_probes
        self.n_cells = n_cells
        arrays = 2 * (n_probes + n_cells)  # i16 temps, u16 cells
        self.record_size = wire.BATCH_REC_SIZE + arrays
        payload_max = max(wire.BIRTH_SIZE + 2 * n_probes, wire.SAMPLE_SIZE + arrays,
                          wire.BATCH_SIZE + batch_max * self.record_size, wire.ALARM_SIZE,
                          wire.STATUS_SIZE, wire.CMD_ACK_SIZE)
        self.batch_max = batch_max
        self.buf = bytearray(_H + payload_max + wire.CRC_LEN + wire.TAG_LEN)
        self.mv = memoryview(self.buf)
        self.signer = signer
        self.ts = bytearray(8)  # u64 ms, little-endian: updated in place, never a big int
        struct.pack_into(wire.HEADER_FMT, self.buf, 0, wire.PROTOCOL_VERSION, 0, 0, board_id,
                         boot, 0, 0, 0)
        self._batch_n = 0

    def set_boot(self, boot: int) -> None:
        struct.pack_into("<I", self.buf, wire.HEADER_OFF_BOOT, boot)

    def set_ts_ms(self, ts_ms: int) -> None:
        """Set the timestamp from an int (allocates for real epoch values; not per sample)."""
        for i in range(8):
            self.ts[i] = (ts_ms >> (8 * i)) & 0xFF

    # -- messages ----------------------------------------------------------------------------

    def sample(self, seq: int, flags: int, pack_mv: int, current_ma: int, riso_pos_kohm: int,
               riso_neg_kohm: int, alarm_level: int, alarm_flags: int, temps_dc,
               cells_mv) -> int:
        """Encode a sample frame; return its length. temps_dc/cells_mv: n_probes/n_cells ints."""
        struct.pack_into(wire.SAMPLE_FMT, self.buf, _H, self.n_probes, self.n_cells, pack_mv,
                         current_ma, riso_pos_kohm, riso_neg_kohm, alarm_level, alarm_flags)
        end = self._arrays(_H + wire.SAMPLE_SIZE, temps_dc, cells_mv)
        return self._finish(wire.MSG_SAMPLE, flags, seq, end - _H)

    def begin_batch(self) -> None:
        self._batch_n = 0

    def add_to_batch(self, dt_ms: int, pack_mv: int, current_ma: int, riso_pos_kohm: int,
                     riso_neg_kohm: int, alarm_level: int, alarm_flags: int, temps_dc,
                     cells_mv) -> bool:
        """Append a record; False when the batch is full (send it, then begin another)."""
        if self._batch_n >= self.batch_max:
            return False
        off = _H + wire.BATCH_SIZE + self._batch_n * self.record_size
        struct.pack_into(wire.BATCH_REC_FMT, self.buf, off, dt_ms, pack_mv, current_ma,
                         riso_pos_kohm, riso_neg_kohm, alarm_level, alarm_flags)
        self._arrays(off + wire.BATCH_REC_SIZE, temps_dc, cells_mv)
        self._batch_n += 1
        return True

    def finish_batch(self, seq: int, flags: int) -> int:
        """Encode the batch begun with begin_batch; its samples use seq .. seq + n - 1."""
        n = self._batch_n
        struct.pack_into(wire.BATCH_FMT, self.buf, _H, n, self.n_probes, self.n_cells)
        return self._finish(wire.MSG_BATCH, flags, seq, wire.BATCH_SIZE + n * self.record_size)

    def birth(self, seq: int, flags: int, fw_version: tuple, chemistry: int, cells_series: int,
              rated_mah: int, max_pack_mv: int, max_temp_dc: int, sample_period_ms: int,
              riso_period_ms: int, current_sensor: int, config_error: int, probe_cell) -> int:
        struct.pack_into(wire.BIRTH_FMT, self.buf, _H, fw_version[0], fw_version[1],
                         fw_version[2], wire.SCHEMA_FINGERPRINT, chemistry, cells_series,
                         rated_mah, max_pack_mv, max_temp_dc, sample_period_ms, riso_period_ms,
                         current_sensor, config_error, self.n_probes, self.n_cells)
        off = _H + wire.BIRTH_SIZE
        for i in range(self.n_probes):
            struct.pack_into("<H", self.buf, off + 2 * i, probe_cell[i])
        return self._finish(wire.MSG_BIRTH, flags, seq, wire.BIRTH_SIZE + 2 * self.n_probes)

    def alarm(self, seq: int, flags: int, rule: int, level: int, event: int, subject: int,
              subject_index: int, value: int, threshold: int, pre_event_samples: int) -> int:
        struct.pack_into(wire.ALARM_FMT, self.buf, _H, rule, level, event, subject,
                         subject_index, value, threshold, pre_event_samples)
        return self._finish(wire.MSG_ALARM, flags, seq, wire.ALARM_SIZE)

    def status(self, seq: int, flags: int, uptime_s: int, heap_free_bytes: int,
               store_pending_frames: int, store_dropped_frames: int, acked_seq: int, link: int,
               rssi_dbm: int, config_error: int, rx_errors: int) -> int:
        struct.pack_into(wire.STATUS_FMT, self.buf, _H, uptime_s, heap_free_bytes,
                         store_pending_frames, store_dropped_frames, acked_seq, link, rssi_dbm,
                         config_error, rx_errors)
        return self._finish(wire.MSG_STATUS, flags, seq, wire.STATUS_SIZE)

    def cmd_ack(self, seq: int, flags: int, cmd_type: int, cmd_seq: int, result: int) -> int:
        struct.pack_into(wire.CMD_ACK_FMT, self.buf, _H, cmd_type, cmd_seq, result)
        return self._finish(wire.MSG_CMD_ACK, flags, seq, wire.CMD_ACK_SIZE)

    # -- internals ---------------------------------------------------------------------------

    def _arrays(self, off: int, temps_dc, cells_mv) -> int:
        buf = self.buf
        for i in range(self.n_probes):
            struct.pack_into("<h", buf, off, temps_dc[i])
            off += 2
        for i in range(self.n_cells):
            struct.pack_into("<H", buf, off, cells_mv[i])
            off += 2
        return off

    def _finish(self, msg_type: int, flags: int, seq: int, payload_len: int) -> int:
        buf = self.buf
        if self.signer is not None:
            flags |= wire.FLAG_SIGNED
        buf[wire.HEADER_OFF_MSG_TYPE] = msg_type
        struct.pack_into("<H", buf, wire.HEADER_OFF_FLAGS, flags)
        struct.pack_into("<I", buf, wire.HEADER_OFF_SEQ, seq)
        ts = self.ts
        for i in range(8):
            buf[wire.HEADER_OFF_TS_MS + i] = ts[i]
        struct.pack_into("<H", buf, wire.HEADER_OFF_PAYLOAD_LEN, payload_len)
        end = _H + payload_len
        crc32_into(buf, end, buf, end)
        end += wire.CRC_LEN
        if self.signer is not None:
            self.signer.tag_into(buf, end, buf, end)
            end += wire.TAG_LEN
        return end


def mark_historical(frame, n: int, signer=None) -> None:
    """Set the `historical` flag on the complete frame frame[0:n] in place and reseal it.

    Store-and-forward re-sends use this: the flag sits in the CRC'd (and signed) header, so
    CRC and tag are recomputed. Allocates only when signing.
    """
    flags = frame[wire.HEADER_OFF_FLAGS] | (frame[wire.HEADER_OFF_FLAGS + 1] << 8)
    struct.pack_into("<H", frame, wire.HEADER_OFF_FLAGS, flags | wire.FLAG_HISTORICAL)
    end = n - wire.CRC_LEN - (wire.TAG_LEN if flags & wire.FLAG_SIGNED else 0)
    crc32_into(frame, end, frame, end)
    if flags & wire.FLAG_SIGNED:
        if signer is None:
            raise ValueError("signed frame: a signer is needed to reseal it")
        signer.tag_into(frame, end + wire.CRC_LEN, frame, end + wire.CRC_LEN)
