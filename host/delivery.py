"""What each board has delivered: committed seqs, the gaps between them, and the ack point.

A board keeps every sample, batch and alarm frame in flash until the host acknowledges it,
and the acknowledgement is cumulative: `ack(boot, seq)` releases every stored frame whose key
(boot, seq) is <= that one, older boots included. So the host may only acknowledge up to a
key below which it holds every frame the board stored. It cannot see which missing seqs were
stored (a status frame or command ack also takes a seq and is never re-sent), so a gap is
handled in time:

- a gap opens when a seq arrives past a hole (or a boot is first seen past seq 0); the
  daemon then asks the board to re-send (a `rebirth` command: birth, then every unacked frame);
- a gap that has not shrunk for `settle_ms` after that request is given up: what is still
  missing was never stored or is lost (counted, and recorded in the `gaps` table);
- the end of an older boot is treated as a gap opened when the next boot was first seen, so a
  frame stored just before a reboot is not released before its re-send can arrive.

The ack point is the highest committed key with no unsettled gap at or below it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from packsentry.protocol.errors import DuplicateFrame
from packsentry.protocol.replay import DEFAULT_WINDOW, ReplayWindow


@dataclass
class Gap:
    lo: int  # first missing seq
    hi: int  # one past the last missing seq (None-like 2**32 for an older boot's tail)
    detected_ms: int
    progress_ms: int  # last time it opened or shrank


TAIL = 1 << 32  # hi of an older boot's open-ended tail


@dataclass
class GapChange:
    board_id: int
    boot: int
    gap: Gap
    outcome: str  # "opened" | "filled" | "lost"


class Delivery:
    def __init__(self, settle_ms: int, window: int = DEFAULT_WINDOW) -> None:
        self.settle_ms = settle_ms
        self.window = ReplayWindow(window)
        self.gaps: dict[tuple[int, int], list[Gap]] = {}  # (board, boot) -> open gaps
        self.boot_seen_ms: dict[tuple[int, int], int] = {}
        self.lost: dict[tuple[int, int], list[tuple[int, int]]] = {}  # given-up ranges
        self.requested_ms: dict[int, int] = {}  # board -> last re-send request
        self.reshaped: set[tuple[int, int]] = set()  # see take_reshaped
        self.duplicates = 0
        self.reordered = 0

    def restore(self, board_id: int, boot: int, intervals: list[tuple[int, int]],
                now_ms: int) -> None:
        """Committed intervals from storage, after a restart: every hole counts as new."""
        self.window.restore(board_id, boot, intervals)
        self.boot_seen_ms[board_id, boot] = now_ms
        self._regap(board_id, boot, now_ms)

    def check(self, board_id: int, boot: int, seq: int, span: int) -> list[tuple[int, int]]:
        """The seqs of [seq, seq+span) not committed yet, as half-open intervals; none for a
        duplicate (it is stored: acknowledge it again). Raises ReplayedFrame for seqs outside
        the window."""
        try:
            return self.window.check(board_id, boot, seq, span)
        except DuplicateFrame:
            self.duplicates += 1
            return []

    def commit(self, board_id: int, boot: int, seq: int, span: int,
               now_ms: int) -> list[GapChange]:
        """Record committed seqs; return the gaps this opened, shrank to nothing or filled."""
        key = (board_id, boot)
        if key not in self.boot_seen_ms:
            self.boot_seen_ms[key] = now_ms
        newest = self.window.newest(board_id, boot)
        if newest is not None and seq + span < newest[1]:
            self.reordered += 1
        if self.window.accept(board_id, boot, seq, span) and newest is not None:
            # only the newest interval's end moved (in-order traffic, nearly always): the
            # holes, and so the gaps, are as they were
            return []
        self.reshaped.add(key)
        return self._regap(board_id, boot, now_ms)

    def take_reshaped(self) -> set[tuple[int, int]]:
        """The (board, boot)s whose intervals changed in more than the newest one's end since
        the last call (the others' stored intervals need only that end moved)."""
        out, self.reshaped = self.reshaped, set()
        return out

    def _regap(self, board_id: int, boot: int, now_ms: int) -> list[GapChange]:
        key = (board_id, boot)
        ivs = self.window.intervals(board_id, boot)
        holes = []
        if ivs and ivs[0][0] > 0:
            holes.append((0, ivs[0][0]))
        holes += [(a[1], b[0]) for a, b in itertools.pairwise(ivs)]
        lost = self.lost.get(key, ())
        holes = [(lo, hi) for lo, hi in holes  # a given-up range stays given up
                 if not any(a <= lo and hi <= b for a, b in lost)]
        old = self.gaps.get(key, [])
        changes: list[GapChange] = []
        new: list[Gap] = []
        for lo, hi in holes:
            prev = next((g for g in old if g.lo < hi and lo < g.hi), None)
            if prev is None:
                g = Gap(lo, hi, now_ms, now_ms)
                changes.append(GapChange(board_id, boot, g, "opened"))
            else:
                shrank = (lo, hi) != (prev.lo, prev.hi)
                g = Gap(lo, hi, prev.detected_ms, now_ms if shrank else prev.progress_ms)
            new.append(g)
        for g in old:
            if not any(n.lo < g.hi and g.lo < n.hi for n in new):
                changes.append(GapChange(board_id, boot, g, "filled"))
        if new:
            self.gaps[key] = new
        else:
            self.gaps.pop(key, None)
        return changes

    def note_request(self, board_id: int, now_ms: int) -> None:
        """The board was asked to re-send what it has not had acknowledged."""
        self.requested_ms[board_id] = now_ms

    def gapped_boards(self) -> set[int]:
        """The boards with an open gap (only they can need a re-send request)."""
        return {board for board, _ in self.gaps}

    def needs_request(self, board_id: int) -> bool:
        """A gap opened after the last re-send request (or there was none)."""
        asked = self.requested_ms.get(board_id, -1)
        return any(g.detected_ms > asked for k, gaps in self.gaps.items() if k[0] == board_id
                   for g in gaps)

    def settle(self, now_ms: int) -> list[GapChange]:
        """Give up gaps that made no progress for settle_ms after a re-send request: what is
        missing was never stored by the board (status, command acks) or is lost."""
        out: list[GapChange] = []
        for key, gaps in list(self.gaps.items()):
            asked = self.requested_ms.get(key[0], -1)
            keep = []
            for g in gaps:
                if asked >= g.detected_ms and \
                        now_ms - max(g.progress_ms, asked) >= self.settle_ms:
                    out.append(GapChange(key[0], key[1], g, "lost"))
                    self.lost.setdefault(key, []).append((g.lo, g.hi))
                else:
                    keep.append(g)
            self.gaps[key] = keep
            if not keep:
                del self.gaps[key]
        return out

    def unsettled(self, board_id: int) -> bool:
        return any(k[0] == board_id and gaps for k, gaps in self.gaps.items())

    def ack_point(self, board_id: int, now_ms: int) -> tuple[int, int] | None:
        """The highest (boot, seq) the board may release, or None if nothing yet."""
        boots = self.window.boots(board_id)
        point = None
        for i, boot in enumerate(boots):
            ivs = self.window.intervals(board_id, boot)
            if not ivs:
                continue
            gaps = self.gaps.get((board_id, boot), [])
            # holes are between intervals, so the first unsettled hole ends the acked run
            first_gap = min((g.lo for g in gaps), default=None)
            top = ivs[-1][1] - 1 if first_gap is None else first_gap - 1
            if top >= 0 and (first_gap is None or first_gap > 0):
                point = (boot, top)
            if first_gap is not None:
                return point
            if i + 1 < len(boots):  # an older boot's unseen tail: wait for its re-send
                next_seen = self.boot_seen_ms.get((board_id, boots[i + 1]), now_ms)
                if now_ms - next_seen < self.settle_ms:
                    return point
        return point
