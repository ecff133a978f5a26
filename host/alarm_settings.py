"""Alarm-engine settings: debounce, recurrence, prediction, flood grouping, shelving and
per-chemistry threshold overrides.

The thresholds themselves live in `limits.py` (the one table, with sources); here are only
the knobs around them. The daemon's config loader builds this from the TOML `[alarms]` table
with `AlarmSettings.from_mapping`, which reports every bad key at once (`AlarmSettingsError`)
so `packsentry config check` can list them all.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packsentry.protocol import schema

from . import limits

# Events the human-facing notifiers hear about by default; the rest (acknowledged, shelved,
# suppressed, deescalated) are audit-log and MQTT only.
NOTIFY_EVENTS = ("raised", "escalated", "cleared", "unshelved", "returned_to_service")
# every AlarmEvent.event, in lifecycle order
EVENTS = ("raised", "escalated", "deescalated", "cleared", "acknowledged", "shelved",
          "unshelved", "suppressed", "returned_to_service")


def _extra(rule: str, key: str) -> int:
    return next(lim.extra[key] for lim in limits.LIMITS if lim.rule == rule and key in lim.extra)


def _default_on_delay_s() -> dict[str, float]:
    # Debounce for L1/L2 only (L3/L4 fire on the first qualifying sample). Long enough to ride
    # through a load pulse or one noisy reading, short against how fast each fault develops.
    return {
        "insulation": 30.0,  # one bridge measurement can be upset by a switching transient
        "temp_high": 10.0,
        "temp_spread": 30.0,
        "temp_rise_rate": float(_extra("temp_rise_rate", "l2_hold_s")),  # "for 2 min"
        "thermal_event": 0.0,  # L4 only
        "cell_overvoltage": 10.0,  # charge pulses (regen) overshoot briefly
        "cell_undervoltage": 10.0,  # load pulses sag briefly
        "cell_spread": 30.0,
        "capacity_soh": 0.0,  # estimates are already filtered
        "r0_growth": 0.0,
        "board_silent": 0.0,  # already counts missed reporting periods
        "sensor_fault": 30.0,  # a single marker from a glitch is not a broken sensor
    }


class AlarmSettingsError(ValueError):
    """Every problem in an `[alarms]` table, as (key path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))


