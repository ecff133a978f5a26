from __future__ import annotations

import pytest

from packsentry.protocol.errors import ReplayedFrame
from packsentry.protocol.replay import ReplayWindow


def take(w: ReplayWindow, board: int, boot: int, seq: int, span: int = 1) -> None:
    w.check(board, boot, seq, span)
    w.accept(board, boot, seq, span)


def test_in_order_and_late_frames_within_window() -> None:
    w = ReplayWindow(window=100)
    for s in range(50):
        take(w, 1, 1, s)
    take(w, 1, 1, 80)  # a gap: 50..79 may still arrive (store-and-forward)
    take(w, 1, 1, 60)
    with pytest.raises(ReplayedFrame, match="already received"):
        w.check(1, 1, 60)
    with pytest.raises(ReplayedFrame, match="already received"):
        w.check(1, 1, 10)
    take(w, 1, 1, 300)
    with pytest.raises(ReplayedFrame, match="more than 100 behind"):
        w.check(1, 1, 70)


def test_boots_move_forward_and_recent_boots_stay_open() -> None:
    w = ReplayWindow(max_boots=2)
    take(w, 1, 5, 0)
    take(w, 1, 6, 0)
    take(w, 1, 5, 1)  # stored before the reboot, sent after it
    take(w, 1, 7, 0)  # boot 5 falls out of the tracked boots
    with pytest.raises(ReplayedFrame, match="boot 5 is older"):
        w.check(1, 5, 2)
    take(w, 2, 1, 0)  # boards are independent


def test_batch_span() -> None:
    w = ReplayWindow()
    take(w, 1, 1, 10, span=5)
    with pytest.raises(ReplayedFrame):
        w.check(1, 1, 10, span=5)
    with pytest.raises(ReplayedFrame):
        w.check(1, 1, 12)
    assert w.check(1, 1, 12, span=6) == [(15, 18)]  # overlaps: only 15..17 are new
    take(w, 1, 1, 12, span=6)
    take(w, 1, 1, 30, span=5)
    assert w.check(1, 1, 16, span=20) == [(18, 30), (35, 36)]  # around what was seen
    assert w.check(1, 1, 40, span=3) == [(40, 43)]


def test_a_batch_reaching_below_the_window_is_new_only_above_it() -> None:
    w = ReplayWindow(window=100)
    take(w, 1, 1, 0, span=50)
    take(w, 1, 1, 200)  # 0..49 are now forgotten: more than 100 behind
    assert w.check(1, 1, 90, span=20) == [(101, 110)]
    with pytest.raises(ReplayedFrame, match="more than 100 behind"):
        w.check(1, 1, 90, span=11)


def test_intervals_merge() -> None:
    w = ReplayWindow()
    for s in [5, 3, 4, 1, 2, 0, 9, 7, 8, 6]:
        take(w, 1, 1, s)
    seen = w._boards[1][1]
    assert (seen.starts, seen.ends) == ([0], [10])
