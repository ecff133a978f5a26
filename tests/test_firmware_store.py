"""The firmware's store-and-forward buffer (firmware/store.py), run in the real MicroPython VM on
real files in the VM's filesystem: release by ack, bounded size, re-sending, recovery, and power
cuts at every byte of a record. Re-sent frames are decoded by the host codec."""

from __future__ import annotations

import ast
import random
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from packsentry.hil.mpvm import GC_PAUSE_MS, run_micropython
from packsentry.protocol import codec, golden

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
HISTORICAL = codec.FLAGS["historical"]
SIGNED = codec.FLAGS["signed"]

# Helpers inside the VM. sample()/batch() encode into w.buf with the firmware's FrameWriter;
# put() appends to a store and prints the frame for the host; show() prints a store's state
# and the frames a full re-send walk yields.
PRELUDE = f"GC_PAUSE_MS = {GC_PAUSE_MS}\n" + """
import asyncio
import gc
import os
from frames import FrameWriter
from signer import Signer
from store import Store

SIGNER = None
w = FrameWriter(0xC0FFEE, 1, 1, 2, 4)

def use_signer(key):
    global SIGNER, w
    SIGNER = Signer(key)
    w = FrameWriter(0xC0FFEE, 1, 1, 2, 4, SIGNER)

def sample(seq, boot=1):
    w.set_boot(boot)
    w.set_ts_ms(1764000000000 + 1000 * seq)
    return w.sample(seq, 0, 350000 + seq, -1000 - seq, 4444, 3220, 0, 0, [200 + seq % 50],
                    [3600 + seq % 90, 3700])

def batch(seq, k, boot=1):
    w.set_boot(boot)
    w.begin_batch()
    for i in range(k):
        w.add_to_batch(1000 * i, 350000 + seq + i, -1000, 4444, 3220, 0, 0, [250],
                       [3600 + i, 3700])
    return w.finish_batch(seq, 0)

def open_store(root, **kw):
    return Store(root, frame_max=len(w.buf), signer=SIGNER, **kw)

def put(st, n):
    st.append(w.buf, n)
    print('A', bytes(w.buf[:n]).hex())

def walk(st):
    return [bytes(st.frame_buf[:n]).hex() for n in st.resend()]

def segs(root):
    return sorted(x for x in os.listdir(root) if x.startswith('seg_'))

def show(st, tag):
    print(repr((tag, st.pending_count, st.pending_bytes, st.used_bytes, st.dropped, st.acked,
                segs(st.root), walk(st))))

def snapshot(root):
    snap = {}
    for x in os.listdir(root):
        with open(root + '/' + x, 'rb') as f:
            snap[x] = f.read()
    return snap

def restore(root, snap):
    for x in os.listdir(root):
        os.remove(root + '/' + x)
    for x in snap:
        with open(root + '/' + x, 'wb') as f:
            f.write(snap[x])
"""


class State(NamedTuple):
    pending: int
    pending_bytes: int
    used_bytes: int
    dropped: int
    acked: tuple[int, int] | None
    segs: list[str]
    frames: list[str]  # hex, as a re-send walk yields them


class Run(NamedTuple):
    appended: list[bytes]  # every frame put() stored, in order
    states: dict[str, State]
    rows: list[tuple]  # other tuples the script printed
    lines: list[str]  # everything else


def run_store(script: str, key: bytes | None = None) -> Run:
    setup = f"use_signer({key!r})\n" if key else ""
    res = run_micropython(PRELUDE + setup + script, dirs={"/firmware": FIRMWARE}, timeout_s=60)
    res.check()
    run = Run([], {}, [], [])
    for line in res.stdout.splitlines():
        if line.startswith("A "):
            run.appended.append(bytes.fromhex(line[2:]))
        elif line.startswith("("):
            row = ast.literal_eval(line)
            if len(row) == 8 and isinstance(row[0], str):
                run.states[row[0]] = State(*row[1:])
            else:
                run.rows.append(row)
        else:
            run.lines.append(line)
    return run


