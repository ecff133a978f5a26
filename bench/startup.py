"""startup: the daemon from spawn to ready, numba cache warm and cold.

"Ready" is the daemon's own readiness signal: `READY=1` on `NOTIFY_SOCKET` (systemd's
Type=notify protocol, host/daemon.py `_sd_notify`), sent once the database is open and the
sources are started; the bench binds the datagram socket and times spawn -> datagram. The
config: a fresh database, a private Mosquitto as the MQTT source (alarms to MQTT on), and a
trace file of one 96-cell pack (a birth and 20 samples) as a second source, so the time to
the first sample *stored* is measured too (polled from the database every 10 ms): that one
includes the estimator's first call, where numba loads (warm) or compiles (cold) its kernels.

Warm: NUMBA_CACHE_DIR primed by one untimed run that stored samples. Cold: a new, empty
NUMBA_CACHE_DIR for each run. The runs alternate (warm, cold, warm, warm, cold, ...); medians.
"""

from __future__ import annotations

import statistics
import time

from bench import live
from bench.harness import Context, Figure, Target


def _trace(path: str) -> None:
    from packsentry.host.trace_file import TraceWriter

    fleet = live.Fleet(1, live.Shape(96, 8), first_id=0x60000)
    w = TraceWriter(path)
    b = fleet.ids[0]
    w.append(fleet.ts0_ms, "lab", fleet.birth(b))
    for _, frame, _ in fleet.frames(1, 20):
        w.append(fleet.ts0_ms + 1000, "lab", frame)
    w.close()


def _once(ctx: Context, name: str, port: int, trace: str, numba_dir: str) -> dict[str, float]:
    d = live.DaemonProc(ctx.scratch, name,
                        live.mqtt_config(port, f"bench-{name}", "start")
                        + f'\n[[trace]]\npath = "{trace}"\n',
                        env={"NUMBA_CACHE_DIR": numba_dir})
    try:
        t0 = time.perf_counter()
        ready = d.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                if live.count_samples(d) > 0:
                    break
            except Exception:  # the table may not be readable in the first moment
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no sample stored within 120 s:\n{d.text()[-2000:]}")
            d.check()
            time.sleep(0.01)
        first = time.perf_counter() - t0
        d.stop()
    finally:
        d.close()
    return {"ready_s": ready, "first_sample_s": first}


def run(ctx: Context) -> list[Figure]:
    order = ["warm", "cold"] if ctx.smoke else ["warm", "cold", "warm", "warm", "cold", "warm",
                                                "warm"]
    broker = live.start_broker(ctx.scratch / "startup-broker")
    trace = str(ctx.scratch / "startup.trace")
    _trace(trace)
    warm_dir = str(ctx.scratch / "numba-warm")
    res: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    try:
        _once(ctx, "startup-prime", broker.port, trace, warm_dir)  # fills the warm cache
        for i, kind in enumerate(order):
            nd = warm_dir if kind == "warm" else str(ctx.scratch / f"numba-cold-{i}")
            res[kind].append(_once(ctx, f"startup-{i}", broker.port, trace, nd))
            ctx.log(f"startup: {kind}: ready {res[kind][-1]['ready_s']:.2f} s, first sample "
                    f"{res[kind][-1]['first_sample_s']:.2f} s")
    finally:
        broker.stop()

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in res[kind])

    n_w, n_c = len(res["warm"]), len(res["cold"])
    details = {k: [{a: round(b, 3) for a, b in r.items()} for r in v] for k, v in res.items()}
    return [
        Figure("spawn to READY=1, numba cache warm", med("warm", "ready_s"), "s",
               target=Target("<=", 2.0, of="value", unit="s"),
               note=f"median of {n_w}; fresh database, MQTT and a trace file as sources",
               details=details),
        Figure("spawn to READY=1, numba cache cold", med("cold", "ready_s"), "s",
               note=f"median of {n_c}, each with an empty NUMBA_CACHE_DIR"),
        Figure("spawn to first sample stored, warm", med("warm", "first_sample_s"), "s",
               note="the estimator's first call loads the cached kernels"),
        Figure("spawn to first sample stored, cold", med("cold", "first_sample_s"), "s",
               note="the estimator's first call compiles its kernels"),
    ]
