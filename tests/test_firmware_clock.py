"""Board clock and persistent counters, in the MicroPython VM."""

from __future__ import annotations

from pathlib import Path

from packsentry.hil.mpvm import run_micropython

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


def test_clock_counts_from_sync_and_reanchors_without_allocating() -> None:
    out = run_micropython("""
from clock import Clock
import gc
fake = [1000]
c = Clock(lambda: fake[0], lambda a, b: a - b)
ts = bytearray(8)
c.now_into(ts)
print(int.from_bytes(ts, 'little'), c.synced)
c.sync(1_764_000_000_000)
def advance(steps, ms):
    for _ in range(steps):
        fake[0] += ms
        c.now_into(ts)
advance(1, 250)
print(int.from_bytes(ts, 'little'), c.synced)
def measure():
    before = gc.mem_alloc()
    advance(5000, 1000)  # 5000 s: past one re-anchor
    return gc.mem_alloc() - before
print(measure(), int.from_bytes(ts, 'little'))
""", dirs={"/firmware": FIRMWARE}).check().stdout.split()
    assert out[:4] == ["0", "False", str(1_764_000_000_250), "True"]
    assert out[4] == "0"
    assert int(out[5]) == 1_764_000_000_250 + 5_000_000


def test_boot_counter_persists_and_survives_a_torn_update() -> None:
    out = run_micropython("""
import os, persist
os.mkdir('/flash')
print(persist.next_boot('/flash/boot.dat'), persist.next_boot('/flash/boot.dat'))
with open('/flash/boot.dat.tmp', 'w') as f:  # power cut after the temp write, before rename
    f.write('9')
print(persist.next_boot('/flash/boot.dat'))
with open('/flash/boot.dat', 'w') as f:  # a corrupted counter: the backup carries on
    f.write('garbage')
print(persist.next_boot('/flash/boot.dat'))
os.remove('/flash/boot.dat')
os.remove('/flash/boot.dat.bak')  # both lost: start again rather than crash
print(persist.next_boot('/flash/boot.dat'))
""", dirs={"/firmware": FIRMWARE}).check().stdout.split()
    assert out == ["1", "2", "3", "4", "1"]


def test_ntp_time_is_unix_ms_whatever_the_port_epoch() -> None:
    out = run_micropython("""
from clock import ntp_unix_ms
class Ntp:  # what micropython-lib's ntptime.time() returns: seconds since the port epoch
    def __init__(self, seconds):
        self.seconds = seconds
    def time(self):
        if self.seconds is None:
            raise OSError(110)  # ETIMEDOUT: no answer
        return self.seconds
unix_s = 1_764_000_000
print(ntp_unix_ms(Ntp(unix_s), lambda t: (1970,)))
print(ntp_unix_ms(Ntp(unix_s - 946_684_800), lambda t: (2000,)))
print(ntp_unix_ms(Ntp(None)), ntp_unix_ms())  # no answer; no ntptime module in this VM
""", dirs={"/firmware": FIRMWARE}).check().stdout.split()
    assert out == [str(1_764_000_000_000)] * 2 + ["None", "None"]
