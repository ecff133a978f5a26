"""Replay protection: per board, (boot, seq) must move forward, within a window.

Store-and-forward re-sends old frames after an outage, interleaved with live ones, so a plain
"seq must increase" rule would reject real data. Instead each boot keeps the set of seqs seen
(as merged intervals: in-order traffic stays one interval) and accepts an unseen seq that is
no more than `window` behind the highest; the last `max_boots` boots are tracked, so frames
stored before a reboot still arrive. Older seqs, older boots and seen seqs are replays.

A batch frame spans several seqs, and a sender that re-frames its backlog can send one that
only partly overlaps what was seen: `check` says which of its seqs are new, so that the host
stores and evaluates each sample once.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from .errors import DuplicateFrame, ReplayedFrame

DEFAULT_WINDOW = 1 << 20  # seqs; ~12 days of 1 Hz samples
DEFAULT_MAX_BOOTS = 8


@dataclass(slots=True)
class SeenSeqs:
    """Disjoint, sorted, half-open intervals [start, end) of seqs seen in one boot."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    @property
    def highest(self) -> int:
        return self.ends[-1] - 1 if self.ends else -1

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) not seen, in order."""
        out = []
        i = max(bisect_right(self.starts, lo) - 1, 0)
        while i < len(self.starts) and self.starts[i] < hi:
            if self.ends[i] > lo:
                if self.starts[i] > lo:
                    out.append((lo, self.starts[i]))
                lo = self.ends[i]
            i += 1
        if lo < hi:
            out.append((lo, hi))
        return out

    def add(self, lo: int, hi: int) -> bool:
        """Add [lo, hi); True if that only moved the newest interval's end (or nothing)."""
        if self.ends and self.starts[-1] <= lo <= self.ends[-1]:  # in order: nearly always
            if hi > self.ends[-1]:
                self.ends[-1] = hi
            return True
        i = bisect_right(self.starts, lo) - 1
        if i >= 0 and self.ends[i] >= lo:  # touches or overlaps the interval before
            lo = self.starts[i]
        else:
            i += 1
        j = i
        while j < len(self.starts) and self.starts[j] <= hi:  # swallow what it reaches
            hi = max(hi, self.ends[j])
            j += 1
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]
        return False

    def forget_below(self, floor: int) -> bool:
        """Forget the intervals wholly at or below floor; True if there were any."""
        if not self.ends or self.ends[0] > floor:
            return False
        while self.ends and self.ends[0] <= floor:
            del self.starts[0], self.ends[0]
        return True


class ReplayWindow:
    def __init__(self, window: int = DEFAULT_WINDOW, max_boots: int = DEFAULT_MAX_BOOTS) -> None:
        if window < 1 or max_boots < 1:
            raise ValueError("window and max_boots must be positive")
        self.window = window
        self.max_boots = max_boots
        self._boards: dict[int, dict[int, SeenSeqs]] = {}

    def check(self, board_id: int, boot: int, seq: int, span: int = 1
              ) -> list[tuple[int, int]]:
        """The new seqs of [seq, seq+span) of this boot, as half-open intervals (the whole
        span unless it overlaps seqs seen; none below the window). No update. Raises
        DuplicateFrame when none is new, ReplayedFrame when the frame is outside the window
        or its boot older than the boots tracked."""
        whole = [(seq, seq + span)]
        boots = self._boards.get(board_id)
        if not boots:
            return whole
        seen = boots.get(boot)
        if seen is None:
            if len(boots) >= self.max_boots and boot < min(boots):
                raise ReplayedFrame(f"board {board_id}: boot {boot} is older than the "
                                    f"{self.max_boots} boots tracked (newest {max(boots)})")
            return whole
        if seq > seen.highest:  # in-order traffic: nothing to look up
            return whole
        floor = seen.highest - self.window  # seqs at or below it are forgotten: replays
        if seq + span - 1 <= floor:
            raise ReplayedFrame(f"board {board_id} boot {boot}: seq {seq} is more than "
                                f"{self.window} behind the newest seq {seen.highest}")
        new = seen.missing(max(seq, floor + 1), seq + span)
        if not new:
            raise DuplicateFrame(f"board {board_id} boot {boot}: seq {seq} was already received")
        return new

    def accept(self, board_id: int, boot: int, seq: int, span: int = 1) -> bool:
        """Record seqs [seq, seq+span) as received (call after the frame is verified). True
        if only the end of the boot's newest interval moved (in-order traffic): its other
        intervals, and so the holes between them, are as they were."""
        boots = self._boards.setdefault(board_id, {})
        seen = boots.get(boot)
        if seen is None:
            seen = boots[boot] = SeenSeqs()
            while len(boots) > self.max_boots:
                del boots[min(boots)]
        extended = seen.add(seq, seq + span)
        return not seen.forget_below(seen.highest - self.window) and extended

    def newest(self, board_id: int, boot: int) -> tuple[int, int] | None:
        """The boot's newest interval of seqs seen, [lo, hi)."""
        seen = self._boards.get(board_id, {}).get(boot)
        return (seen.starts[-1], seen.ends[-1]) if seen and seen.ends else None

    # -- state, for a host that must remember across restarts what it has stored --------------

    def boots(self, board_id: int) -> list[int]:
        return sorted(self._boards.get(board_id, {}))

    def board_ids(self) -> list[int]:
        return sorted(self._boards)

    def intervals(self, board_id: int, boot: int) -> list[tuple[int, int]]:
        """Seqs seen in one boot as sorted half-open intervals [lo, hi)."""
        seen = self._boards.get(board_id, {}).get(boot)
        return list(zip(seen.starts, seen.ends, strict=True)) if seen else []

    def restore(self, board_id: int, boot: int, intervals: list[tuple[int, int]]) -> None:
        for lo, hi in intervals:
            self.accept(board_id, boot, lo, hi - lo)