def key_of(frame: bytes) -> tuple[int, int]:
    """(boot, last seq) of a stored frame, the host's view of the release rule."""
    f = codec.decode_frame(frame)
    n = f["payload"]["n_samples"] if f["msg_type"] == "batch" else 1
    return f["boot"], f["seq"] + max(n, 1) - 1


def check_resent(hexes: list[str], originals: list[bytes], key: bytes | None = None) -> None:
    """The re-sent frames are exactly `originals`, in order, flagged historical, and decode."""
    assert len(hexes) == len(originals)
    for got_hex, orig in zip(hexes, originals, strict=True):
        got = codec.decode_frame(bytes.fromhex(got_hex), key=key)  # raises on a bad CRC or tag
        want = codec.decode_frame(orig, key=key)
        assert not want["flags"] & HISTORICAL
        assert got["flags"] == want["flags"] | HISTORICAL
        for field in ("msg_type", "board_id", "boot", "seq", "ts_ms", "payload"):
            assert got[field] == want[field], field


def pending_after(appended: list[bytes], acked: tuple[int, int] | None) -> list[bytes]:
    return [f for f in appended if acked is None or key_of(f) > acked]


def record_bytes(frames: list[bytes]) -> int:
    return sum(8 + len(f) for f in frames)


# -- 1. release by ack ---------------------------------------------------------------------------

def test_ack_releases_exactly_the_acked_frames_and_deletes_released_segments() -> None:
    run = run_store("""
st = open_store('/s', max_bytes=4096, segment_bytes=256)
for seq in range(10):
    put(st, sample(seq))    # 64-byte records, 4 per segment: 0-3, 4-7, then 8 9
put(st, batch(10, 4))       # seqs 10..13, 151 bytes: a segment of its own with 14
put(st, sample(14))
show(st, 'start')
print(repr(('released', st.ack(1, 3))))
show(st, 'a3')
st.ack(1, 12)               # inside the batch: the batch stays
show(st, 'a12')
st.ack(1, 13)
show(st, 'a13')
print(repr(('stale', st.ack(1, 5))))
show(st, 'stale')
for seq in range(3):
    put(st, sample(seq, boot=2))
st.ack(2, 0)                # a later boot's ack releases all of boot 1
show(st, 'b2')
st.ack(2, 2)
show(st, 'all')
""")
    appended = run.appended
    assert len(appended) == 15
    for tag, acked in [("start", None), ("a3", (1, 3)), ("a12", (1, 12)), ("a13", (1, 13)),
                       ("stale", (1, 13)), ("b2", (2, 0)), ("all", (2, 2))]:
        state = run.states[tag]
        known = appended[:12] if tag in ("start", "a3", "a12", "a13", "stale") else appended
        want = pending_after(known, acked)
        assert state.acked == acked, tag
        assert state.pending == len(want), tag
        assert state.pending_bytes == record_bytes(want), tag
        check_resent(state.frames, want)
    assert ("released", 4) in run.rows and ("stale", 0) in run.rows
    seg = "seg_{:08d}.bin".format
    assert run.states["start"].segs == [seg(1), seg(2), seg(3), seg(4)]
    assert run.states["a3"].segs == [seg(2), seg(3), seg(4)]  # 0..3 released: segment gone
    assert run.states["a12"].segs == [seg(4)]
    a12_seqs = [codec.decode_frame(bytes.fromhex(h))["seq"] for h in run.states["a12"].frames]
    assert a12_seqs == [10, 14]  # the batch 10..13 waits for its last seq
    assert run.states["a13"].segs == [seg(4)]  # still holds 14
    assert run.states["stale"] == run.states["a13"]
    assert run.states["b2"].segs == [seg(5)]
    assert run.states["all"].segs == []
    assert run.states["all"][:3] == (0, 0, 0)


