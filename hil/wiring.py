"""The virtual board's wiring: from a pack's readings to what the firmware's drivers read.

The rig knows each pack in board units (hil/packsim.py `Readings.to_board_units`: pack_mv,
current_ma, temps_dc, cells_mv, riso_pos_kohm, riso_neg_kohm). The firmware reads none of
those: it reads ADC microvolts and I2C registers through its drivers (firmware/sampler.py).
`Wiring` turns one into the other for one board config, as the board's circuits would:

- pack voltage: the divider (pack_divider_ratio_c) in front of its ADC pin;
- current: the shunt amplifier (current_ma_per_mv_c around current_zero_uv) on its ADC pin,
  or the INA226's shunt-voltage register (2.5 uV per LSB over calibration.shunt_uohm);
- temperatures: each NTC in its divider from ntc_vref_uv through ntc_r_fixed_ohm (the same
  Beta or Steinhart-Hart model as firmware/ntc.py), on its own ADC pin or behind the analog
  multiplexer; an open probe is the reference voltage (the divider's top), a shorted one 0 V:
  never a temperature;
- cells: the BQ769x0's 14-bit cell registers over its factory gain (the trim bytes the
  stand-in chip reports: 396 uV per LSB, offset 0);
- insulation: the switched-resistor bridge (hil/packsim.py `bridge_v`: R0 switched to either
  side, the Rd dividers always across) seen through the Vp and Vn dividers, in each of the
  switch states, so the firmware's own measurement (firmware/insulation.py) finds Rp and Rn.

Values are exact where the circuit allows (the firmware reads back the reading it was given,
to its resolution); ADC inputs are clipped to 0..3.3 V as the ESP32's are. Calibration
entries of the board config are not inverted: the rig's boards have none.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from packsentry.protocol import layout

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
ADC_MAX_UV = 3_300_000
SCALE_ONE = 100_000  # firmware/intmath.py: a factor of SCALE_ONE multiplies by 1
I16_ABNORMAL, I16_INVALID = layout.markers("h")  # the wire's markers, from the schema
U16_ABNORMAL, U16_INVALID = layout.markers("H")
RISO_AT_LEAST_KOHM = 65_533  # the field's top reading ("at least this much")
INA226_ADDR, INA226_SHUNT_V, INA226_CONFIG = 0x40, 0x01, 0x00
BQ_ADDR, BQ_VC1_HI = 0x08, 0x0C
BQ_TRIM = {0x50: 0x0C, 0x59: 0xE0, 0x51: 0x00, 0x04: 0x00}  # ADCGAIN1/2, ADCOFFSET, SYS_CTRL1
BQ_GAIN_UV = 365 + (((BQ_TRIM[0x50] & 0x0C) << 1) | (BQ_TRIM[0x59] >> 5))  # 396
BQ_MAX_CELLS = 15
INA_LSB_NV = 2500

# layout kinds (hil/vboard/launch.py)
ADC, SWITCHED, REG = 0, 1, 2


@cache
def firmware_config() -> ModuleType:
    """firmware/config.py itself (it needs nothing MicroPython has and CPython lacks): the
    board's own parsing and defaults, not a copy of them."""
    spec = importlib.util.spec_from_file_location("packsentry_firmware_config",
                                                  FIRMWARE / "config.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BoardConfigError(ValueError):
    pass


def parse_board_config(cfg: Mapping[str, Any]) -> Any:
    """The firmware's view of a config.json (firmware/config.py `parse`); a config the board
    would have to repair is refused here, with the board's own messages."""
    parsed = firmware_config().parse(json.dumps(cfg))
    if parsed.error:
        raise BoardConfigError("; ".join(parsed.messages))
    return parsed


def scale(x: int, factor: int) -> int:
    """firmware/intmath.py scale(): x * factor / SCALE_ONE, truncated toward zero."""
    return -scale(-x, factor) if x < 0 else x * factor // SCALE_ONE


def unscale(target: int, factor: int) -> int:
    """The smallest |x| with scale(x, factor) >= |target|: exactly the target whenever the
    factor is at most SCALE_ONE (one input step is at most one output step)."""
    if target < 0:
        return -unscale(-target, factor)
    return -(-target * SCALE_ONE // factor)  # ceil: floor(x * factor / 1e5) >= target


def ntc_ohm(model: Mapping[str, float], t_c: float) -> float:
    """The probe's resistance at t_c: firmware/ntc.py resistance_ohm, the same equations."""
    t_k = t_c + 273.15
    if "beta" in model:
        return model["r25_ohm"] * math.exp(model["beta"] * (1 / t_k - 1 / (25 + 273.15)))
    a, b, c = model["a"], model["b"], model["c"]  # 1/T = a + b ln R + c (ln R)^3
    x = (a - 1 / t_k) / c
    y = math.sqrt((b / (3 * c)) ** 3 + x * x / 4)

    def cbrt(v: float) -> float:
        return v ** (1 / 3) if v >= 0 else -((-v) ** (1 / 3))

    return math.exp(cbrt(y - x / 2) - cbrt(y + x / 2))


def _adc(uv: float) -> int:
    return min(ADC_MAX_UV, max(0, round(uv)))


@dataclass
class Wiring:
    """One board's circuits. `layout()` and `static()` go to the VM once; `values(reading)`
    every feed, in layout order."""

    config: Mapping[str, Any]  # config.json as written for the board
    cfg: Any = field(init=False)  # the firmware's parse of it

    def __post_init__(self) -> None:
        self.cfg = parse_board_config(self.config)
        c = self.cfg
        self.n_probes: int = c.n_probes
        self.n_cells: int = c["n_cells"]
        if self.n_cells > BQ_MAX_CELLS:
            raise BoardConfigError(f"n_cells {self.n_cells}: the firmware reads one BQ769x0, "
                                   f"at most {BQ_MAX_CELLS} cells")
        models = c["ntc_model"]
        self.models: list[Mapping[str, float]] = (
            list(models) if isinstance(models, list) else [models] * self.n_probes)
        self.mux_probes = c["ntc_mux_probes"]
        self.ina = c["current_sensor"] == "ina226"
        self.shunt_uohm = c["calibration"].get("shunt_uohm", 100)
        self.riso_factor = max(1, c["riso_divider_ratio_c"] // 100)  # as app.py has it
        self.switches = [c["pins.riso_switch_pos"], c["pins.riso_switch_neg"]]

    # -- once -------------------------------------------------------------------------------

    def layout(self) -> list[list[int]]:
        c = self.cfg
        out = [[ADC, c["pins.pack_v"]]]
        if self.ina:
            out += [[REG, INA226_ADDR, INA226_SHUNT_V], [REG, INA226_ADDR, INA226_SHUNT_V + 1]]
        else:
            out.append([ADC, c["pins.current"]])
        if self.mux_probes:
            out += [[SWITCHED, c["pins.ntc_mux_adc"], i] for i in range(self.n_probes)]
        else:
            out += [[ADC, pin] for pin in c["pins.ntc"]]
        for i in range(self.n_cells):
            out += [[REG, BQ_ADDR, BQ_VC1_HI + 2 * i], [REG, BQ_ADDR, BQ_VC1_HI + 2 * i + 1]]
        for pin in (c["pins.riso_vp"], c["pins.riso_vn"]):
            out += [[SWITCHED, pin, state] for state in range(4)]
        return out

    def static(self) -> dict[str, Any]:
        c = self.cfg
        i2c: dict[int, dict[int, int]] = {}
        if self.n_cells:
            i2c[BQ_ADDR] = dict(BQ_TRIM)
        if self.ina:
            i2c[INA226_ADDR] = {INA226_CONFIG: 0, INA226_CONFIG + 1: 0}
        mux = {c["pins.riso_vp"]: [self.switches, 4], c["pins.riso_vn"]: [self.switches, 4]}
        if self.mux_probes:
            mux[c["pins.ntc_mux_adc"]] = [c["pins.ntc_mux_select"], self.n_probes]
        return {"i2c": i2c, "mux": mux, "pins": {}}

    # -- every feed -------------------------------------------------------------------------

    def values(self, r: Mapping[str, Any], *, ntc_short: Sequence[bool] = (),
               riso_ohm: tuple[float, float] | None = None) -> list[int]:
        """One reading (board units, as Readings.to_board_units gives) in layout order.
        `ntc_short`: probes shorted rather than open (both read ABNORMAL in board units);
        `riso_ohm`: the insulation's exact (Rp, Rn), if known, rather than the kOhm fields."""
        c = self.cfg
        pack_mv = r["pack_mv"] if r["pack_mv"] < _marker("pack_mv") else 0
        out = [_adc(unscale(pack_mv, c["pack_divider_ratio_c"]))]
        ma = r["current_ma"] if r["current_ma"] < _marker("current_ma") else 0
        if self.ina:
            raw = max(-32768, min(32767, round(ma * self.shunt_uohm / INA_LSB_NV)))
            raw &= 0xFFFF
            out += [raw >> 8, raw & 0xFF]
        else:
            out.append(_adc(c["current_zero_uv"] + unscale(ma, c["current_ma_per_mv_c"])))
        vref, r_fixed = c["ntc_vref_uv"], c["ntc_r_fixed_ohm"]
        temps = r["temps_dc"]
        for i in range(self.n_probes):
            t = temps[i] if i < len(temps) else I16_INVALID
            if t >= I16_ABNORMAL:  # open: the divider's top; shorted: ground
                out.append(0 if i < len(ntc_short) and ntc_short[i] else vref)
            else:
                rn = ntc_ohm(self.models[i], t / 10)
                out.append(_adc(vref * rn / (r_fixed + rn)))
        cells = r["cells_mv"]
        for i in range(self.n_cells):
            mv = cells[i] if i < len(cells) else 0
            adc = 0 if mv >= U16_ABNORMAL else min(0x3FFF, -(-mv * 1000 // BQ_GAIN_UV))
            out += [adc >> 8, adc & 0xFF]
        out += self.bridge_uv(pack_mv, riso_ohm or (
            _riso_ohm(r["riso_pos_kohm"]), _riso_ohm(r["riso_neg_kohm"])))
        return out

    def bridge_uv(self, pack_mv: int, riso_ohm: tuple[float, float]) -> list[int]:
        """Vp in switch states 0..3, then Vn, as ADC uV (state 3, both closed, never
        happens: the firmware opens one before closing the other)."""
        from .packsim import bridge_v  # numpy only; the circuit is the simulator's

        c = self.cfg
        pack_v = pack_mv / 1000
        r0, rd = c["riso_r0_kohm"] * 1e3, c["riso_rd_kohm"] * 1e3
        vs = [bridge_v(pack_v, riso_ohm[0], riso_ohm[1], r0, rd, s)[:2] for s in (0, 1, 2)]
        vs.append(vs[0])
        per_uv = 1e6 / self.riso_factor  # the Vp/Vn dividers: HV volts -> ADC uV
        return ([_adc(float(vp) * per_uv) for vp, _ in vs]
                + [_adc(float(vn) * per_uv) for _, vn in vs])


@cache
def _marker(name: str) -> int:
    """The lowest marker value (abnormal) of a sample field, from the wire schema."""
    for seg in layout.payload_layout("sample").segments:
        for f in getattr(seg, "fields", ()):
            if f.name == name:
                return layout.markers(f.fmt)[0]
    raise KeyError(name)


def _riso_ohm(kohm: int) -> float:
    """kOhm field -> ohm; a marker or the top reading is an open circuit."""
    return math.inf if kohm >= RISO_AT_LEAST_KOHM else kohm * 1e3


def board_config(*, board_id: int, site: str, pack: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None,
                 link: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config.json for a rig board: the pack's fields (PackSpec.birth_fields() names),
    NTC probes on their own ADC pins (up to four: the free ADC1 pins) or behind a
    multiplexer, cells on the BQ769x0 when there are at most 15, then `overrides`."""
    n_probes = pack["n_probes"]
    n_cells = pack["n_cells"] if pack["n_cells"] <= BQ_MAX_CELLS else 0
    cfg: dict[str, Any] = {
        "board_id": board_id, "site": site, "chemistry": pack["chemistry"],
        "cells_series": pack["cells_series"], "rated_mah": pack["rated_mah"],
        "max_pack_mv": pack["max_pack_mv"], "n_cells": n_cells,
        "probe_cell": list(pack.get("probe_cell", [])),
        # the pack voltage through a divider that keeps the ADC below ~2.5 V (x100)
        "pack_divider_ratio_c": max(20_100, -(-pack["max_pack_mv"] * 100 // 2_400)),
        # the insulation dividers likewise for half the pack on each side
        "riso_divider_ratio_c": max(40_000, -(-pack["max_pack_mv"] * 100 // 2_400)),
    }
    free_adc = [32, 33, 37, 38]  # ADC1 pins not taken by pack voltage, current, insulation
    if n_probes <= len(free_adc):
        cfg["pins"] = {"ntc": free_adc[:n_probes]}
    else:
        bits = max(1, math.ceil(math.log2(n_probes)))
        cfg["ntc_mux_probes"] = n_probes
        cfg["pins"] = {"ntc_mux_adc": 33, "ntc_mux_select": [13, 14, 15, 16, 17][:bits]}
    if link:
        cfg["link"] = dict(link)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), Mapping):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
