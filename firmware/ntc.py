"""NTC temperature probes: 0.1 degC from the divider voltage, by table, without floats.

The table (node voltage at every 5 degC from -40 to +150 degC) is built once from the probe's
model (Beta or Steinhart-Hart) when the config is loaded; a reading is then a binary search and
one integer interpolation. A voltage outside the table means an open or shorted probe, which
reads as the ABNORMAL marker, never as a plausible temperature.
"""

import math
from array import array

import wire

ABNORMAL_DC = wire.I16_ABNORMAL
T_MIN_DC = -400
T_MAX_DC = 1500
STEP_DC = 50
_KELVIN = 273.15


def resistance_ohm(model: dict, t_c: float) -> float:
    """The probe's resistance at t_c, from {"beta": B, "r25_ohm": R} or {"a", "b", "c"}."""
    t_k = t_c + _KELVIN
    if "beta" in model:
        return model["r25_ohm"] * math.exp(model["beta"] * (1 / t_k - 1 / (25 + _KELVIN)))
    a, b, c = model["a"], model["b"], model["c"]  # 1/T = a + b ln R + c (ln R)^3
    x = (a - 1 / t_k) / c
    y = math.sqrt((b / (3 * c)) ** 3 + x * x / 4)
    return math.exp(_cbrt(y - x / 2) - _cbrt(y + x / 2))


def _cbrt(v: float) -> float:
    return v ** (1 / 3) if v >= 0 else -((-v) ** (1 / 3))


class NtcTable:
    """Node voltage -> temperature for one probe type in one divider.

    The NTC sits on the low side: node = vref * R_ntc / (R_fixed + R_ntc), so the voltage falls
    as the temperature rises; an open probe pulls the node to vref, a short to 0 V.
    """

    def __init__(self, model: dict, r_fixed_ohm: int, vref_uv: int) -> None:
        n = (T_MAX_DC - T_MIN_DC) // STEP_DC + 1
        self.uv = array("i", bytes(4 * n))
        for i in range(n):
            r = resistance_ohm(model, (T_MIN_DC + i * STEP_DC) / 10)
            self.uv[i] = int(vref_uv * r / (r_fixed_ohm + r))
        self.n = n

    def temp_dc(self, uv: int) -> int:
        table = self.uv
        if uv > table[0] or uv < table[self.n - 1]:
            return ABNORMAL_DC  # open (towards vref) or shorted (towards 0 V) probe
        lo = 0
        hi = self.n - 1
        while hi - lo > 1:  # table falls with temperature
            mid = (lo + hi) >> 1
            if table[mid] >= uv:
                lo = mid
            else:
                hi = mid
        span = table[lo] - table[hi]
        return T_MIN_DC + lo * STEP_DC + ((table[lo] - uv) * STEP_DC) // span if span else \
            T_MIN_DC + lo * STEP_DC