@dataclass(frozen=True)
class AlarmSettings:
    # seconds a L1/L2 condition must hold before it raises, per rule
    on_delay_s: dict[str, float] = field(default_factory=_default_on_delay_s)
    recurrence_count: int = 3  # raised this often within the window: one level up
    recurrence_window_s: float = 86400.0
    # prediction: raise L2 when the L3 crossing is forecast within this horizon
    forecast_horizon_s: float = float(_extra("insulation", "forecast_h") * 3600)
    trend_z: float = 2.33  # Mann-Kendall one-sided significance (about p < 0.01)
    # insulation: the lowest value of each hour, over two days
    trend_bucket_s: float = 3600.0
    trend_window_s: float = 48 * 3600.0
    trend_min_points: int = 24  # a day of hourly minima before any forecast
    trend_confirm: int = 3  # consecutive interval evaluations before it raises or clears
    # temperature in use: the highest value of each day's use, over two weeks (within a day
    # the temperature follows the load; from day to day it shows cooling and ageing)
    temp_trend_bucket_s: float = 86400.0
    temp_trend_window_s: float = 14 * 86400.0
    temp_trend_min_points: int = 6  # fewer cannot reach z 2.33 at all
    temp_trend_confirm: int = 1  # each point is a whole day already
    in_use_c_rate: float = 0.05  # |current| >= C/20: the pack is in use
    flood_count: int = 10
    flood_window_s: float = 600.0
    silent_periods: int = next(lim.levels[1] for lim in limits.LIMITS
                               if lim.rule == "board_silent")  # the table's board_silent L1
    shelve_default_s: float = 8 * 3600.0
    shelve_max_s: float = 24 * 3600.0
    # {"nmc"|"lfp"|"all": {rule: {level: threshold}}}, in the table's units
    thresholds: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    notify_events: tuple[str, ...] = NOTIFY_EVENTS

    # -- derived ------------------------------------------------------------------------------

    def limit(self, chemistry: str, rule: str) -> limits.Limit | None:
        """The table's row for this chemistry with the overrides applied (None: no row).
        Asked for every rule of every sample: computed once per (chemistry, rule)."""
        cache: dict[tuple[str, str], limits.Limit | None] = self.__dict__.setdefault(
            "_limit_cache", {})
        key = (chemistry, rule)
        if key in cache:
            return cache[key]
        row = next((lim for lim in limits.limits_for(chemistry) if lim.rule == rule), None)
        if row is not None:
            levels = dict(row.levels)
            levels.update(self.thresholds.get("all", {}).get(rule, {}))
            levels.update(self.thresholds.get(chemistry, {}).get(rule, {}))
            row = dataclasses.replace(row, levels=levels) if levels != row.levels else row
        cache[key] = row
        return row

    def trend(self, rule: str) -> tuple[float, float, int, int]:
        """(bucket_s, window_s, min_points, confirm) of the trend on `rule`'s quantity."""
        if rule == "temp_high":
            return (self.temp_trend_bucket_s, self.temp_trend_window_s,
                    self.temp_trend_min_points, self.temp_trend_confirm)
        return (self.trend_bucket_s, self.trend_window_s, self.trend_min_points,
                self.trend_confirm)

    def on_delay_ms(self, rule: str, level: int) -> int:
        if level >= 3:
            return 0
        return int(self.on_delay_s.get(rule, 0.0) * 1000)

    # -- from the config file -----------------------------------------------------------------

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], prefix: str = "alarms") -> AlarmSettings:
        """Build from a TOML `[alarms]` table; raise AlarmSettingsError listing every problem."""
        problems: list[tuple[str, str]] = []
        kw: dict[str, Any] = {}
        defaults = cls()
        scalars = {f.name: f for f in dataclasses.fields(cls)
                   if f.name not in ("on_delay_s", "thresholds", "notify_events")}
        if not isinstance(d, Mapping):
            raise AlarmSettingsError([(prefix, "must be a table")])
        for key, value in d.items():
            path = f"{prefix}.{key}"
            if key == "on_delay_s":
                kw[key] = _on_delays(value, path, problems, defaults.on_delay_s)
            elif key == "thresholds":
                kw[key] = _thresholds(value, path, problems)
            elif key == "notify_events":
                kw[key] = _notify_events(value, path, problems)
            elif key in scalars:
                kind = type(getattr(defaults, key))
                checked = _number(value, path, problems, integer=kind is int)
                if checked is not None:
                    kw[key] = checked
            else:
                problems.append((path, f"unknown key (known: {', '.join(_KEYS)})"))
        for key, (minimum, strict) in _MINIMUMS.items():
            if key in kw and (kw[key] <= minimum if strict else kw[key] < minimum):
                problems.append((f"{prefix}.{key}", f"must be {'>' if strict else '>='} "
                                 f"{minimum}"))
        shelve_default = kw.get("shelve_default_s", defaults.shelve_default_s)
        shelve_max = kw.get("shelve_max_s", defaults.shelve_max_s)
        if shelve_default > shelve_max:
            problems.append((f"{prefix}.shelve_default_s",
                             f"must be <= shelve_max_s ({shelve_max:g})"))
        if problems:
            raise AlarmSettingsError(problems)
        return cls(**kw)


