"""Seq bookkeeping: duplicates, gaps opened/filled/lost, and the cumulative ack point."""

from __future__ import annotations

import pytest

from packsentry.host.delivery import Delivery
from packsentry.protocol.errors import ReplayedFrame

B = 7


def commit(d: Delivery, boot: int, seqs: range | list[int], now: int = 0) -> list[str]:
    out = []
    for s in seqs:
        assert d.check(B, boot, s, 1)
        out += [c.outcome for c in d.commit(B, boot, s, 1, now)]
    return out


def test_in_order_acks_everything() -> None:
    d = Delivery(settle_ms=30_000)
    assert commit(d, 1, range(0, 10)) == []
    assert d.ack_point(B, 0) == (1, 9)
    assert not d.check(B, 1, 5, 1) and d.duplicates == 1


def test_a_gap_holds_the_ack_until_filled() -> None:
    d = Delivery(settle_ms=30_000)
    assert commit(d, 1, [0, 1, 2, 5, 6]) == ["opened"]
    assert d.ack_point(B, 1000) == (1, 2)  # 3 and 4 may still be in the board's store
    assert commit(d, 1, [3, 4], now=2000) == ["filled"]
    assert d.ack_point(B, 2000) == (1, 6) and d.reordered == 2


def test_a_gap_that_makes_no_progress_is_given_up() -> None:
    d = Delivery(settle_ms=30_000)
    commit(d, 1, [0, 1, 4], now=0)
    assert d.needs_request(B)
    assert d.settle(60_000) == []  # never given up before the board was asked to re-send
    d.note_request(B, 0)
    assert not d.needs_request(B)
    commit(d, 1, [2], now=20_000)  # progress: the gap shrank, its clock restarts
    assert d.settle(45_000) == []
    lost = d.settle(50_000)
    assert [(c.outcome, c.gap.lo, c.gap.hi) for c in lost] == [("lost", 3, 4)]
    assert d.ack_point(B, 50_000) == (1, 4)


def test_joining_late_counts_the_missing_start_as_a_gap() -> None:
    d = Delivery(settle_ms=1000)
    assert commit(d, 3, [100, 101]) == ["opened"]
    assert d.ack_point(B, 0) is None
    d.note_request(B, 0)
    d.settle(1000)
    assert d.ack_point(B, 1000) == (3, 101)


def test_a_new_boot_waits_for_the_old_boots_tail() -> None:
    d = Delivery(settle_ms=30_000)
    commit(d, 1, range(0, 5), now=0)
    commit(d, 2, range(0, 3), now=10_000)
    assert d.ack_point(B, 10_000) == (1, 4)  # frames of boot 1 after seq 4 may be re-sent
    commit(d, 1, [5, 6], now=12_000)
    assert d.ack_point(B, 39_999) == (1, 6)
    assert d.ack_point(B, 40_000) == (2, 2)


def test_seqs_outside_the_window_are_replays() -> None:
    d = Delivery(settle_ms=1000, window=100)
    commit(d, 1, [0, 500])
    with pytest.raises(ReplayedFrame):
        d.check(B, 1, 10, 1)


def test_restore_after_a_restart() -> None:
    d = Delivery(settle_ms=1000)
    commit(d, 1, [0, 1, 2, 7])
    e = Delivery(settle_ms=1000)
    e.restore(B, 1, d.window.intervals(B, 1), now_ms=5000)
    assert not e.check(B, 1, 1, 1)
    assert e.ack_point(B, 5000) == (1, 2)
    assert e.gaps[(B, 1)][0].lo == 3


def test_a_given_up_gap_stays_given_up() -> None:
    d = Delivery(settle_ms=1000)
    commit(d, 1, [0, 5], now=0)
    d.note_request(B, 0)
    assert [c.outcome for c in d.settle(1000)] == ["lost"]
    assert commit(d, 1, [6, 7], now=2000) == []  # not re-opened by the next commit
    assert commit(d, 1, [3], now=2500) == []  # a late frame inside it is just stored
    assert d.ack_point(B, 2500) == (1, 7)
