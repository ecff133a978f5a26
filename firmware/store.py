"""Store-and-forward: the frames the host has not acknowledged yet, kept in flash.

On flash, in the directory `root` (LittleFS on the board):

    seg_00000042.bin  a segment: records back to back, only ever appended to, never rewritten
    ptr.bin           the release state (24 bytes), replaced as a whole: ptr.tmp, then rename

    record:   u16 n | u16 n ^ 0xFFFF | u32 CRC-32 of the frame | the frame as sent (n bytes)
    ptr.bin:  u32 flags (bit 0: an ack was received) | u32 acked_boot | u32 acked_seq
              | u32 dropped frames | u32 last dropped segment id | u32 CRC-32 of those 20 bytes

All little-endian. Segment ids only grow, so name order is age order. A frame's key is
(boot, last seq): a batch of n samples covers seq .. seq + n - 1, and it is released only when
its last seq is acknowledged. A frame is released when its key <= (acked_boot, acked_seq).

Power-fail argument:
- An append writes one record at the end of the newest segment and flushes (a LittleFS sync).
  A cut mid-append can only leave that record partial: its length pair or its CRC fails, and
  reading the segment stops there. No byte before it is written again, so earlier records stay
  as they were. (On LittleFS a cut usually drops the unsynced record entirely.)
- A segment with such a torn tail is never appended to again: the next append starts a new
  segment, so nothing good can sit behind garbage. The tail is not cut off (MicroPython files
  cannot truncate, and rewriting the segment would put earlier records at risk); it stays as
  dead bytes, counted against max_bytes, until the segment is released or dropped.
- Every other change (an ack, dropping the oldest segment when full) is decided in ptr.bin
  first: written whole to ptr.tmp, then renamed over ptr.bin, which LittleFS does atomically, so
  a cut leaves the old or the new pointer. A leftover ptr.tmp is deleted unread at boot. Segment
  files are deleted only after the pointer commits, and recovery redoes any deletion the pointer
  implies (every frame released, or id <= last dropped id), so a cut in between neither loses
  a pending frame nor counts a drop twice.

A record's CRC is checked again when it is re-sent: mark_historical reseals the frame, so a
frame damaged in flash would otherwise go out with a fresh, valid CRC.

Heap: the index holds one small list per segment, not per frame; a resent frame is read into
the preallocated frame_buf. An append within a segment allocates nothing; starting a segment
opens a file (a few hundred bytes, reclaimed by the GC).

Flash wear: LittleFS copies a file's partly filled last block into a fresh block on the first
write after a sync, so every append costs one block erase. Store batch frames, not single
samples, where the rate is high.
"""

import os
import struct

import wire
from crc32 import crc32_into
from frames import mark_historical
from micropython import const

_H = wire.HEADER_SIZE
_REC = const(8)  # record header bytes
_PTR = const(24)  # ptr.bin bytes

# Fields of an index entry, one small list per segment (list items update without allocating).
_ID = const(0)
_SIZE = const(1)  # file bytes, torn tail included: what counts against max_bytes
_END = const(2)  # end of the last valid record
_PEND = const(3)  # frames not yet released
_PBYTES = const(4)  # their record bytes
_HI_B = const(5)  # highest key (boot, last seq) in the segment; -1, -1 when it has no frame
_HI_S = const(6)
_LO_B = const(7)  # lowest key still pending
_LO_S = const(8)


def _u32(b, off: int) -> int:
    # Byte arithmetic rather than struct.unpack_from: no tuple, and a small int below 2**30.
    return b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)


def _last_seq(frame, base: int) -> int:
    """The last seq a frame covers (seq + n_samples - 1 for a batch); frame starts at base."""
    seq = _u32(frame, base + wire.HEADER_OFF_SEQ)
    if frame[base + wire.HEADER_OFF_MSG_TYPE] == wire.MSG_BATCH:
        n = frame[base + _H] | (frame[base + _H + 1] << 8)
        if n > 1:
            seq += n - 1
    return seq


def _le(b1: int, s1: int, b2: int, s2: int) -> bool:
    """(b1, s1) <= (b2, s2): an older boot is older whatever its seq."""
    return b1 < b2 or (b1 == b2 and s1 <= s2)