# -- 2. overflow -----------------------------------------------------------------------------

def test_overflow_drops_oldest_segments_and_counts_them() -> None:
    run = run_store("""
st = open_store('/s', max_bytes=1024, segment_bytes=256)
for seq in range(3):
    put(st, sample(seq))
st.ack(1, 1)                # 0, 1 released; 2 still pending in the oldest segment
worst = nseg = 0
for seq in range(3, 40):
    put(st, sample(seq))
    names = segs('/s')
    on_flash = 0
    for x in names:
        on_flash += os.stat('/s/' + x)[6]
    assert on_flash == st.used_bytes
    worst = max(worst, on_flash)
    nseg = max(nseg, len(names))
    await asyncio.sleep_ms(GC_PAUSE_MS)  # the VM's GC runs only when control returns to JS
print(repr(('worst', worst, nseg)))
show(st, 'full')
st.close()
show(open_store('/s', max_bytes=1024, segment_bytes=256), 'reopened')
""")
    assert ("worst", 1024, 4) in run.rows  # filled to the bound, never past it
    full = run.states["full"]
    assert 12 <= full.pending <= 16  # at most one segment's worth below the bound
    want = run.appended[40 - full.pending:]  # the newest survive, oldest dropped first
    check_resent(full.frames, want)
    assert full.dropped == 40 - 2 - full.pending  # every frame: acked, dropped or pending
    assert run.states["reopened"] == full  # the drop count is persisted


# -- 3. re-send ------------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [False, True])
def test_resend_walks_unacked_frames_oldest_first_flagged_historical(signed: bool) -> None:
    key = golden.GOLDEN_KEY if signed else None
    run = run_store("""
st = open_store('/s', max_bytes=4096, segment_bytes=256)
for seq in range(6):
    put(st, sample(seq))
put(st, batch(6, 3))
show(st, 'all')
show(st, 'again')           # walking re-seals frame_buf only: flash is unchanged

g = st.resend()             # link lost after two frames ...
next(g)
next(g)
st.ack(1, 0)                # ... and the host had stored the first
g = st.resend()             # reconnect: from the oldest unacked again
print('W', bytes(st.frame_buf[:next(g)]).hex())
put(st, sample(9))          # a live frame while walking: left for the next walk
st.ack(1, 2)                # acked while walking: skipped
for n in g:
    print('W', bytes(st.frame_buf[:n]).hex())
show(st, 'next')
""", key=key)
    frames = run.appended
    check_resent(run.states["all"].frames, frames[:7], key)
    assert run.states["again"] == run.states["all"]
    walked = [line[2:] for line in run.lines if line.startswith("W ")]
    check_resent(walked, [frames[1], *frames[3:7]], key)
    check_resent(run.states["next"].frames, frames[3:], key)
    assert codec.decode_frame(frames[7], key=key)["seq"] == 9
    for h in run.states["next"].frames:
        assert bool(codec.decode_frame(bytes.fromhex(h))["flags"] & SIGNED) == signed


# -- 4. recovery -----------------------------------------------------------------------------

def test_a_new_store_on_the_same_directory_sees_the_same_state() -> None:
    run = run_store("""
cfg = {'max_bytes': 4096, 'segment_bytes': 256}
st = open_store('/s', **cfg)
print(repr(('fresh', st.acked, st.pending_count)))
for seq in range(9):
    put(st, sample(seq))
put(st, batch(9, 4))
st.ack(1, 4)
show(st, 'before')
show(open_store('/s', **cfg), 'after')  # no close(): as after a power cut
st = open_store('/s', **cfg)
put(st, sample(13))         # appends go on after recovery
st.ack(1, 9)
show(open_store('/s', **cfg), 'later')
""")
    assert ("fresh", None, 0) in run.rows
    before, after = run.states["before"], run.states["after"]
    assert after == before
    assert after.acked == (1, 4)
    check_resent(after.frames, run.appended[5:10])
    later = run.states["later"]
    assert later.acked == (1, 9)
    check_resent(later.frames, [run.appended[9], run.appended[10]])  # the batch 9..12, 13


