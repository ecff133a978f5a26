"""firmware: the board program in the MicroPython VM (hil/mpvm.py), as the board runs it.

The firmware is compiled with mpy-cross (host/firmware_build.py, MicroPython 1.27's .mpy) and
the VM imports those .mpy files, like the board. Three figures:

- heap bytes allocated per sample in steady state: the whole sampling tick (sensors through
  the virtual board's `machine`, local safety, pre-event ring, sample frame, COBS, the link
  write) N times after a warm-up, gc.mem_alloc() before and after, divided by the samples
  sent (the approach of tests/test_firmware_app.py). Target 0.
- frame encode time relative to one `struct.pack_into` of the same frame layout (header,
  fields, arrays and CRC as one format string, values from a prebuilt tuple) in the same VM:
  what the firmware's FrameWriter.sample costs over the cheapest possible packing of the
  same bytes (its CRC-32 is computed in Python, byte by byte, to allocate nothing). Timed with
  the VM's performance.now(), loops of thousands, encode and pack interleaved, medians.
- total .mpy size of the build.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.harness import Context, Figure, Target
from packsentry.hil import firmware_script
from packsentry.hil.firmware_script import IMPORTS
from packsentry.hil.mpvm import GC_PAUSE_MS, run_micropython

# A 4-cell board with two NTCs, as tests/test_firmware_app.py configures the virtual board
CONFIG = {"board_id": 0x00C0FFEE, "chemistry": "nmc", "cells_series": 4, "n_cells": 4,
          "max_pack_mv": 16_800, "sample_period_ms": 100, "riso_settle_ms": 0,
          "riso_period_ms": 1_000, "pins": {"ntc": [32, 33]},
          "pack_divider_ratio_c": 1_000}


def _imports() -> str:
    return IMPORTS + "import js\n"  # js.performance: the VM's clock for the encode timings


def heap_script(ticks: int, persist: bool) -> str:
    return firmware_script.heap_script(CONFIG, ticks, persist)


def encode_script(shapes: list[tuple[int, int]], loops: int, rounds: int) -> str:
    return _imports() + f"""
import frames, wire, crc32
out = {{}}
for n_probes, n_cells in {shapes!r}:
    w = frames.FrameWriter(0x00C0FFEE, 3, n_probes, n_cells)
    w.set_ts_ms(1_764_000_000_000)
    temps = [250 + i for i in range(n_probes)]
    cells = [3700 + i for i in range(n_cells)]
    n = w.sample(1, 4, 59200, -12500, 4444, 3220, 0, 0, temps, cells)
    fmt = wire.HEADER_FMT + wire.SAMPLE_FMT[1:] + '%dh%dHI' % (n_probes, n_cells)
    assert struct.calcsize(fmt) == n
    vals = tuple(struct.unpack_from(fmt, w.buf, 0))
    buf = bytearray(n)
    t_enc, t_pack, t_crc = [], [], []
    for r in range({rounds}):
        t0 = js.performance.now()
        for i in range({loops}):
            w.sample(i, 4, 59200, -12500, 4444, 3220, 0, 0, temps, cells)
        t1 = js.performance.now()
        for i in range({loops}):
            struct.pack_into(fmt, buf, 0, *vals)
        t2 = js.performance.now()
        for i in range({loops}):
            crc32.crc32_into(buf, n - 4, buf, n - 4)
        t3 = js.performance.now()
        t_enc.append((t1 - t0) * 1000 / {loops})
        t_pack.append((t2 - t1) * 1000 / {loops})
        t_crc.append((t3 - t2) * 1000 / {loops})
        await asyncio.sleep_ms({GC_PAUSE_MS})  # the VM collects
    out['%d,%d' % (n_probes, n_cells)] = {{'bytes': n, 'encode_us': t_enc, 'pack_us': t_pack,
                                          'crc_us': t_crc}}
print(json.dumps(out))
"""


def _run(script: str, dirs: dict[str, Path], timeout_s: float) -> dict:
    res = run_micropython(script, dirs=dirs, timeout_s=timeout_s).check()
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> list[Figure]:
    from packsentry.host import firmware_build

    build = firmware_build.build(ctx.scratch / "firmware")
    mpy = [f for f in build.files if f.name.endswith(".mpy")]
    mpy_bytes = sum(f.size for f in mpy)
    source_bytes = sum(f.source_size for f in build.files)
    dirs = {"/firmware": build.out, "/vboard": ctx.repo / "hil" / "vboard"}
    ticks = 100 if ctx.smoke else 1_000
    heap = {p: _run(heap_script(ticks, p), dirs, 120) for p in (False, True)}
    shapes = [(4, 16), (8, 96)]
    enc = _run(encode_script(shapes, 20 if ctx.smoke else 400, 2 if ctx.smoke else 5), dirs, 300)

    out = []
    for persist, name, note in (
            (False, "heap per sample, steady state",
             "the whole sampling tick (4 cells, 2 NTCs, serial link), as "
             "tests/test_firmware_app.py measures it"),
            (True, "heap per sample, store-and-forward on",
             "the same with the flash store (persist_frames, the board's default): an append "
             "allocates nothing, but each new ~4 KB segment opens a file (~2 KB of heap, "
             "reclaimed by the GC), amortised over the ~55 frames it holds")):
        h = heap[persist]
        out.append(Figure(
            name, h["allocated"] / max(h["samples"], 1), "B",
            target=None if persist else Target("<=", 0.0, of="value", unit="B"),
            note=f"{h['samples']} samples in {ticks} ticks, .mpy in the VM; {note}",
            details=h))
    for shape, e in enc.items():
        n_cells = shape.split(",")[1]
        enc_us, pack_us = statistics.median(e["encode_us"]), statistics.median(e["pack_us"])
        crc_us = statistics.median(e["crc_us"])
        out.append(Figure(
            f"sample frame encode, {n_cells} cells ({e['bytes']} B)", enc_us, "us",
            baseline="struct.pack_into, same layout", baseline_value=pack_us,
            note=f"ratio = time / struct time; of it the CRC-32 in Python {crc_us:.0f} us",
            details=e))
    out.append(Figure("total .mpy size", mpy_bytes, "B",
                      note=f"{len(mpy)} modules, mpy-cross {build.compiler}; sources "
                           f"{source_bytes:,} B; main.py/boot.py stay source",
                      details={f.name: f.size for f in build.files}))
    return out