class Store:
    """Unacknowledged frames in flash, released by the host's acks, re-sent oldest first.

    max_bytes bounds the segment files' total size, max_segments their number (default
    max_bytes // segment_bytes); when a frame would not fit, whole oldest segments are dropped
    and their pending frames counted in `dropped`. frame_max is the largest frame appended
    (FrameWriter's len(buf)); signer reseals signed frames when they are re-sent.

    Counters (plain attributes, read them): pending_count, pending_bytes (record bytes of the
    pending frames), used_bytes (segment files), dropped. `acked` is the last ack or None.
    Acks only move forward; a frame appended at or below the last ack counts as released.
    """

    def __init__(self, root: str = "/store", max_bytes: int = 65536, segment_bytes: int = 4096,
                 frame_max: int = 1024, signer=None, max_segments: int = 0) -> None:
        if not _H + wire.CRC_LEN <= frame_max <= 0xFFFF:
            raise ValueError("frame_max out of range")
        if segment_bytes < _REC + frame_max or max_bytes < 2 * segment_bytes:
            raise ValueError("need segment_bytes >= frame_max + 8, max_bytes >= 2 segments")
        self.root = root
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.max_segments = max(2, max_segments or max_bytes // segment_bytes)
        self.signer = signer
        self.frame_buf = bytearray(frame_max)  # resend() puts each frame here
        self._hdr = bytearray(_REC + _H + 2)  # a record header, plus a frame header for rescans
        self._crc = bytearray(4)
        self._ptr = bytearray(_PTR)
        self._segs = []  # index entries, oldest first
        self._w = None  # the newest segment, open for appending
        self._wid = -1
        self._r = None  # a segment open for reading by resend()
        self._rid = -1
        self._ab = -1  # acked (boot, seq); -1, -1 before the first ack
        self._as = -1
        self._drop_id = 0  # segments with id <= this were dropped, and counted in `dropped`
        self._next_id = 1
        self.dropped = 0
        self.pending_count = 0
        self.pending_bytes = 0
        self.used_bytes = 0
        self._recover()

    # -- public --------------------------------------------------------------------------

    @property
    def acked(self):
        return None if self._ab < 0 else (self._ab, self._as)

    def append(self, buf, n: int) -> None:
        """Store the complete frame buf[0:n]; durable when this returns."""
        if n < _H + wire.CRC_LEN or n > len(self.frame_buf):
            raise ValueError("frame length")
        rec = _REC + n
        seg = self._room_for(rec)
        f = self._writer(seg)
        hdr = self._hdr
        inv = n ^ 0xFFFF
        hdr[0] = n & 0xFF
        hdr[1] = n >> 8
        hdr[2] = inv & 0xFF
        hdr[3] = inv >> 8
        crc32_into(buf, n, hdr, 4)
        try:
            f.write(hdr, _REC)
            f.write(buf, n)  # MicroPython's write(buf, max_len): no slice, no allocation
            f.flush()
        except OSError:
            # Part of the record may be on flash: seal the segment (size != end) so nothing is
            # appended behind it; recovery will read up to the last good record.
            self._close_writer()
            size = os.stat(self._name(seg[_ID]))[6]
            self.used_bytes += size - seg[_SIZE]
            seg[_SIZE] = size
            raise
        seg[_SIZE] += rec
        seg[_END] += rec
        self.used_bytes += rec
        if self._index(seg, buf, 0, n):
            self.pending_count += 1
            self.pending_bytes += rec

    def ack(self, boot: int, seq: int) -> int:
        """Release every frame with key <= (boot, seq); return how many were pending.

        An ack at or below the current one changes nothing (no flash write either).
        """
        if _le(boot, seq, self._ab, self._as):
            return 0
        self._ab = boot
        self._as = seq
        self._save_pointer()  # the commit point; the deletions below are redone at boot
        before = self.pending_count
        segs = self._segs
        i = 0
        while i < len(segs):
            seg = segs[i]
            if _le(seg[_HI_B], seg[_HI_S], boot, seq):
                self._delete(i)
                continue
            if seg[_PEND] and _le(seg[_LO_B], seg[_LO_S], boot, seq):
                self._recount(seg)  # released in part: count what is left
            i += 1
        return before - self.pending_count

    def resend(self):
        """Yield the length of each pending frame, oldest first, placed in frame_buf with the
        historical flag set (and resealed). Send it before calling next().

        Walks the frames stored when the walk starts; ack() and append() may be called in
        between (frames acked meanwhile are skipped, frames appended meanwhile are left for
        the next walk). Each call starts again from the oldest pending frame.
        """
        self._close_reader()  # a handle from an older walk may predate later appends
        segs = self._segs
        if not segs:
            return
        end_id = segs[-1][_ID]
        end_off = segs[-1][_END]
        sid = segs[0][_ID]
        off = 0
        buf = self.frame_buf
        while True:
            seg = None
            for s in self._segs:  # the index may have changed while we were suspended
                if s[_ID] >= sid:
                    seg = s
                    break
            if seg is None or seg[_ID] > end_id:
                return
            if seg[_ID] != sid:
                sid = seg[_ID]
                off = 0
            stop = end_off if sid == end_id else seg[_END]
            n = -1
            if seg[_PEND] and off < stop:
                n = self._read(self._reader(sid), off, stop)
            if n < 0:  # segment done (or damaged since boot: its remainder is lost)
                sid += 1
                off = 0
                continue
            off += _REC + n
            if _le(_u32(buf, wire.HEADER_OFF_BOOT), _last_seq(buf, 0), self._ab, self._as):
                continue
            mark_historical(buf, n, self.signer)
            yield n

    def close(self) -> None:
        self._close_writer()
        self._close_reader()

    # -- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        try:
            os.mkdir(self.root)
        except OSError:
            pass  # it exists
        names = os.listdir(self.root)
        if "ptr.tmp" in names:  # cut before the rename: that change never happened
            os.remove(self.root + "/ptr.tmp")
        if "ptr.bin" in names:
            self._load_pointer()
        ids = []
        for name in names:
            if len(name) == 16 and name.startswith("seg_") and name.endswith(".bin"):
                try:
                    ids.append(int(name[4:12]))
                except ValueError:
                    pass  # not ours
        ids.sort()
        self._next_id = self._drop_id + 1
        for sid in ids:
            self._next_id = max(self._next_id, sid + 1)
            if sid <= self._drop_id:  # dropped, but the cut came before the deletion
                self._remove(sid)
                continue
            seg = self._scan(sid)
            if _le(seg[_HI_B], seg[_HI_S], self._ab, self._as):  # released, or no frame
                self._remove(sid)
                continue
            self._segs.append(seg)
            self.used_bytes += seg[_SIZE]
            self.pending_count += seg[_PEND]
            self.pending_bytes += seg[_PBYTES]

    def _load_pointer(self) -> None:
        p = self._ptr
        with open(self.root + "/ptr.bin", "rb") as f:
            got = f.readinto(p)
        crc32_into(p, _PTR - 4, self._crc, 0)
        if got != _PTR or self._crc != p[_PTR - 4:]:
            return  # damaged (flash fault): forget acks and drops; resending is the safe side
        flags, boot, seq, dropped, drop_id = struct.unpack_from("<IIIII", p, 0)
        if flags & 1:
            self._ab = boot
            self._as = seq
        self.dropped = dropped
        self._drop_id = drop_id

    def _scan(self, sid: int):
        """Index a segment, checking every record's CRC; stops at the first bad record."""
        seg = [sid, 0, 0, 0, 0, -1, -1, -1, -1]
        name = self._name(sid)
        size = os.stat(name)[6]
        with open(name, "rb") as f:
            off = 0
            while True:
                n = self._read(f, off, size)
                if n < 0:
                    break
                self._index(seg, self.frame_buf, 0, n)
                off += _REC + n
        seg[_SIZE] = size
        seg[_END] = off
        return seg

    # -- internals -----------------------------------------------------------------------

    def _name(self, sid: int) -> str:
        return "%s/seg_%08d.bin" % (self.root, sid)

    def _index(self, seg, frame, base: int, n: int) -> bool:
        """Account the frame at frame[base:] in seg (counts aside); True if it is pending."""
        b = _u32(frame, base + wire.HEADER_OFF_BOOT)
        s = _last_seq(frame, base)
        if not _le(b, s, seg[_HI_B], seg[_HI_S]):
            seg[_HI_B] = b
            seg[_HI_S] = s
        if _le(b, s, self._ab, self._as):
            return False
        if not seg[_PEND] or _le(b, s, seg[_LO_B], seg[_LO_S]):
            seg[_LO_B] = b
            seg[_LO_S] = s
        seg[_PEND] += 1
        seg[_PBYTES] += _REC + n
        return True

    def _read(self, f, off: int, stop: int) -> int:
        """Read the record at off (ending by stop) into frame_buf; its length, or -1 if bad."""
        if off + _REC > stop:
            return -1
        hdr = self._hdr
        f.seek(off)
        if f.readinto(hdr, _REC) != _REC:
            return -1
        n = hdr[0] | (hdr[1] << 8)
        if (n ^ 0xFFFF) != hdr[2] | (hdr[3] << 8) or n < _H + wire.CRC_LEN:
            return -1
        if n > len(self.frame_buf) or off + _REC + n > stop:
            return -1
        buf = self.frame_buf
        if f.readinto(buf, n) != n:
            return -1
        crc = self._crc
        crc32_into(buf, n, crc, 0)
        for i in range(4):
            if crc[i] != hdr[4 + i]:
                return -1
        return n

    def _recount(self, seg) -> None:
        """Recount a segment's pending frames after an ack, reading headers only."""
        self.pending_count -= seg[_PEND]
        self.pending_bytes -= seg[_PBYTES]
        seg[_PEND] = 0
        seg[_PBYTES] = 0
        hdr = self._hdr
        # A fresh handle: one opened earlier may not see records synced since (LittleFS).
        with open(self._name(seg[_ID]), "rb") as f:
            off = 0
            while off < seg[_END]:
                f.seek(off)
                f.readinto(hdr)  # record header + frame header + a batch's n_samples
                n = hdr[0] | (hdr[1] << 8)
                self._index(seg, hdr, _REC, n)
                off += _REC + n
        self.pending_count += seg[_PEND]
        self.pending_bytes += seg[_PBYTES]

    def _room_for(self, rec: int):
        """Drop oldest segments until a record of rec bytes fits; return the segment to use."""
        segs = self._segs
        last = segs[-1] if segs else None
        # A new segment when the newest is full, or torn (sealed: end != size).
        new = last is None or last[_END] != last[_SIZE] or last[_SIZE] + rec > self.segment_bytes
        count = len(segs)
        used = self.used_bytes
        drop = 0
        while drop < count and (used + rec > self.max_bytes
                                or (new and count - drop >= self.max_segments)):
            used -= segs[drop][_SIZE]
            drop += 1
        if drop:
            for i in range(drop):
                self.dropped += segs[i][_PEND]
            self._drop_id = segs[drop - 1][_ID]
            self._save_pointer()  # commit the drop (and its count) before deleting
            if drop == count:
                new = True
            for _ in range(drop):
                self._delete(0)
        if new:
            self._close_writer()
            sid = self._next_id
            self._next_id += 1
            segs.append([sid, 0, 0, 0, 0, -1, -1, -1, -1])
        return segs[-1]

    def _writer(self, seg):
        """The file of seg (the newest segment), open for appending."""
        f = self._w
        if f is None:
            f = self._w = open(self._name(seg[_ID]), "ab")
            self._wid = seg[_ID]
        return f

    def _delete(self, i: int) -> None:
        seg = self._segs.pop(i)
        self.used_bytes -= seg[_SIZE]
        self.pending_count -= seg[_PEND]
        self.pending_bytes -= seg[_PBYTES]
        if seg[_ID] == self._wid:
            self._close_writer()
        if seg[_ID] == self._rid:
            self._close_reader()
        self._remove(seg[_ID])

    def _remove(self, sid: int) -> None:
        try:
            os.remove(self._name(sid))
        except OSError:
            pass  # already gone, or it fails now: the pointer decided, recovery retries

    def _save_pointer(self) -> None:
        p = self._ptr
        acked = self._ab >= 0
        struct.pack_into("<IIIII", p, 0, 1 if acked else 0, self._ab if acked else 0,
                         self._as if acked else 0, self.dropped, self._drop_id)
        crc32_into(p, _PTR - 4, p, _PTR - 4)
        tmp = self.root + "/ptr.tmp"
        with open(tmp, "wb") as f:
            f.write(p)
        os.rename(tmp, self.root + "/ptr.bin")  # atomic on LittleFS: old or new, never half

    def _reader(self, sid: int):
        if self._rid != sid:
            self._close_reader()
            self._r = open(self._name(sid), "rb")
            self._rid = sid
        return self._r

    def _close_reader(self) -> None:
        if self._r is not None:
            self._r.close()
            self._r = None
        self._rid = -1

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
        self._wid = -1