# -- 5. power cuts ---------------------------------------------------------------------------

POWER_CUT = """
cfg = {'max_bytes': 4096, 'segment_bytes': SEGMENT_BYTES}
st = open_store('/s', **cfg)
for seq in range(4):
    put(st, sample(seq))    # 4 x 64 bytes
st.ack(1, 0)
before = snapshot('/s')
put(st, batch(4, 4))        # the record being written when the power goes: 151 bytes
st.close()
after = snapshot('/s')
name = [x for x in after if after[x] != before.get(x)][0]
start = len(before.get(name, b''))
record = after[name][start:]
print(repr(('record', name, start, len(record))))

def recover(tag, data):
    snap = dict(before)
    snap[name] = data
    restore('/s', snap)
    st = open_store('/s', **cfg)
    got = walk(st)
    st.append(w.buf, sample(100))
    got2 = walk(st)
    st.close()
    st = open_store('/s', **cfg)    # and once more, after appending behind the damage
    got3 = walk(st)
    st.close()
    print(repr((tag, got, got2[len(got):], got2[:len(got)] == got and got3 == got2,
                'ptr.tmp' in os.listdir('/s'))))

for cut in range(len(record) + 1):  # the full record last: the control
    recover(cut, after[name][:start + cut])
    await asyncio.sleep_ms(GC_PAUSE_MS)  # the VM's GC runs only when control returns to JS

flipped = bytearray(record)
flipped[40] ^= 0x10
claims_more = bytes([100, 0, 155, 255]) + record[4:30]  # a valid length pair, data missing
tails = {'erased': b'\\xff' * 64, 'zeros': bytes(64), 'random': RANDOM,
         'bad_crc': bytes(flipped), 'claims_more': claims_more,
         'claims_too_much': bytes([0xE8, 3, 0x17, 0xFC]) + bytes(40)}
for t in tails:
    recover(t, after[name][:start] + tails[t])
    await asyncio.sleep_ms(GC_PAUSE_MS)
recover('complete+garbage', after[name] + RANDOM)
"""


@pytest.mark.parametrize("segment_bytes", [512, 256], ids=["mid_segment", "new_segment"])
def test_power_cut_during_append_loses_at_most_that_frame(segment_bytes: int) -> None:
    rng = random.Random(segment_bytes)
    script = (POWER_CUT.replace("SEGMENT_BYTES", str(segment_bytes))
              .replace("RANDOM", repr(bytes(rng.randrange(256) for _ in range(64)))))
    t0 = time.monotonic()
    run = run_store(script)
    elapsed = time.monotonic() - t0
    frames = run.appended
    (record_row,) = [r for r in run.rows if r[0] == "record"]
    _, name, start, size = record_row
    assert size == 8 + len(frames[4])
    # mid_segment: the batch follows the samples in segment 1; new_segment: it opens segment 2
    assert (name, start) == (("seg_00000001.bin", 256) if segment_bytes == 512
                             else ("seg_00000002.bin", 0))
    rows = {r[0]: r[1:] for r in run.rows if r[0] != "record"}
    assert len(rows) == size + 1 + 7
    for tag, (got, new, consistent, tmp_left) in rows.items():
        survived = tag in (size, "complete+garbage")
        check_resent(got, frames[1:5] if survived else frames[1:4])  # earlier ones intact
        assert len(new) == 1 and codec.decode_frame(bytes.fromhex(new[0]))["seq"] == 100, tag
        assert consistent and not tmp_left, tag
    assert elapsed < 15


