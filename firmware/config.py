"""The board's config.json: one table of fields, each with its default and its check.

load() never raises and never leaves the board without a config: a missing file, bad JSON or
a bad field falls back to the defaults (field by field), prints a clear message on the console,
and sets `error` to the code of the first bad field (its 1-based row in FIELDS), which the board
reports in its birth and status frames. A crash loop would silence the board exactly when it
is needed.
"""

import json

# (dotted name, default, check). Checks: (lo, hi) int range, a tuple of allowed strings,
# "key" (64 hex chars or ""), "adc1" (an ADC1 GPIO, 32-39: ADC2 is unusable while WiFi
# runs), "adc1 list", "ntc" (a model, or a list of one model per probe), "cells" (cell indexes),
# dict (free-form object, checked by its user). Append rows only: codes are positions.
FIELDS = (
    ("board_id", 0, (0, 0xFFFFFFFF)),
    ("key_hex", "", "key"),
    ("site", "lab", "name"),
    ("chemistry", "nmc", ("nmc", "lfp")),
    ("cells_series", 16, (1, 1000)),
    ("rated_mah", 100_000, (1, 10_000_000)),
    ("max_pack_mv", 67_200, (1_000, 1_500_000)),
    ("max_temp_dc", 600, (0, 1500)),
    ("n_cells", 0, (0, 256)),
    ("probe_cell", [], "cells"),
    ("sample_period_ms", 1_000, (100, 3_600_000)),
    ("riso_period_ms", 10_000, (1_000, 3_600_000)),
    ("current_sensor", "shunt", ("shunt", "ina226")),
    ("pins.pack_v", 36, "adc1"),
    ("pins.current", 39, "adc1"),
    ("pins.ntc", [32], "adc1 list"),
    ("pins.alarm_out", 2, (0, 39)),
    ("pins.riso_switch_pos", 25, (0, 39)),
    ("pins.riso_switch_neg", 26, (0, 39)),
    ("pins.riso_vp", 34, "adc1"),
    ("pins.riso_vn", 35, "adc1"),
    ("pins.i2c_sda", 21, (0, 39)),
    ("pins.i2c_scl", 22, (0, 39)),
    ("pack_divider_ratio_c", 20_100, (1, 300_000)),  # divider ratio x 100
    ("current_ma_per_mv_c", 20_000, (1, 10_000_000)),  # shunt amp: mA per mV x 100
    ("current_zero_uv", 1_650_000, (0, 3_300_000)),
    ("ntc_model", {"beta": 3950, "r25_ohm": 10_000}, "ntc"),  # one model, or one per probe
    ("ntc_r_fixed_ohm", 10_000, (100, 1_000_000)),
    ("ntc_vref_uv", 3_300_000, (1_000_000, 3_600_000)),
    ("riso_r0_kohm", 200, (1, 30_000)),
    ("riso_rd_kohm", 10_000, (1, 60_000)),
    ("riso_divider_ratio_c", 40_000, (1, 300_000)),  # HV to ADC, x 100
    ("riso_settle_ms", 500, (0, 60_000)),
    ("calibration", {}, dict),  # channel -> {"gain_ppm", "offset_uv"}
    ("thresholds", {}, dict),  # overrides of the L3 limits (safety.py names)
    ("link.kind", "serial", ("serial", "mqtt")),
    ("link.uart", 0, (0, 2)),
    ("link.baud", 115_200, (1_200, 2_000_000)),
    ("link.wifi_ssid", "", "name"),
    ("link.wifi_password", "", "text"),
    ("link.broker", "", "text"),
    ("link.port", 1883, (1, 65_535)),
    ("link.keepalive_s", 60, (5, 3_600)),
    ("store.max_bytes", 262_144, (4_096, 4_194_304)),
    # NTC probes behind an analog multiplexer (e.g. CD74HC4067): up to 32 on one ADC1 pin.
    ("ntc_mux_probes", 0, (0, 32)),  # 0: no multiplexer, probes wired to pins.ntc
    ("pins.ntc_mux_adc", 33, "adc1"),
    ("pins.ntc_mux_select", [], "gpio list"),  # select lines, least significant bit first
    # Where readings come from: the sensors, or a HIL rig's signed `inject` commands (a bench
    # board, never one in the field). Missing or bad: "hardware", so injection stays off.
    ("sensor_source", "hardware", ("hardware", "injected")),
)


# Whole-file problems get the codes after the last field's.
ERROR_BAD_JSON = len(FIELDS) + 1
ERROR_MISSING_FILE = len(FIELDS) + 2


