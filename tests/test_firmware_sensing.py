"""Sensing code in the MicroPython VM: the pre-event ring, the I2C drivers (against register
models of the chips, as the HIL rig's virtual board will provide), NTC and insulation math."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from packsentry.hil.mpvm import run_micropython
from packsentry.protocol import codec

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"

I2C_MODEL = """
class RegisterI2C:
    # an I2C bus with one chip, as a register map: what the HIL's simulated chips do
    def __init__(self, addr, regs):
        self.addr = addr
        self.regs = regs
    def readfrom_mem_into(self, addr, reg, buf):
        assert addr == self.addr
        for i in range(len(buf)):
            buf[i] = self.regs.get(reg + i, 0)
    def writeto_mem(self, addr, reg, data):
        assert addr == self.addr
        for i, b in enumerate(data):
            self.regs[reg + i] = b
"""


def vm(script: str) -> str:
    return run_micropython(script, dirs={"/firmware": FIRMWARE}).check().stdout


def test_pre_event_ring_encodes_last_30_with_new_seqs_and_old_times() -> None:
    out = vm("""
from ring import PreEventRing
from frames import FrameWriter
import gc
w = FrameWriter(7, 2, 2, 3)
r = PreEventRing(2, 3)
from array import array
ts = bytearray(8)
temps = array('h', [250, 251])
cells = array('H', [3700, 3701, 0])
def push_all(n):
    for i in range(n):
        ts[0] = i % 256
        ts[1] = i // 256
        temps[0] = 250 + i % 100
        cells[2] = i % 1000
        r.push(ts, 4, 400000 + i, -i, 5000, 4000, 0, 0, temps, cells)
push_all(40)
def measure():
    before = gc.mem_alloc()
    push_all(1000)
    return gc.mem_alloc() - before
print(measure())
push_all(45)
w.set_ts_ms(999999)
r.frozen = True  # while sending: new samples must not push the event's 30 s out
push_all(5)
frames = [bytes(w.buf[:r.encode(j, w, 500 + j)]).hex() for j in range(r.count)]
used = r.count
r.clear()
print(used, r.count, bytes(w.ts) == (999999).to_bytes(8, 'little'))
for f in frames:
    print(f)
""").split()
    assert out[0] == "0"  # push allocates nothing
    assert out[1:4] == ["30", "0", "True"]
    frames = [codec.decode_frame(bytes.fromhex(h)) for h in out[4:]]
    assert [f["seq"] for f in frames] == list(range(500, 530))
    assert [f["ts_ms"] for f in frames] == list(range(15, 45))  # the last 30 of 45
    assert all(f["flags"] == codec.FLAGS["pre_event"] | codec.FLAGS["time_synced"]
               for f in frames)
    assert frames[-1]["payload"]["cells_mv"] == [3700, 3701, 44]


def test_ina226_current_from_shunt_register() -> None:
    out = vm(I2C_MODEL + """
from ina226 import Ina226
bus = RegisterI2C(0x40, {})
ina = Ina226(bus, shunt_uohm=100)
for raw in (4000, -4000, 32767):
    v = raw & 0xFFFF
    bus.regs[0x01] = v >> 8
    bus.regs[0x02] = v & 0xFF
    print(ina.current_ma())
print(bus.regs[0x00])  # config register: continuous shunt and bus conversions
""").split()
    # 4000 LSB * 2.5 uV = 10 mV over 100 uOhm = 100 A
    assert out == ["100000", "-100000", str(32767 * 2500 // 100), str(0x45)]


def test_bq769x0_cells_with_factory_gain_and_offset() -> None:
    out = vm(I2C_MODEL + """
from bq769x0 import Bq769x0
from array import array
regs = {0x50: 0x0C, 0x59: 0xE0, 0x51: 0xFE, 0x04: 0}  # gain 365+31=396 uV, offset -2 mV
adc = [9343, 9344, 0x3FFF, 0]
for i, a in enumerate(adc):
    regs[0x0C + 2 * i] = (a >> 8) | 0xC0  # top bits are not part of the result
    regs[0x0D + 2 * i] = a & 0xFF
bus = RegisterI2C(0x08, regs)
afe = Bq769x0(bus, 4)
cells = array('H', [0] * 4)
afe.read_cells_mv(cells)
print(afe.gain_uv, afe.offset_mv, list(cells), regs[0x04] & 0x10)
""")
    gain, offset, *rest = out.replace("[", "").replace("]", "").replace(",", "").split()
    assert (int(gain), int(offset)) == (396, -2)
    assert [int(x) for x in rest[:4]] == [3697, 3698, 6485, 0]  # clamped at 0 mV
    assert rest[4] == "16"  # ADC enabled


@pytest.mark.parametrize("model", [{"beta": 3950, "r25_ohm": 10_000},
                                   {"a": 1.009249522e-3, "b": 2.378405444e-4,
                                    "c": 2.019202697e-7}])
def test_ntc_tables_match_the_models(model: dict) -> None:
    def r_at(t_c: float) -> float:
        t_k = t_c + 273.15
        if "beta" in model:
            return 10_000 * math.exp(3950 * (1 / t_k - 1 / 298.15))
        a, b, c = model["a"], model["b"], model["c"]
        x = (a - 1 / t_k) / c
        y = math.sqrt((b / (3 * c)) ** 3 + x * x / 4)
        return math.exp(math.cbrt(y - x / 2) - math.cbrt(y + x / 2))

    temps = [-39.5, -12.3, 0.0, 21.7, 25.0, 44.4, 59.9, 60.0, 87.1, 149.0]
    uvs = [int(3_300_000 * r_at(t) / (10_000 + r_at(t))) for t in temps]
    out = vm(f"""