def test_power_cut_during_pointer_update_keeps_the_old_pointer() -> None:
    run = run_store("""
cfg = {'max_bytes': 4096, 'segment_bytes': 256}
st = open_store('/s', **cfg)
for seq in range(10):
    put(st, sample(seq))
st.ack(1, 2)
st.close()
old = snapshot('/s')
os.mkdir('/t')              # what ack(1, 6) would write, made in a copy
restore('/t', old)
st = open_store('/t', **cfg)
st.ack(1, 6)
st.close()
with open('/t/ptr.bin', 'rb') as f:
    new_ptr = f.read()
for tag, tmp in [('complete', new_ptr), ('torn', new_ptr[:10]), ('empty', b'')]:
    snap = dict(old)
    snap['ptr.tmp'] = tmp   # temp file written, rename not done
    restore('/s', snap)
    st = open_store('/s', **cfg)
    show(st, tag)
    print(repr((tag, 'ptr.tmp' in os.listdir('/s'), st.ack(1, 6), st.acked)))
    st.close()
""")
    for tag in ("complete", "torn", "empty"):
        state = run.states[tag]
        assert state.acked == (1, 2)  # the old pointer holds
        check_resent(state.frames, run.appended[3:])
        assert (tag, False, 4, (1, 6)) in run.rows  # temp gone; the next ack works


def test_power_cut_between_pointer_commit_and_segment_deletion() -> None:
    # The pointer commits an ack or a drop before the segment files go; recovery must finish
    # the deletion itself, without resurrecting frames or counting a drop twice.
    run = run_store("""
cfg = {'max_bytes': 1024, 'segment_bytes': 256}
st = open_store('/s', **cfg)
for seq in range(16):
    put(st, sample(seq))    # segments 1..4, full
pre_ack = snapshot('/s')
st.ack(1, 3)                # releases segment 1
st.close()
snap = snapshot('/s')
snap['seg_00000001.bin'] = pre_ack['seg_00000001.bin']  # its deletion never happened
restore('/s', snap)
st = open_store('/s', **cfg)
show(st, 'acked')
for seq in range(16, 20):
    put(st, sample(seq))    # segment 5: fits, 4 segments
pre_drop = snapshot('/s')
put(st, sample(20))         # needs a 5th segment: drops segment 2 (4..7)
st.close()
snap = snapshot('/s')
snap['seg_00000002.bin'] = pre_drop['seg_00000002.bin']
restore('/s', snap)
st = open_store('/s', **cfg)
show(st, 'dropped')
print(repr(('files', segs('/s'))))
""")
    acked = run.states["acked"]
    assert "seg_00000001.bin" not in acked.segs
    check_resent(acked.frames, run.appended[4:16])
    dropped = run.states["dropped"]
    assert dropped.dropped == 4
    check_resent(dropped.frames, run.appended[8:21])
    assert ("files", ["seg_00000003.bin", "seg_00000004.bin", "seg_00000005.bin",
                      "seg_00000006.bin"]) in run.rows


# -- heap -----------------------------------------------------------------------------------

def test_append_allocates_nothing_within_a_segment() -> None:
    run = run_store("""
st = open_store('/s', max_bytes=65536, segment_bytes=4096)
n = sample(7)
st.append(w.buf, n)         # opens the first segment

def appends(k):  # locals only: no global may be created between the two readings
    before = gc.mem_alloc()
    for i in range(k):
        st.append(w.buf, n)
    return gc.mem_alloc() - before

def acks(k):
    before = gc.mem_alloc()
    for i in range(k):
        st.ack(1, 6)  # repeated: the common case between new acks
    return gc.mem_alloc() - before

print(repr(('within', appends(60))))     # 61 x 64 bytes < 4096: one segment
print(repr(('across', appends(640))))    # 10 more segments opened
st.ack(1, 6)                # the first ack writes the pointer
print(repr(('repeat_ack', acks(10))))
""")
    rows = dict(run.rows)
    assert rows["within"] == 0
    assert rows["across"] <= 10 * 1024  # only segment starts allocate: a name and a file
    assert rows["repeat_ack"] == 0