def _valid(value, check) -> bool:
    if isinstance(check, tuple) and check and isinstance(check[0], int):
        return isinstance(value, int) and not isinstance(value, bool) and \
            check[0] <= value <= check[1]
    if isinstance(check, tuple):
        return value in check
    if check == "key":
        if not isinstance(value, str) or len(value) not in (0, 64):
            return False
        try:
            bytes.fromhex(value)
        except ValueError:
            return False
        return True
    if check == "name":
        return isinstance(value, str) and len(value) <= 32 and "/" not in value \
            and "+" not in value and "#" not in value  # used in MQTT topics
    if check == "text":
        return isinstance(value, str) and len(value) <= 128
    if check == "adc1":
        return isinstance(value, int) and not isinstance(value, bool) and 32 <= value <= 39
    if check == "adc1 list":
        return isinstance(value, list) and len(value) <= 32 and all(
            _valid(v, "adc1") for v in value)
    if check == "gpio list":
        return isinstance(value, list) and len(value) <= 5 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 39 for v in value)
    if check == "cells":
        return isinstance(value, list) and len(value) <= 32 and all(
            isinstance(v, int) and 0 <= v <= 0xFFFF for v in value)
    if check == "ntc":
        models = value if isinstance(value, list) else [value]
        return len(models) >= 1 and all(_ntc_model_ok(m) for m in models)
    if check is dict:
        return isinstance(value, dict)
    return False


def _ntc_model_ok(m) -> bool:
    if not isinstance(m, dict):
        return False
    if "beta" in m:
        return all(isinstance(m.get(k), (int, float)) and m[k] > 0 for k in ("beta", "r25_ohm"))
    return all(isinstance(m.get(k), (int, float)) for k in ("a", "b", "c")) and m["c"] != 0


class Config:
    def __init__(self) -> None:
        self.values = {}
        self.error = 0  # 0, or the 1-based FIELDS row of the first bad field
        self.messages = []

    def __getitem__(self, name: str):
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    @property
    def n_probes(self) -> int:
        """Temperature probes: multiplexed ones if a multiplexer is configured."""
        return self.values["ntc_mux_probes"] or len(self.values["pins.ntc"])

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.values["key_hex"])

    def _bad(self, code: int, text: str) -> None:
        if not self.error:
            self.error = code
        self.messages.append(text)
        print("config:", text)


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def parse(text) -> Config:
    """Validate config JSON text; always returns a usable Config."""
    cfg = Config()
    try:
        tree = json.loads(text) if text else {}
    except ValueError as exc:
        cfg._bad(ERROR_BAD_JSON, "config.json is not valid JSON (%s): using defaults" % exc)
        tree = {}
    if not isinstance(tree, dict):
        cfg._bad(ERROR_BAD_JSON, "config.json must hold an object: using defaults")
        tree = {}
    for code, (name, default, check) in enumerate(FIELDS, 1):
        value = _lookup(tree, name)
        if value is _MISSING:
            cfg.values[name] = default
            continue
        if _valid(value, check):
            cfg.values[name] = value
        else:
            cfg.values[name] = default
            cfg._bad(code, "%s = %r is invalid (%s): using default %r"
                     % (name, value, _describe(check), default))
    n_probes = cfg.n_probes
    mux = cfg.values["ntc_mux_probes"]
    if mux and mux > 1 << len(cfg.values["pins.ntc_mux_select"]):
        code = [f[0] for f in FIELDS].index("pins.ntc_mux_select") + 1
        cfg._bad(code, "%d select lines cannot address %d multiplexed probes: using pins.ntc"
                 % (len(cfg.values["pins.ntc_mux_select"]), mux))
        cfg.values["ntc_mux_probes"] = 0
        n_probes = cfg.n_probes
    models = cfg.values["ntc_model"]
    if isinstance(models, list) and len(models) != n_probes:
        code = [f[0] for f in FIELDS].index("ntc_model") + 1
        cfg._bad(code, "ntc_model lists %d models for %d probes (pins.ntc): using the first"
                 % (len(models), n_probes))
        cfg.values["ntc_model"] = models[0]
    if cfg.values["probe_cell"] and len(cfg.values["probe_cell"]) != n_probes:
        code = [f[0] for f in FIELDS].index("probe_cell") + 1
        cfg._bad(code, "probe_cell has %d entries for %d probes (pins.ntc): ignoring it"
                 % (len(cfg.values["probe_cell"]), n_probes))
        cfg.values["probe_cell"] = []
    return cfg


def _describe(check) -> str:
    if isinstance(check, tuple) and check and isinstance(check[0], int):
        return "an integer from %d to %d" % check
    if isinstance(check, tuple):
        return "one of " + ", ".join(check)
    return {"key": "64 hex digits or empty", "name": "up to 32 characters, no / + #",
            "text": "up to 128 characters", "adc1": "an ADC1 GPIO, 32 to 39",
            "adc1 list": "a list of ADC1 GPIOs, 32 to 39", "cells": "a list of cell indexes",
            "gpio list": "up to 5 GPIOs, 0 to 39",
            "ntc": "{beta, r25_ohm} or {a, b, c}, or a list of those, one per probe"
            }.get(check, "an object")


def load(path: str = "config.json") -> Config:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        cfg = parse("")
        cfg._bad(ERROR_MISSING_FILE, "%s not found: running on defaults" % path)
        return cfg
    return parse(text)

