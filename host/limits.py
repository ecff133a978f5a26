"""Alarm limits: every default threshold, per chemistry, with its source. The one table.

The host's alarm engine evaluates all of it; the firmware evaluates the L3/L4 rows locally
(so a board with no link still drives its alarm output), from `firmware/limits.py`, which is
generated from this table (`make generate`) and checked fresh by a test, as are the rules
and settings tables of docs/alarms.md.

Units follow the quantity's name. Rule names are the wire's alarm rules (protocol/schema.py,
GB/T 32960 bit numbers), so a limit, a frame's alarm flag and an alarm message agree.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packsentry.protocol import schema

CHEMISTRIES = ("nmc", "lfp")


@dataclass(frozen=True)
class Limit:
    rule: str  # an AlarmRule name
    quantity: str  # what is compared, with its unit in the name
    above: bool  # True: alarm when quantity >= threshold; False: when quantity < threshold
    levels: dict[int, int]  # alarm level -> threshold
    clear: str  # hysteresis: how far back the value must come to clear
    source: str
    chemistry: str | None = None  # None: all chemistries
    extra: dict[str, int] = field(default_factory=dict)  # rule-specific parameters

    def __post_init__(self) -> None:
        if self.rule not in schema.AlarmRule.encmapping:
            raise ValueError(f"{self.rule!r} is not an alarm rule of the wire schema")


_INSULATION_SRC = ("UN ECE R100 and GB 18384-2020: at least 100 Ohm/V (DC circuits) and "
                   "500 Ohm/V (AC circuits) of maximum working voltage")
_GBT = "GB/T 32960.3 general alarm flags (levels per GB/T 32960.3-2025)"

LIMITS: tuple[Limit, ...] = (
    Limit("insulation", "riso_ohm_per_v", above=False, levels={1: 500, 2: 250, 3: 100},
          clear="value >= 1.2 x threshold", source=_INSULATION_SRC,
          extra={"clear_pct": 120, "forecast_h": 72}),
    Limit("temp_high", "temp_max_dc", above=True, levels={1: 500, 2: 550, 3: 600},
          clear="3 K below", source=f"{_GBT}, bit 1; cell makers' 60 degC operating limit",
          extra={"clear_dc": 30}),
    Limit("temp_spread", "temp_spread_dc", above=True, levels={1: 80, 2: 120, 3: 150},
          clear="3 K below", source=f"{_GBT}, bit 0", extra={"clear_dc": 30}),
    Limit("temp_rise_rate", "temp_rise_dc_per_min", above=True, levels={2: 10, 3: 50},
          clear="below the threshold for 2 min", source="packsentry design: early thermal "
          "warning ahead of the GB 38031 runaway criterion", extra={"l2_hold_s": 120}),
    Limit("thermal_event", "temp_rise_dc_per_s", above=True, levels={4: 10},
          clear="operator acknowledgement only",
          source="GB 38031-2020 thermal runaway criteria: dT/dt >= 1 degC/s for >= 3 s with "
          "T >= the profile's maximum temperature or a voltage drop > 25 %",
          extra={"hold_s": 3, "voltage_drop_pct": 25}),
    Limit("cell_overvoltage", "cell_max_mv", above=True, levels={1: 4200, 2: 4250, 3: 4300},
          clear="50 mV below", source=f"{_GBT}, bit 5; NMC datasheet charge limit 4.20 V",
          chemistry="nmc", extra={"clear_mv": 50}),
    Limit("cell_overvoltage", "cell_max_mv", above=True, levels={1: 3600, 2: 3650, 3: 3750},
          clear="50 mV below", source=f"{_GBT}, bit 5; LFP datasheet charge limit 3.60 V",
          chemistry="lfp", extra={"clear_mv": 50}),
    Limit("cell_undervoltage", "cell_min_mv", above=False, levels={1: 3000, 2: 2800, 3: 2500},
          clear="50 mV above", source=f"{_GBT}, bit 6; NMC discharge cut-off 2.5-3.0 V",
          chemistry="nmc", extra={"clear_mv": 50}),
    Limit("cell_undervoltage", "cell_min_mv", above=False, levels={1: 2800, 2: 2500, 3: 2000},
          clear="50 mV above", source=f"{_GBT}, bit 6; LFP discharge cut-off 2.0-2.5 V",
          chemistry="lfp", extra={"clear_mv": 50}),
    Limit("cell_spread", "cell_spread_mv", above=True, levels={1: 50, 2: 100, 3: 300},
          clear="20 % below", source=f"{_GBT}, bit 10 (poor cell consistency)",
          extra={"clear_pct": 80}),
    Limit("capacity_soh", "capacity_soh_pct", above=False, levels={1: 80, 2: 70},
          clear="2 points above", source="80 %: end of first life, retirement candidate "
          "(industry convention, e.g. USABC)", extra={"clear_pct_points": 2}),
    Limit("r0_growth", "r0_growth_pct", above=True, levels={1: 50, 2: 100},
          clear="10 points below", source="packsentry design: doubling of R0 marks end of "
          "life for power use", extra={"clear_pct_points": 10}),
    Limit("board_silent", "silent_periods", above=True, levels={1: 3},
          clear="next frame", source="packsentry design: 3 missed reporting periods or the "
          "MQTT last will"),
)


def limits_for(chemistry: str) -> tuple[Limit, ...]:
    if chemistry not in CHEMISTRIES:
        raise ValueError(f"unknown chemistry {chemistry!r}; known: {', '.join(CHEMISTRIES)}")
    return tuple(lim for lim in LIMITS if lim.chemistry in (None, chemistry))


def local_limits() -> dict[str, int]:
    """The constants the board evaluates itself (L3 and L4), for firmware/limits.py."""
    out: dict[str, int] = {}
    for chem in CHEMISTRIES:
        for lim in limits_for(chem):
            for level in (3, 4):
                if level not in lim.levels:
                    continue
                prefix = lim.rule.upper()
                if lim.chemistry:
                    prefix += "_" + chem.upper()
                out[f"{prefix}_L{level}"] = lim.levels[level]
                for key, value in lim.extra.items():
                    out[f"{lim.rule.upper()}_{key.upper()}"] = value
    return dict(sorted(out.items()))


# -- firmware/limits.py ----------------------------------------------------------------------

FIRMWARE_LIMITS = Path(__file__).resolve().parent.parent / "firmware" / "limits.py"


def firmware_module() -> str:
    lines = ['"""Local alarm limits (L3 and L4) the board evaluates itself. Generated from',
             'host/limits.py by `make generate`. Do not edit: that table has the sources."""',
             "", "from micropython import const", ""]
    lines += [f"{name} = const({value})" for name, value in local_limits().items()]
    return "\n".join(lines) + "\n"


