"""The last 30 samples, kept so that an L3/L4 event can be reported with what led up to it
(GB/T 32960.3: the 30 s before an alarm). Preallocated; push() allocates nothing.

The ring takes every sample at the sampling rate, whatever the reporting period. Replayed
samples are new frames: flag pre_event, their original timestamps, and fresh seqs (some of
them were reported live already, and a seq is never reused). The board sends them one by one
as its link takes them (app.Board.catch_up_loop), with the ring frozen meanwhile."""

from array import array

import wire

DEPTH = 30


class PreEventRing:
    def __init__(self, n_probes: int, n_cells: int, depth: int = DEPTH) -> None:
        self.depth = depth
        self.n_probes = n_probes
        self.n_cells = n_cells
        self.ts = bytearray(8 * depth)
        self.frame_flags = array("H", bytes(2 * depth))
        self.pack_mv = array("i", bytes(4 * depth))
        self.current_ma = array("i", bytes(4 * depth))
        self.riso_pos = array("H", bytes(2 * depth))
        self.riso_neg = array("H", bytes(2 * depth))
        self.level = bytearray(depth)
        self.flags = array("i", bytes(4 * depth))
        self.temps = array("h", bytes(2 * depth * max(1, n_probes)))
        self.cells = array("H", bytes(2 * depth * max(1, n_cells)))
        self.count = 0
        self.head = 0
        self.frozen = False  # while its samples are being sent: the event's 30 s stay put
        self._saved_ts = bytearray(8)

    def push(self, ts8, frame_flags: int, pack_mv: int, current_ma: int, riso_pos: int,
             riso_neg: int, level: int, alarm_flags: int, temps, cells) -> None:
        if self.frozen:
            return
        i = self.head
        for k in range(8):
            self.ts[8 * i + k] = ts8[k]
        self.frame_flags[i] = frame_flags
        self.pack_mv[i] = pack_mv
        self.current_ma[i] = current_ma
        self.riso_pos[i] = riso_pos
        self.riso_neg[i] = riso_neg
        self.level[i] = level
        self.flags[i] = alarm_flags
        base = i * self.n_probes
        for k in range(self.n_probes):
            self.temps[base + k] = temps[k]
        base = i * self.n_cells
        for k in range(self.n_cells):
            self.cells[base + k] = cells[k]
        self.head = (i + 1) % self.depth
        if self.count < self.depth:
            self.count += 1

    def encode(self, j: int, writer, seq: int) -> int:
        """Encode the j-th oldest held sample with `writer` (frames.FrameWriter) as seq `seq`,
        flagged pre_event, with its own timestamp; return the frame's length. writer.ts is
        left as it was."""
        i = (self.head - self.count + j) % self.depth
        ts = writer.ts
        saved = self._saved_ts
        for k in range(8):
            saved[k] = ts[k]
            ts[k] = self.ts[8 * i + k]
        temps = memoryview(self.temps)[i * self.n_probes:(i + 1) * self.n_probes]
        cells = memoryview(self.cells)[i * self.n_cells:(i + 1) * self.n_cells]
        length = writer.sample(seq, self.frame_flags[i] | wire.FLAG_PRE_EVENT, self.pack_mv[i],
                               self.current_ma[i], self.riso_pos[i], self.riso_neg[i],
                               self.level[i], self.flags[i], temps, cells)
        for k in range(8):
            ts[k] = saved[k]
        return length

    def clear(self) -> None:
        self.count = 0
        self.frozen = False
