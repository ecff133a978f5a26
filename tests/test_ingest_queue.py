"""The bounded queue between the sources and the processor: order, bounds, micro-batches."""

from __future__ import annotations

import threading
import time

from packsentry.host.ingest_queue import IngestQueue
from packsentry.host.pipeline import Inbound


def frames(a: int, b: int) -> list[Inbound]:
    return [Inbound(bytes([i % 256]), i, "test", "lab") for i in range(a, b)]


def test_batches_larger_than_the_queue_arrive_whole_and_in_order() -> None:
    q, stop, full = IngestQueue(7), threading.Event(), []
    producer = threading.Thread(
        daemon=True, target=lambda: [q.put_many(frames(i, i + 25), stop, lambda: full.append(1))
                        for i in range(0, 100, 25)])
    producer.start()
    got: list[int] = []
    while len(got) < 100:
        batch = q.take(5, 0.01)
        assert len(batch) <= 5 and q.qsize() <= 7
        got += [f.rx_ms for f in batch]
    producer.join(5)
    assert got == list(range(100))
    assert full  # it waited for room, and said so


def test_a_stop_releases_a_source_waiting_for_room() -> None:
    q, stop = IngestQueue(2), threading.Event()
    result: list[bool] = []
    t = threading.Thread(daemon=True,
                         target=lambda: result.append(q.put_many(frames(0, 5), stop)))
    t.start()
    time.sleep(0.1)
    assert q.full() and q.oldest_rx_ms() == 0
    stop.set()
    t.join(5)
    assert result == [False] and q.qsize() == 2


def test_take_waits_for_a_micro_batch_and_not_longer() -> None:
    q, stop = IngestQueue(100), threading.Event()
    assert q.take(10, 0.05, first_wait_s=0.01) == []
    q.put_many(frames(0, 3), stop)
    t = time.monotonic()
    assert [f.rx_ms for f in q.take(10, 0.05)] == [0, 1, 2]
    assert time.monotonic() - t >= 0.04  # it gave the batch its time to fill
    threading.Timer(0.02, lambda: q.put_many(frames(3, 13), stop)).start()
    assert [f.rx_ms for f in q.take(10, 1.0)] == list(range(3, 13))
    assert q.oldest_rx_ms() is None


def test_a_batch_larger_than_the_queue_does_not_wait_for_what_cannot_come() -> None:
    """take(n) with n above the queue's size: a full queue is a full batch (the source
    waiting for room can add nothing before it is taken)."""
    q, stop = IngestQueue(10), threading.Event()
    producer = threading.Thread(daemon=True, target=q.put_many, args=(frames(0, 100), stop))
    producer.start()
    while not q.full():
        time.sleep(0.01)
    t = time.monotonic()
    assert [f.rx_ms for f in q.take(20, 30.0)] == list(range(10))
    assert time.monotonic() - t < 15  # not the 30 s wait
    got = []
    while len(got) < 90:
        got += [f.rx_ms for f in q.take(20, 30.0)]
    producer.join(5)
    assert got == list(range(10, 100))