_KEYS = tuple(f.name for f in dataclasses.fields(AlarmSettings))
# what each key means, for docs/alarms.md (a test keeps it complete)
_MEANING = {
    "on_delay_s": "seconds an L1/L2 condition must hold before it raises, per rule "
                  "(L3/L4 have none)",
    "recurrence_count": "raises of one alarm within the window that add one level (up to L3; "
                        "L2 for board_silent and sensor_fault)",
    "recurrence_window_s": "the recurrence window",
    "forecast_horizon_s": "raise the predicted L2 when the L3 crossing is forecast within this",
    "trend_z": "Mann-Kendall z needed for a trend (2.33: one-sided p < 0.01)",
    "trend_bucket_s": "insulation trend interval: one point per interval, its lowest value",
    "trend_window_s": "insulation: time the trend is fitted over",
    "trend_min_points": "insulation: intervals needed before any forecast",
    "trend_confirm": "insulation: consecutive interval evaluations that must agree to raise "
                     "or clear",
    "temp_trend_bucket_s": "temperature-in-use trend interval: one point per interval, the "
                           "highest temperature while in use",
    "temp_trend_window_s": "temperature in use: time the trend is fitted over",
    "temp_trend_min_points": "temperature in use: intervals needed before any forecast",
    "temp_trend_confirm": "temperature in use: consecutive evaluations that must agree",
    "in_use_c_rate": "a current (either way) at or above this C-rate counts as in use "
                     "(temperature trend)",
    "flood_count": "notifications per site and window before grouping starts",
    "flood_window_s": "the flood window",
    "silent_periods": "reporting periods without a frame before board_silent",
    "shelve_default_s": "shelving time when none is given",
    "shelve_max_s": "longest shelving allowed",
    "thresholds": "threshold overrides, `thresholds.<chemistry or all>.<rule>.<level> = "
                  "value`, in the table's units",
    "notify_events": "events people are told about",
}


def markdown_keys() -> str:
    """The `[alarms]` keys of docs/alarms.md with their defaults (a test compares)."""
    d = AlarmSettings()
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(AlarmSettings):
        value = getattr(d, f.name)
        if f.name == "on_delay_s":
            shown = ", ".join(f"{k} {v:g}" for k, v in value.items())
        elif f.name == "thresholds":
            shown = "none"
        elif isinstance(value, tuple):
            shown = ", ".join(value)
        else:
            shown = f"{value:g}"
        lines.append(f"| `{f.name}` | {shown} | {_MEANING[f.name]} |")
    return "\n".join(lines) + "\n"
# key -> (bound, strict): counts and windows must be positive, margins non-negative
_MINIMUMS = {
    "recurrence_count": (2, False), "recurrence_window_s": (0, True),
    "forecast_horizon_s": (0, True), "trend_bucket_s": (0, True), "trend_window_s": (0, True),
    "trend_min_points": (3, False), "trend_confirm": (1, False), "trend_z": (0, True),
    "temp_trend_bucket_s": (0, True), "temp_trend_window_s": (0, True),
    "temp_trend_min_points": (3, False), "temp_trend_confirm": (1, False),
    "in_use_c_rate": (0, True), "flood_count": (1, False), "flood_window_s": (0, True),
    "silent_periods": (1, False), "shelve_default_s": (0, True), "shelve_max_s": (0, True),
}


def _number(value: Any, path: str, problems: list[tuple[str, str]],
            integer: bool = False) -> float | int | None:
    # bool is an int to Python, never a number to a person writing a config file
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append((path, f"must be {'an integer' if integer else 'a number'}, "
                         f"not {value!r}"))
        return None
    if integer and not isinstance(value, int):
        problems.append((path, f"must be an integer, not {value!r}"))
        return None
    if not math.isfinite(value):
        problems.append((path, f"must be finite, not {value!r}"))
        return None
    return value


def _on_delays(value: Any, path: str, problems: list[tuple[str, str]],
               defaults: dict[str, float]) -> dict[str, float]:
    out = dict(defaults)
    if not isinstance(value, Mapping):
        problems.append((path, "must be a table of rule = seconds"))
        return out
    for rule, seconds in value.items():
        p = f"{path}.{rule}"
        if rule not in defaults:
            problems.append((p, f"unknown rule (known: {', '.join(defaults)})"))
            continue
        s = _number(seconds, p, problems)
        if s is None:
            continue
        if s < 0:
            problems.append((p, "must be >= 0"))
        else:
            out[rule] = float(s)
    return out


