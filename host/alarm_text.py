"""What an alarm says to a person: where, what, how far past the limit, and what to do.

Every message names the board and site, the cell, probe or side, the value and the threshold
with units ("cell 7 at 4.31 V ≥ 4.30 V"); every action says what the level means in practice
(L1 advisory, L2 limit use and plan service, L3 stop now, L4 thermal event) plus the rule's own
first check. Cells and probes are numbered from 1 here, as printed on a pack; events carry the
wire's 0-based `subject_index`.

Values arrive in the table's units (limits.py): mV, 0.1 degC, Ohm/V, %; they are shown in V,
degC, K, K/min, K/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

# Units of an event's value and threshold, per rule (scope "forecast": hours to the L3 crossing).
UNITS = {
    "insulation": "Ohm/V", "temp_high": "0.1 degC", "temp_spread": "0.1 K",
    "temp_rise_rate": "0.1 K/min", "thermal_event": "0.1 K/s", "cell_overvoltage": "mV",
    "cell_undervoltage": "mV", "cell_spread": "mV", "capacity_soh": "%", "r0_growth": "%",
    "board_silent": "periods", "sensor_fault": "sensors", "pack_overvoltage": "mV",
    "pack_undervoltage": "mV", "overcharge": "",
}
SCOPE_UNITS = {"forecast": "h", "seq": "frames"}

TITLES = {
    "insulation": "insulation", "temp_high": "high temperature",
    "temp_spread": "temperature spread", "temp_rise_rate": "temperature rise",
    "thermal_event": "THERMAL EVENT", "cell_overvoltage": "cell overvoltage",
    "cell_undervoltage": "cell undervoltage", "cell_spread": "cell voltage spread",
    "capacity_soh": "capacity (SoH)", "r0_growth": "internal resistance growth",
    "board_silent": "board silent", "sensor_fault": "sensor fault",
    "pack_overvoltage": "pack overvoltage", "pack_undervoltage": "pack undervoltage",
    "overcharge": "overcharge",
}
SCOPE_TITLES = {("insulation", "forecast"): "insulation degrading",
                ("temp_high", "forecast"): "temperature in use rising",
                ("board_silent", "seq"): "frames lost"}

LEVEL_ACTIONS = {
    1: "Advisory, no effect on use: note it and check at the next service.",
    2: "Limit use: derate (no fast charging, lighter loads) and plan service soon.",
    3: "STOP NOW: stop charging and discharging, isolate the pack and keep people away; if it "
       "smokes, smells, hisses or swells, evacuate and call the fire service.",
    4: "THERMAL EVENT: evacuate the area now and call the fire service; do not approach the "
       "pack or try to put it out yourself; warn everyone nearby.",
}
RULE_HINTS = {
    "insulation": "Check for moisture, coolant or electrolyte leaks and damaged HV cabling or "
                  "connectors.",
    "temp_high": "Reduce the load or charging current and check the cooling.",
    "temp_spread": "Check the cooling airflow and that every probe sits firmly on its cell.",
    "temp_rise_rate": "Stop charging or discharging and watch the temperature.",
    "cell_overvoltage": "Stop charging; check the charger's voltage setting and the balancing.",
    "cell_undervoltage": "Stop discharging; recharge slowly only above the L3 limit, below it "
                         "have the cell inspected before any charge.",
    "cell_spread": "Balance the pack; a cell that keeps drifting is weak or leaks current.",
    "capacity_soh": "Retirement or second-life candidate: run a capacity test.",
    "r0_growth": "Expect less power and more heat: reduce peak loads, plan replacement.",
    "board_silent": "Check the board's power and its link (WiFi, broker, serial cable): the pack "
                    "is unwatched meanwhile.",
    "sensor_fault": "Check the sensor's wiring and connector: its readings are ignored until "
                    "it reads again.",
}
SCOPE_HINTS = {
    ("insulation", "forecast"): "Inspect the pack for moisture or insulation damage before the "
                                "forecast crossing.",
    ("temp_high", "forecast"): "Each use runs hotter: check the cooling and the load profile.",
    ("board_silent", "seq"): "Frames were lost on the link: check its quality (WiFi signal, "
                             "cable); a link that keeps losing frames hides alarms.",
}
RECURRENCE_HINT = "It keeps coming back: the recurrence itself is the warning."
SIDES = ("HV+", "HV-")  # insulation subject_index: the side with the lower resistance


def title(rule: str, scope: str = "") -> str:
    return SCOPE_TITLES.get((rule, scope)) or TITLES.get(rule, rule.replace("_", " "))


def unit_of(rule: str, scope: str = "") -> str:
    return SCOPE_UNITS.get(scope) or UNITS.get(rule, "")


def volts(mv: float) -> str:
    # 2 decimals where they are exact, 3 otherwise: "2.996 V < 3.00 V", never "3.00 V < 3.00 V"
    return f"{mv / 1000:.2f} V" if round(mv) % 10 == 0 else f"{mv / 1000:.3f} V"


def quantity(rule: str, unit: str, value: float) -> str:
    """One value in a person's units."""
    if unit == "mV":
        return f"{value:.0f} mV" if rule == "cell_spread" else volts(value)
    if unit == "0.1 degC":
        return f"{value / 10:.1f} °C"
    if unit == "0.1 K":
        return f"{value / 10:.1f} K"
    if unit == "0.1 K/min":
        return f"{value / 10:.1f} K/min"
    if unit == "0.1 K/s":
        return f"{value / 10:.1f} K/s"
    if unit == "Ohm/V":
        return f"{value:.0f} Ω/V"
    if unit == "%":
        return f"{value:+.0f} %" if rule == "r0_growth" else f"{value:.1f} %"
    if unit == "h":
        return f"{value:.0f} h"
    return f"{value:g} {unit}".rstrip()


