"""ingest: sustained samples/s from publisher processes through a real Mosquitto into the real
daemon (verification, estimation, alarms, SQLite on), against two subscribers in the same run.

The fleet: 96-cell NMC packs (8 probes), frames from protocol/codec.py as 1 Hz boards make
them, published by 2 publisher processes (QoS 1, as the firmware does; births retained).

Method (the same for the daemon and the baselines, all on the same messages):
1. Every consumer's persistent MQTT session exists (subscribed, QoS 1) while it is offline.
2. The publishers publish a round of messages; the broker queues a copy for every session.
   Publishing happens while no consumer runs, so the consumers do not share the 2 cores with
   the publishers (on a gateway the boards are elsewhere; the broker is there and runs).
3. The consumers drain their queue one after the other (the order rotating each round): the
   daemon as a process (`packsentry daemon --config`, its default batch and storage
   settings: synchronous = full, its receive_maximum); baseline (a) a do-nothing paho
   subscriber that counts; (b) a naive subscriber (paho on_message -> compiled construct
   parse -> SQLite insert, a commit every 1 000 frames, WAL + synchronous FULL like the
   daemon). Both baselines connect like the daemon (MQTT v5, the daemon's default Receive Maximum).
4. Sustained rate = the samples done after the first one, over the time from the first to
   the last: for the daemon, samples *committed* (polled every 0.1 s from its database; it
   commits a micro-batch at a time), so its start, the connect and the first micro-batch are
   outside the window; for the baselines, the messages they handled (the naive one: parsed
   and inserted), from the times they record. The figure is the median over the rounds.
5. No sample lost: after the run the daemon's `samples` table must hold every sample sent
   (and `rejected` nothing); otherwise the figure fails.

The batch phase is the same with batch frames of 10 samples (a 10 s batch of a 1 Hz board),
drained by a fresh daemon; its target is against (a)'s one-sample-per-message rate.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import live
from bench.harness import Context, Figure, Target

BATCH = 10
# samples per board and round in the batch phase: 360 000 in all, ~3 s of draining. With a
# third of that the drain took ~0.9 s, read in polls of 0.1 s, and the first two micro-batches
# (Receive Maximum's worth) were received before the window opened
BATCH_SAMPLES = 3600


def _daemon_drain(d: live.DaemonProc, fleet: live.Fleet, seq0: int,
                  n_samples: int) -> dict[str, Any]:
    expected = n_samples * len(fleet.ids)
    t0 = time.perf_counter()
    d.start()
    last_board = fleet.split(2)[-1].ids[-1]  # the last board of the last publisher
    tl = live.commit_timeline(d, last_board, fleet.boot, seq0, len(fleet.ids), expected)
    wall = tl[-1][0] - t0
    rate, window = live.timeline_rate(tl, expected, t0)
    # the watched board is one of many: the exact count, once the last ones are in
    got, _ = live.wait_count(d, expected, where="WHERE seq >= ? AND seq < ?",
                             args=(seq0, seq0 + n_samples))
    d.stop()
    return {"rate": rate, "window_s": window, "wall_s": wall, "stored": got,
            "expected": expected}


def _sub_drain(s: live.Subscriber, messages: int, per_msg: int) -> dict[str, Any]:
    r = s.start(messages).result()
    rate, window = live.arrival_rate(r["times"])
    return {"rate": rate * per_msg, "window_s": window, "messages": len(r["times"]),
            "stored": r["samples"]}


def run(ctx: Context) -> list[Figure]:
    if ctx.smoke:
        n_boards, n_samples, rounds, n_batch = 10, 30, 1, 60
    else:
        n_boards, n_samples, rounds, n_batch = 100, 400, 2, BATCH_SAMPLES
    fleet = live.Fleet(n_boards)
    broker = live.start_broker(ctx.scratch / "ingest-broker")
    port = broker.port
    daemons: list[live.DaemonProc] = []
    try:
        # -- one sample per message ----------------------------------------------------------
        d = live.DaemonProc(ctx.scratch, "ingest-single",
                            live.mqtt_config(port, "bench-ingest-single", "single"))
        daemons.append(d)
        d.subscribe_offline()  # creates the database and the MQTT session
        a = live.Subscriber(port, "bench-count", "single", "count", ctx.scratch / "count.db")
        b = live.Subscriber(port, "bench-naive", "single", "naive", ctx.scratch / "naive.db")
        a.prepare()
        b.prepare()
        res: dict[str, list[dict[str, Any]]] = {"daemon": [], "count": [], "naive": []}
        pubs = []
        seq = 1
        for r in range(rounds):
            pub = live.publish(port, "single", fleet, seq, n_samples, births=r == 0)
            pubs.append(pub)
            ctx.log(f"ingest: round {r + 1}: {pub['messages']} messages published in "
                    f"{pub['seconds']:.1f} s")
            order = ["daemon", "count", "naive"]
            order = order[r % 3:] + order[:r % 3]
            for who in order:
                if who == "daemon":
                    res[who].append(_daemon_drain(d, fleet, seq, n_samples))
                else:
                    res[who].append(_sub_drain(a if who == "count" else b, pub["messages"], 1))
                ctx.log(f"ingest: {who}: {res[who][-1]['rate']:.0f} samples/s")
            seq += n_samples
        sent = sum(p["samples"] for p in pubs)
        stored = live.count_samples(d)
        rejected = live.count_rejected(d)
        naive_stored = sum(x["stored"] for x in res["naive"])

        # -- batch frames ----------------------------------------------------------------------
        db = live.DaemonProc(ctx.scratch, "ingest-batch",
                             live.mqtt_config(port, "bench-ingest-batch", "batch"))
        daemons.append(db)
        db.subscribe_offline()
        ab = live.Subscriber(port, "bench-count-b", "batch", "count", ctx.scratch / "cb.db")
        ab.prepare()
        bres: dict[str, list[dict[str, Any]]] = {"daemon": [], "count": []}
        bpubs = []
        seq = 1
        for r in range(rounds):
            pub = live.publish(port, "batch", fleet, seq, n_batch, per_msg=BATCH,
                               births=r == 0)
            bpubs.append(pub)
            for who in (["daemon", "count"] if r % 2 == 0 else ["count", "daemon"]):
                if who == "daemon":
                    bres[who].append(_daemon_drain(db, fleet, seq, n_batch))
                else:
                    bres[who].append(_sub_drain(ab, pub["messages"], BATCH))
                ctx.log(f"ingest: batch {who}: {bres[who][-1]['rate']:.0f} samples/s")
            seq += n_batch
        bsent = sum(p["samples"] for p in bpubs)
        bstored = live.count_samples(db)
        brejected = live.count_rejected(db)
    finally:
        for x in daemons:
            x.close()
        broker.stop()

    def med(xs: list[dict[str, Any]]) -> float:
        return statistics.median(x["rate"] for x in xs)

    def runs(xs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()}
                for x in xs]

    lost = live.lost(stored, sent, rejected)
    blost = live.lost(bstored, bsent, brejected)
    daemon_rate, count_rate, naive_rate = med(res["daemon"]), med(res["count"]), med(res["naive"])
    shape = f"{n_boards} boards of 96 cells"
    common = (f"{shape}, {n_samples} samples each per round, {rounds} round(s); queued at the "
              f"broker, then drained by each consumer in turn; samples committed from the first "
              f"commit to the last / that time, median of rounds; "
              f"{stored} of {sent} samples stored, {rejected} rejected")
    details = {"daemon": runs(res["daemon"]), "count": runs(res["count"]),
               "naive": runs(res["naive"]), "published": pubs}
    figs = [
        Figure("one sample per message", daemon_rate, "samples/s",
               baseline="do-nothing paho subscriber", baseline_value=count_rate,
               target=Target(">=", 0.7), note=common, details=details, failed=lost),
        Figure("one sample per message", daemon_rate, "samples/s",
               baseline="naive subscriber (construct + SQLite)", baseline_value=naive_rate,
               target=Target(">=", 2.0),
               note=f"naive subscriber stored {naive_stored} samples", failed=lost),
        Figure(f"batch frames ({BATCH} samples per message)", med(bres["daemon"]), "samples/s",
               baseline="do-nothing paho subscriber, one sample per message",
               baseline_value=count_rate, target=Target(">=", 5.0),
               note=f"{shape}, {n_batch} samples each per round in {BATCH}-sample batch frames; "
                    f"{bstored} of {bsent} samples stored, {brejected} rejected",
               details={"daemon": runs(bres["daemon"]), "count": runs(bres["count"]),
                        "published": bpubs}, failed=blost),
        Figure(f"do-nothing paho subscriber, batch frames ({BATCH} per message)",
               med(bres["count"]), "samples/s",
               note=f"the client library's own limit on these messages: "
                    f"{med(bres['count']) / BATCH:.0f} messages/s"),
    ]
    return figs
