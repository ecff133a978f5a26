"""serial: frames/s through the daemon's serial path (COBS cut + decode, then the full
pipeline) over a real pseudo-terminal, against the line rate of a 921 600-baud UART.

A writer process (the board side, on the pty's master) streams COBS frames of a fleet of
boards on one line (births first, then samples, board-interleaved, as fast as the pty takes
them: blocking writes, the kernel's flow control); the daemon (`packsentry daemon --config`,
a `[[serial]]` port on the pty's slave, default settings otherwise) reads, verifies, stores,
estimates and evaluates alarms. A thread of the bench reads what the daemon sends back.

Rate: samples *committed*, polled every 0.1 s from the daemon's database, after its first
commit, over the time from that commit to the last (the reader fills the daemon's
20 000-frame queue in the first moment; the processor is what the window measures). Every
sample must be stored.

Baseline: the line rate of a 921 600-baud UART, 8N1 (10 bits a byte: 92 160 bytes/s),
for the same frames: 92 160 / (mean COBS-encoded frame size + its delimiter).
Two frame shapes: a 16-cell pack (4 probes, 92 B on the line) and a 96-cell pack (8 probes,
261 B on the line). Two rounds of each, alternating; the median.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import live
from bench.harness import Context, Figure, Target

LINE_BYTES_S = 921_600 / 10  # 8N1: start + 8 data + stop bits per byte


def run(ctx: Context) -> list[Figure]:
    shapes = {"16 cells": live.Shape(16, 4), "96 cells": live.Shape(96, 8)}
    if ctx.smoke:
        boards, samples, rounds = 4, {"16 cells": 50, "96 cells": 30}, 1
    else:
        boards, samples, rounds = 20, {"16 cells": 2500, "96 cells": 1200}, 2
    fleets = {name: live.Fleet(boards, shape, first_id=0x20000 + 0x1000 * i)
              for i, (name, shape) in enumerate(shapes.items())}
    pty = live.Pty()
    d = live.DaemonProc(ctx.scratch, "serial",
                        f'[[serial]]\nport = "{pty.path}"\nsite = "line"\n')
    res: dict[str, list[dict[str, Any]]] = {n: [] for n in shapes}
    try:
        d.start()
        d.wait_log("open at")
        seq = {n: 1 for n in shapes}
        for r in range(rounds):
            for name in (list(shapes) if r % 2 == 0 else list(shapes)[::-1]):
                fleet = fleets[name]
                n = samples[name]
                expected = n * boards
                t0 = time.perf_counter()
                w = live.SerialWriter(pty.master, fleet, seq[name], n, births=seq[name] == 1)
                last = fleet.ids[-1]
                tl = live.commit_timeline(d, last, fleet.boot, seq[name], boards, expected)
                out = w.result(120)
                rate, window = live.timeline_rate(tl, expected, t0)
                frame_bytes = (out["bytes"] - _births_bytes(fleet, seq[name] == 1)) / \
                    out["frames"]
                stored, _ = live.wait_count(
                    d, expected, where="WHERE board_id >= ? AND board_id <= ? AND seq >= ? "
                    "AND seq < ?", args=(fleet.ids[0], fleet.ids[-1], seq[name], seq[name] + n))
                res[name].append({"rate": rate, "window_s": round(window, 3),
                                  "frames": out["frames"], "stored": stored,
                                  "line_bytes_per_frame": frame_bytes,
                                  "writer_s": round(out["seconds"], 3)})
                ctx.log(f"serial: {name}: {rate:.0f} frames/s, {stored}/{expected} stored")
                seq[name] += n
                time.sleep(0.3)
        rejected = live.count_rejected(d)
        stats = d.stats()
    finally:
        d.close()
        pty.close()
    figs = []
    for name in shapes:
        rs = res[name]
        sent = sum(x["frames"] for x in rs)
        stored = sum(x["stored"] for x in rs)
        per_frame = rs[0]["line_bytes_per_frame"]
        line_rate = LINE_BYTES_S / per_frame
        lost = live.lost(stored, sent, rejected)
        figs.append(Figure(
            f"sample frames, {name} ({per_frame:.0f} B on the line)",
            statistics.median(x["rate"] for x in rs), "frames/s",
            baseline="921 600-baud UART line rate", baseline_value=line_rate,
            target=Target(">=", 10.0),
            note=f"{boards} boards on one pty, {samples[name]} samples each per round, "
                 f"{rounds} round(s); frames committed from the first commit to the "
                 f"last / that time, median; {stored} of {sent} stored, {rejected} rejected",
            details={"runs": rs, "daemon_stats": stats}, failed=lost))
    return figs


def _births_bytes(fleet: live.Fleet, births: bool) -> int:
    if not births:
        return 0
    from packsentry.protocol.stream import encode_stream_frame

    return sum(len(encode_stream_frame(fleet.birth(b))) for b in fleet.ids)