from ntc import NtcTable
t = NtcTable({model!r}, 10000, 3300000)
print([t.temp_dc(uv) for uv in {uvs}], t.temp_dc(3299999), t.temp_dc(10))
""").replace("[", "").replace("]", "").replace(",", "").split()
    got = [int(x) for x in out[:len(temps)]]
    for t, g in zip(temps, got, strict=True):
        assert abs(g - t * 10) <= 3, (t, g)  # within 0.3 K: table interpolation over 5 K
    assert out[-2:] == ["32766", "32766"]  # open and shorted probes read ABNORMAL


def test_insulation_bridge_recovers_leakage() -> None:
    def par(a: float, b: float) -> float:
        return a * b / (a + b)

    cases, expected = [], []
    for rp, rn in [(100, 5000), (5000, 100), (40, 40), (2000, 30000), (10, 800)]:
        rpe, rne = par(rp, 10_000), par(rn, 10_000)  # measuring dividers of 10 MOhm
        a = par(rpe, 200)
        vp1 = 400 * a / (a + rne)
        b = par(rne, 200)
        vp2 = 400 * rpe / (rpe + b)
        cases.append([round(v * 10) for v in (vp1, 400 - vp1, vp2, 400 - vp2)])
        expected.append((rp, rn))
    out = vm(f"""
from insulation import bridge_kohm, remove_divider
for c in {cases}:
    rp, rn = bridge_kohm(*c, 200)
    print(remove_divider(rp, 10000), remove_divider(rn, 10000))
""").split()
    got = list(zip(map(int, out[::2]), map(int, out[1::2]), strict=True))
    for (rp, rn), (gp, gn) in zip(expected, got, strict=True):
        assert abs(gp - rp) <= max(2, rp * 0.02) and abs(gn - rn) <= max(2, rn * 0.02)


def test_each_probe_reads_with_its_own_ntc_type() -> None:
    beta = {"beta": 3435, "r25_ohm": 10_000}
    sh = {"a": 1.009249522e-3, "b": 2.378405444e-4, "c": 2.019202697e-7}

    def uv(model: dict, t_c: float) -> int:
        t_k = t_c + 273.15
        if "beta" in model:
            r = model["r25_ohm"] * math.exp(model["beta"] * (1 / t_k - 1 / 298.15))
        else:
            x = (model["a"] - 1 / t_k) / model["c"]
            y = math.sqrt((model["b"] / (3 * model["c"])) ** 3 + x * x / 4)
            r = math.exp(math.cbrt(y - x / 2) - math.cbrt(y + x / 2))
        return int(3_300_000 * r / (10_000 + r))

    out = run_micropython(f"""
import machine, config
from sampler import Sampler
machine.inputs['adc_uv'].update({{32: {uv(beta, 40.0)}, 33: {uv(sh, 40.0)}, 34: {uv(beta, 40.0)}}})
cfg = config.parse({json.dumps({"pins": {"ntc": [32, 33, 34]}, "ntc_model": [beta, sh, beta]})!r})
s = Sampler(machine, cfg)
s.read()
print(cfg.error, list(s.temps_dc), s.ntc[0] is s.ntc[2])
""", dirs={"/firmware": FIRMWARE, "/vboard": FIRMWARE.parent / "hil" / "vboard"}).check().stdout
    error, *temps, shared = out.replace("[", "").replace("]", "").replace(",", "").split()
    assert error == "0" and shared == "True"  # one table per probe type
    assert all(abs(int(t) - 400) <= 3 for t in temps), temps


def test_twenty_probes_behind_a_multiplexer() -> None:
    temps_c = [20 + 2 * i for i in range(20)]
    model = {"beta": 3950, "r25_ohm": 10_000}

    def uv(t_c: float) -> int:
        r = 10_000 * math.exp(3950 * (1 / (t_c + 273.15) - 1 / 298.15))
        return int(3_300_000 * r / (10_000 + r))

    select = [12, 13, 14, 15, 16]
    doc = {"ntc_mux_probes": 20, "pins": {"ntc_mux_adc": 33, "ntc_mux_select": select},
           "ntc_model": model}
    out = run_micropython(f"""
import asyncio, gc, machine
import config
await asyncio.sleep_ms(2)  # this VM collects compile garbage only at a real sleep
from sampler import Sampler
await asyncio.sleep_ms(2)
machine.inputs['mux'][33] = ({select!r}, {[uv(t) for t in temps_c]!r})
cfg = config.parse({json.dumps(doc)!r})
s = Sampler(machine, cfg)
s.read()
def measure():
    before = gc.mem_alloc()
    for _ in range(100):
        s.read()
    return gc.mem_alloc() - before
print(cfg.error, s.n_probes, measure(), list(s.temps_dc))
""", dirs={"/firmware": FIRMWARE, "/vboard": FIRMWARE.parent / "hil" / "vboard"}).check().stdout
    error, n, allocated, *temps = out.replace("[", "").replace("]", "").replace(",", "").split()
    assert (error, n, allocated) == ("0", "20", "0")
    assert all(abs(int(t) - 10 * c) <= 3 for t, c in zip(temps, temps_c, strict=True)), temps


def test_too_few_select_lines_fall_back_to_direct_probes() -> None:
    doc = {"ntc_mux_probes": 20, "pins": {"ntc_mux_select": [12, 13], "ntc": [32, 34]}}
    out = run_micropython(f"""
import config
cfg = config.parse({json.dumps(doc)!r})
print(cfg.n_probes, cfg.error == [f[0] for f in config.FIELDS].index('pins.ntc_mux_select') + 1)
""", dirs={"/firmware": FIRMWARE}).check().stdout.split()
    assert out[-2:] == ["2", "True"]