# -- docs/alarms.md -----------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "alarms.md"
# quantity -> (divisor, decimals, unit) for people
_SHOWN = {
    "riso_ohm_per_v": (1, 0, "Ω/V"), "temp_max_dc": (10, 1, "°C"), "temp_spread_dc": (10, 1, "K"),
    "temp_rise_dc_per_min": (10, 1, "K/min"), "temp_rise_dc_per_s": (10, 1, "K/s"),
    "cell_max_mv": (1000, 2, "V"), "cell_min_mv": (1000, 2, "V"), "cell_spread_mv": (1, 0, "mV"),
    "capacity_soh_pct": (1, 0, "%"), "r0_growth_pct": (1, 0, "%"),
    "silent_periods": (1, 0, "periods"),
}


def _shown(lim: Limit, value: int) -> str:
    div, decimals, unit = _SHOWN[lim.quantity]
    return f"{'≥' if lim.above else '<'} {value / div:.{decimals}f} {unit}"


def markdown_table() -> str:
    """The rules table of docs/alarms.md, from LIMITS (a test compares the two)."""
    bits = {name: int(mask).bit_length() - 1 for name, mask in schema.AlarmFlags.flags.items()}
    lines = ["| rule (bit) | quantity | chemistry | L1 | L2 | L3 | L4 | clears | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lim in LIMITS:
        levels = [_shown(lim, lim.levels[lvl]) if lvl in lim.levels else "" for lvl in range(1, 5)]
        extra = ", ".join(f"{k} {v}" for k, v in lim.extra.items())
        clear = lim.clear + (f" ({extra})" if extra else "")
        lines.append(f"| `{lim.rule}` ({bits[lim.rule]}) | `{lim.quantity}` | "
                     f"{lim.chemistry or 'all'} | {' | '.join(levels)} | {clear} | "
                     f"{lim.source} |")
    return "\n".join(lines) + "\n"


def _docs_blocks() -> dict[str, str]:
    from .alarm_settings import markdown_keys  # its defaults read this table

    return {"rules table": markdown_table(), "settings table": markdown_keys()}


def docs_text(current: str) -> str:
    """docs/alarms.md with its generated blocks (between marker comments) brought up to date."""
    for name, block in _docs_blocks().items():
        begin, end = f"<!-- begin {name}: generated by `make generate` -->\n", \
            f"<!-- end {name} -->"
        i, j = current.find(begin), current.find(end)
        if i < 0 or j < i:
            raise ValueError(f"{DOCS}: markers for the {name} missing")
        current = current[:i + len(begin)] + block + current[j:]
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m packsentry.host.limits",
        description="Write firmware/limits.py and the tables of docs/alarms.md from the table.")
    parser.add_argument("--check", action="store_true", help="exit 1 if it is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, render in ((FIRMWARE_LIMITS, lambda cur: firmware_module()), (DOCS, docs_text)):
        current = path.read_text() if path.exists() else ""
        text = render(current)
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(path.parent.parent))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(path.parent.parent)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))} (run `make generate`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