def _notify_events(value: Any, path: str, problems: list[tuple[str, str]]) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        problems.append((path, "must be a list of event names"))
        return NOTIFY_EVENTS
    for v in value:
        if v not in EVENTS:
            problems.append((path, f"unknown event {v!r} (known: {', '.join(EVENTS)})"))
    return tuple(value)


def _thresholds(value: Any, path: str,
                problems: list[tuple[str, str]]) -> dict[str, dict[str, dict[int, int]]]:
    out: dict[str, dict[str, dict[int, int]]] = {}
    if not isinstance(value, Mapping):
        problems.append((path, "must be a table: thresholds.<chemistry>.<rule>.<level>"))
        return out
    for chem, rules in value.items():
        p_chem = f"{path}.{chem}"
        if chem not in (*limits.CHEMISTRIES, "all"):
            problems.append((p_chem, f"unknown chemistry (known: "
                             f"{', '.join((*limits.CHEMISTRIES, 'all'))})"))
            continue
        if not isinstance(rules, Mapping):
            problems.append((p_chem, "must be a table of rules"))
            continue
        for rule, levels in rules.items():
            p_rule = f"{p_chem}.{rule}"
            parsed = _levels(chem, rule, levels, p_rule, problems)
            if parsed is not None:
                out.setdefault(chem, {})[rule] = parsed
    # the overridden levels must still be ordered (L2 stricter than L1, ...) in every chemistry
    for chem in limits.CHEMISTRIES:
        for rule in {*out.get("all", {}), *out.get(chem, {})}:
            row = next(lim for lim in limits.limits_for(chem) if lim.rule == rule)
            levels = {**row.levels, **out.get("all", {}).get(rule, {}),
                      **out.get(chem, {}).get(rule, {})}
            ordered = [levels[k] for k in sorted(levels)]
            ok = all((b > a) if row.above else (b < a) for a, b in itertools.pairwise(ordered))
            if not ok:
                where = chem if rule in out.get(chem, {}) else "all"
                shown = ", ".join(f"L{k} {levels[k]}" for k in sorted(levels))
                problems.append((f"{path}.{where}.{rule}", f"levels must get stricter with the "
                                 f"level ({'rising' if row.above else 'falling'}) for {chem}: "
                                 f"{shown}"))
    return out


def _levels(chem: str, rule: str, levels: Any, path: str,
            problems: list[tuple[str, str]]) -> dict[int, int] | None:
    chems = limits.CHEMISTRIES if chem == "all" else (chem,)
    rows = [next((lim for lim in limits.limits_for(c) if lim.rule == rule), None) for c in chems]
    if rule == "board_silent":
        problems.append((path, "set alarms.silent_periods instead"))
        return None
    if rule not in schema.AlarmRule.encmapping or any(r is None for r in rows):
        known = sorted({lim.rule for lim in limits.LIMITS})
        problems.append((path, f"no thresholds for this rule (known: {', '.join(known)})"))
        return None
    if not isinstance(levels, Mapping):
        problems.append((path, "must be a table of level = threshold"))
        return None
    out: dict[int, int] = {}
    for level_key, threshold in levels.items():
        p = f"{path}.{level_key}"
        # TOML keys are strings: accept 1, "1" and "L1"
        text = str(level_key).upper().removeprefix("L")
        level = int(text) if text.isdigit() else None
        if level is None or any(level not in r.levels for r in rows if r is not None):
            have = sorted(rows[0].levels) if rows[0] else []
            problems.append((p, f"not a level of this rule (levels: "
                             f"{', '.join(f'L{x}' for x in have)})"))
            continue
        t = _number(threshold, p, problems, integer=True)
        if t is not None:
            out[level] = int(t)
    return out
