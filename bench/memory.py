"""memory: the daemon's resident memory with 1 000 boards of 96 cells streaming.

The daemon as a process (`packsentry daemon --config`, MQTT source, default settings) behind
a private Mosquitto; 1 000 boards (96 cells, 8 probes, NMC) publish their births, then
samples at 1 Hz each (1 000 frames/s in all, from 2 publisher processes, QoS 1) for
`STREAM_S` seconds. VmRSS is read from /proc/PID/status every 0.25 s; VmHWM (the kernel's
peak) at the end, before the daemon stops. Figures: the peak (VmHWM), and VmRSS idle (after
start), after the births, and at the end of the stream. Every sample must be stored.
"""

from __future__ import annotations

import threading
import time

from bench import live
from bench.harness import Context, Figure, Target

MB = 1 << 20
STREAM_S = 30


def run(ctx: Context) -> list[Figure]:
    n_boards, stream_s = (20, 3) if ctx.smoke else (1000, STREAM_S)
    site = "mem"
    fleet = live.Fleet(n_boards, live.Shape(96, 8), first_id=0x70000)
    broker = live.start_broker(ctx.scratch / "memory-broker")
    d = live.DaemonProc(ctx.scratch, "memory", live.mqtt_config(broker.port, "bench-mem", site))
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        d.start()
        d.wait_log("connected to")
        time.sleep(0.5)
        idle, _ = d.rss()

        def sample_rss() -> None:
            while not stop.is_set():
                try:
                    samples.append((time.perf_counter(), d.rss()[0]))
                except (OSError, AssertionError):
                    return
                stop.wait(0.25)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        live.publish(broker.port, site, fleet, 1, 0)  # the births
        live.wait_births(d, n_boards, 120, poll_s=0.2)
        after_births, _ = d.rss()
        pub = live.publish(broker.port, site, fleet, 1, stream_s, births=False,
                           rate_hz=n_boards / 2)
        expected = pub["samples"]
        stored, _ = live.wait_count(d, expected, timeout_s=60)
        end_rss, hwm = d.rss()
        stop.set()
        sampler.join(2)
        rejected = live.count_rejected(d)
        d.stop()
    finally:
        stop.set()
        d.close()
        broker.stop()
    peak_sampled = max((r for _, r in samples), default=0)
    lost = live.lost(stored, expected, rejected)
    note = (f"{n_boards} boards x 96 cells ({n_boards * 96} estimator units), births then "
            f"{stream_s} s at 1 Hz each ({pub['messages'] / pub['seconds']:.0f} frames/s "
            f"achieved); VmHWM at the end; highest VmRSS seen {peak_sampled / MB:.0f} MB; "
            f"{stored} of {expected} samples stored")
    t0 = samples[0][0] if samples else 0.0
    details = {"rss_mb": [(round(t - t0, 2), round(r / MB, 1)) for t, r in samples[::4]]}
    return [
        Figure("peak RSS (VmHWM), 1 000 boards x 96 cells streaming" if not ctx.smoke else
               f"peak RSS (VmHWM), {n_boards} boards x 96 cells streaming", hwm / MB, "MB",
               target=Target("<=", 500.0, of="value", unit="MB"), note=note, details=details,
               failed=lost),
        Figure("RSS idle (started, connected)", idle / MB, "MB"),
        Figure("RSS after the births", after_births / MB, "MB"),
        Figure("RSS at the end of the stream", end_rss / MB, "MB"),
    ]
