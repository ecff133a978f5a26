"""The bounded queue between the sources and the processor.

Sources hand over what they received, the processor takes micro-batches. A source may hand
over a whole batch under one lock: the MQTT receiver process delivers thousands of messages
at a time, and a `queue.Queue.put` per frame (a lock and a notify each) took a tenth of the
GIL from the processor at 10 000 frames/s. It never grows past `maxsize` frames: a source
that finds it full waits (the caller counts and logs that).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from .pipeline import Inbound


class IngestQueue:
    def __init__(self, maxsize: int) -> None:
        if maxsize <= 0:
            raise ValueError("the ingest queue needs room for at least one frame")
        self.maxsize = maxsize
        self._items: deque[Inbound] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put_many(self, items: Sequence[Inbound], stop: threading.Event,
                 on_full: Callable[[], None] = lambda: None) -> bool:
        """Append in order, waiting for room as needed (on_full() each time it is full).
        False if `stop` was set while waiting: the rest was not queued."""
        i = 0
        with self._lock:
            while i < len(items):
                room = self.maxsize - len(self._items)
                if room <= 0:
                    on_full()
                    while len(self._items) >= self.maxsize:
                        if stop.is_set():
                            return False
                        self._not_full.wait(0.5)
                    continue
                self._items.extend(items[i:i + room])
                i += room
                self._not_empty.notify()
        return True

    def take(self, n: int, wait_s: float, first_wait_s: float = 0.2) -> list[Inbound]:
        """Up to n frames: waits up to first_wait_s for the first, then up to wait_s more
        for the batch to fill (a micro-batch), and returns what is there by then."""
        with self._lock:
            if not self._items:
                self._not_empty.wait(first_wait_s)
                if not self._items:
                    return []
            deadline = time.monotonic() + wait_s
            # (never more than the queue holds: a source waiting for room adds nothing until
            # this batch is taken)
            while len(self._items) < min(n, self.maxsize):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._not_empty.wait(left)
            items = self._items
            out = [items.popleft() for _ in range(min(n, len(items)))]
            self._not_full.notify_all()
            return out

    def oldest_rx_ms(self) -> int | None:
        """The receive time of the oldest frame waiting (None: empty). A peek."""
        try:
            return self._items[0].rx_ms
        except IndexError:
            return None

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def qsize(self) -> int:
        return len(self._items)
