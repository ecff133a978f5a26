"""Pieces of the MicroPython scripts that run the firmware in the VM for the tests and the
benchmarks: importing it, a 4-cell board's sensor inputs, a UART that costs nothing, and the
heap measurement of a sampling tick (tests/test_firmware_app.py asserts it, bench/firmware.py
reports it: the same script).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .wiring import BQ_TRIM

REPO = Path(__file__).resolve().parent.parent
# what run_micropython(..., dirs=VM_DIRS) mounts: the firmware and the machine stand-in
VM_DIRS = {"/firmware": REPO / "firmware", "/vboard": REPO / "hil" / "vboard"}

MODULES = ("wire", "limits", "config", "intmath", "ntc", "analog", "crc32", "cobs", "frames",
           "safety", "ring", "sampler", "insulation", "commands", "clock", "persist", "signer",
           "store", "app")

# Compiling the firmware from source takes more heap than the board's 128 KiB holds at once
# (the board runs precompiled .mpy), and this VM only collects garbage at a real sleep: so
# import module by module, yielding in between.
IMPORTS = f"""
import asyncio, gc, json, os, struct, time
import machine
for _name in {MODULES!r}:
    __import__(_name)
    await asyncio.sleep_ms(2)
import app, config
"""

# the cell monitor's registers (BQ769x0): 4 cells of 3.7 V (14-bit ADC counts), system OK
BQ_REGS = BQ_TRIM | {
    0x0C + 2 * i: (9343 >> 8) for i in range(4)} | {0x0D + 2 * i: 9343 & 0xFF for i in range(4)}

NULL_UART = """
class Wire:  # a UART that costs nothing itself, so only the firmware is measured
    def __init__(self):
        self.bytes = 0
    def write(self, buf, off=0, sz=None):
        self.bytes += sz
        return sz
    def any(self):
        return 0
"""


def ntc_uv(t_c: float) -> int:
    """The ADC input of a 10 kOhm B3950 NTC at t_c under a 10 kOhm pull-up from 3.3 V."""
    r = 10_000 * math.exp(3950 * (1 / (t_c + 273.15) - 1 / 298.15))
    return int(3_300_000 * r / (10_000 + r))


def inputs(t1_c: float = 25, t2_c: float = 26) -> str:
    """The stand-in's sensors: a 15 V pack (10:1 divider), two NTCs, the 4-cell monitor."""
    return f"""
machine.inputs['adc_uv'].update({{36: 1_500_000, 39: 1_650_000, 32: {ntc_uv(t1_c)},
                                  33: {ntc_uv(t2_c)}, 34: 1_000_000, 35: 1_000_000}})
machine.inputs['i2c'][0x08] = {BQ_REGS!r}
"""


def heap_script(config: dict[str, Any], ticks: int, persist: bool) -> str:
    """Prints JSON {allocated, samples, bytes}: the heap the board's sampling tick allocates
    over `ticks` ticks in steady state (after 50 warm-up ticks), on a UART that costs
    nothing, with or without the flash store."""
    return IMPORTS + "os.mkdir('/flash')\n" + inputs() + NULL_UART + f"""
uart = Wire()
board = app.Board(config.parse({json.dumps(config)!r}), machine, app.SerialLink(uart, 2048),
                  root='/flash/', persist_frames={persist!r})
board.clock.sync(1_764_000_000_000)
def run(start, n):
    for i in range(start, start + n):
        board.tick(i * 100)
run(0, 50)
await asyncio.sleep_ms(5)
seq0 = board.seq
gc.collect()
before = gc.mem_alloc()
run(50, {ticks})
allocated = gc.mem_alloc() - before
print(json.dumps({{"allocated": allocated, "samples": board.seq - seq0, "bytes": uart.bytes}}))
"""