def subject_name(subject: str, index: int, probe_cell: tuple[int, ...] = ()) -> str:
    if subject == "cell":
        return f"cell {index + 1}"
    if subject == "probe":
        on = probe_cell[index] if index < len(probe_cell) else 0xFFFF
        return f"probe {index + 1}" + (f" (on cell {on + 1})" if on != 0xFFFF else "")
    return "pack"


def condition(rule: str, scope: str, subject: str, index: int, value: float | None,
              threshold: float | None, above: bool, *, mode: str = "crossed", detail: str = "",
              probe_cell: tuple[int, ...] = ()) -> str:
    """The reading against its limit. mode "crossed": "cell 7 at 4.31 V ≥ 4.30 V"; "holding"
    (inside the hysteresis band): "cell 7 at 4.27 V (held from 4.30 V)"; "back" (a clear or a
    level down): "cell 7 back at 4.18 V (clears < 4.20 V)"."""
    back = mode == "back"
    unit = unit_of(rule, scope)
    if scope == "forecast":
        if back or value is None:
            head = "forecast no longer within the horizon"
        else:
            head = f"L3 forecast in {quantity(rule, unit, value)}"
            if threshold is not None:
                head += f" (≤ {quantity(rule, unit, threshold)})"
        return f"{head}; {detail}" if detail else head
    if scope == "seq":
        return "frames flowing again" if back else f"{value or 0:.0f} frames lost (sequence gap)"
    if rule == "board_silent":
        if back:
            return "frames again"
        return detail or f"no frame for {value or 0:.0f} reporting periods"
    if rule == "sensor_fault":
        return "every sensor reads again" if back else (detail or f"{value or 0:.0f} sensors")
    if rule == "thermal_event" and back:
        return "the rise has stopped and a person has acknowledged it"
    if value is None:
        return detail or "(no reading)"
    v = quantity(rule, unit, value)
    if rule == "insulation":
        who = f"{SIDES[index] if index < len(SIDES) else 'pack'} side"
    elif rule == "cell_spread":
        who = "cell spread"
    elif rule == "temp_spread":
        who = "probe spread"
    elif rule in ("temp_rise_rate", "thermal_event"):
        who = f"{subject_name(subject, index, probe_cell)} rising"
    elif rule in ("capacity_soh", "r0_growth"):
        who = f"{subject_name(subject, index)} {'SoH' if rule == 'capacity_soh' else 'R0'}"
    else:
        who = subject_name(subject, index, probe_cell)
    if threshold is None:
        text = f"{who} at {v}"
    elif back:
        op = "<" if above else "≥"
        text = f"{who} back at {v} (clears {op} {quantity(rule, unit, threshold)})"
    elif mode == "holding":
        text = f"{who} at {v} (held from {quantity(rule, unit, threshold)})"
    else:
        op = "≥" if above else "<"
        text = f"{who} at {v} {op} {quantity(rule, unit, threshold)}"
    return f"{text}; {detail}" if detail and not back else text


def message(event: str, *, board_id: int, site: str, rule: str, scope: str, level: int,
            prev_level: int, cond: str, source: str, actor: str | None = None,
            note: str | None = None, reason: str | None = None,
            until_ms: int | None = None) -> str:
    where = f"board {board_id} ({site})"
    what = title(rule, scope)
    if event == "raised":
        text = f"{where}: {what} L{level}: {cond}"
        if source == "board":
            text += " (the board's own alarm)"
    elif event in ("escalated", "deescalated"):
        verb = "escalated" if event == "escalated" else "down"
        text = f"{where}: {what} {verb} L{prev_level}→L{level}: {reason or cond}"
    elif event == "cleared":
        text = f"{where}: {what} L{prev_level} cleared: {cond}"
    elif event == "acknowledged":
        text = f"{where}: {what} L{level} acknowledged by {actor}"
    elif event == "shelved":
        text = f"{where}: {what} L{level} shelved by {actor} until {iso(until_ms)}"
    elif event == "unshelved":
        text = f"{where}: {what} L{level} unshelved" + (f" by {actor}" if actor else "")
    elif event == "suppressed":
        text = f"{where}: {what} L{level} suppressed: board out of service (by {actor})"
    elif event == "returned_to_service":
        text = f"{where}: {what} L{level}: board back in service (by {actor})"
    else:
        text = f"{where}: {what} L{level} {event}"
    if note:
        text += f" ({note})"
    return text


def action(rule: str, scope: str, level: int, event: str, *, active: bool = True,
           acked: bool = False, recurrence: bool = False) -> str:
    """What to do now, for the level and the rule."""
    if not active:
        return "No action needed." if acked else "No action needed; acknowledge to close."
    if event in ("acknowledged", "shelved", "suppressed"):
        return "Recorded."
    parts = [LEVEL_ACTIONS.get(level, "")]
    hint = SCOPE_HINTS.get((rule, scope)) or RULE_HINTS.get(rule)
    if hint and level < 4:
        parts.append(hint)
    if recurrence:
        parts.append(RECURRENCE_HINT)
    return " ".join(p for p in parts if p)


def iso(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "?"
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def summary(site: str, counts: Mapping[tuple[int, str], int], first_ms: int,
            last_ms: int) -> str:
    """One line for a flood of notifications: how many of what, at one site."""
    total = sum(counts.values())
    parts = ", ".join(f"{n} x L{lvl} {title(rule)}" for (lvl, rule), n in
                      sorted(counts.items(), key=lambda kv: (-kv[0][0], -kv[1], kv[0][1])))
    return (f"site {site}: alarm flood, {total} more notifications grouped between "
            f"{iso(first_ms)} and {iso(last_ms)}: {parts}")
