"""HIL scenarios: one TOML file each in hil/scenarios/, read and checked here.

A scenario says what pack the board watches (a hil/packsim.py PackSpec, its load and its
faults), how the board is configured, what happens to its link and when, and what the host
must make of it: which alarms (rule, level, how they come about) between which times, in
which order, and the state-of-health ranges. docs/hil.md ("Scenarios") has the format with
an example; every key is checked here, with its table and a "did you mean".

Times are seconds of board time from the moment the board starts (`t = 0`, which is
midnight for the simulator's daily schedules).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
TRANSPORTS = ("serial", "mqtt")
LINK_FAULTS = ("serial_unplug", "broker_restart", "wifi_down", "frames")
EVENTS = ("raised", "escalated")
SOURCES = ("host", "board", "predicted")
LOAD_KINDS = ("rest", "constant", "charge", "drive", "depot_day")


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class LinkFault:
    """Something done to the link from start_s to end_s (board time):
    serial_unplug (the USB cable out), frames (each frame from the board dropped, one bit
    flipped, duplicated or delayed with the given probabilities, decided by
    packsim.LinkFaults; serial only: MQTT runs on TCP), broker_restart (Mosquitto down, then
    a fresh one on the same port), wifi_down (the board's access point gone). A run skips
    the faults of the other transport."""

    kind: str
    start_s: float
    end_s: float
    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    max_delay_s: float = 2.0
    seed: int = 1

    def frame_faults(self) -> Any:
        """A `frames` fault's packsim.LinkFaults."""
        from .packsim import LinkFaults

        return LinkFaults(self.seed, self.drop, self.corrupt, self.duplicate, self.delay,
                          self.max_delay_s)

    @property
    def transport(self) -> str | None:
        return {"serial_unplug": "serial", "frames": "serial", "broker_restart": "mqtt",
                "wifi_down": "mqtt"}[self.kind]


@dataclass(frozen=True)
class AlarmExpectation:
    """The first time the alarm of `rule` reaches `level` (an event `raised` or `escalated`
    at that level, or above it if `at_least`), from `source` if given (host, board, or
    predicted: the forecast), between earliest_s and latest_s."""

    rule: str
    level: int
    earliest_s: float = 0.0
    latest_s: float = math.inf
    source: str | None = None
    event: str | None = None  # raised | escalated; None: either
    at_least: bool = False
    why: str = ""

    @property
    def name(self) -> str:
        src = f" ({self.source})" if self.source else ""
        ev = f" {self.event}" if self.event else ""
        return f"{self.rule} L{self.level}{'+' if self.at_least else ''}{src}{ev}"


# [[expect.board_alarm]] uses the same keys: the board's own alarm frames (its local L3/L4
# rules, firmware/safety.py), as the host stored them; source does not apply.


@dataclass(frozen=True)
class OrderExpectation:
    """`first` comes before `then` (each the first such alarm; `then` may never come)."""

    first: AlarmExpectation
    then: AlarmExpectation


@dataclass(frozen=True)
class SohExpectation:
    """The latest estimate of `unit` (-1: the pack, else a cell index; None: every unit)."""

    min_pct: float
    max_pct: float
    unit: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    duration_s: float
    pack: Mapping[str, Any]  # PackSpec keyword arguments
    seed: int = 1
    load: Mapping[str, Any] = field(default_factory=lambda: {"kind": "rest"})
    faults: tuple[Mapping[str, Any], ...] = ()  # packsim Fault keyword arguments (pack 0)
    board: Mapping[str, Any] = field(default_factory=dict)  # config.json overrides
    daemon_toml: str = ""  # appended to the daemon's config
    link_faults: tuple[LinkFault, ...] = ()
    alarms: tuple[AlarmExpectation, ...] = ()
    board_alarms: tuple[AlarmExpectation, ...] = ()  # the board's own alarm frames
    order: tuple[OrderExpectation, ...] = ()
    soh: tuple[SohExpectation, ...] = ()
    only_expected: bool = False  # any other alarm (not in `allow`) fails
    allow: tuple[str, ...] = ()  # rules that may also come
    pre_event_samples: int = 0  # at least this many pre-event samples stored
    all_frames: bool = True  # nothing the board stored is lost: store empty, nothing dropped
    speed: float = 1000.0
    cpu: float | None = None
    feed_s: float = 1.0
    transports: tuple[str, ...] = TRANSPORTS
    drain_s: float = 120.0  # board time after duration_s for the last acks and alarms

    def link_faults_for(self, transport: str) -> list[LinkFault]:
        return [f for f in self.link_faults if f.transport == transport]


# -- loading ---------------------------------------------------------------------------------

_TOP = {"name", "description", "duration_s", "speed", "cpu", "feed_s", "transports",
        "drain_s", "pack", "sim", "board", "daemon", "fault", "link_fault", "expect"}
_SIM = {"seed", "load"}
_DAEMON = {"toml"}
_EXPECT = {"alarm", "board_alarm", "order", "soh", "only_expected", "allow",
           "pre_event_samples", "all_frames"}
_ALARM = {f.name for f in dataclasses.fields(AlarmExpectation)}
_LINK = {f.name for f in dataclasses.fields(LinkFault)}
_SOH = {"unit", "min_pct", "max_pct"}
_FAULT = {"kind", "start_s", "end_s", "cell", "probe", "params"}


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ScenarioError(f"{where}: unknown key {key!r}{hint}")


def _alarm(d: Mapping[str, Any], where: str) -> AlarmExpectation:
    _unknown(d, _ALARM, where)
    try:
        a = AlarmExpectation(
            rule=str(d["rule"]), level=int(d["level"]), earliest_s=float(d.get("earliest_s", 0)),
            latest_s=float(d.get("latest_s", math.inf)), source=d.get("source"),
            event=d.get("event"), at_least=bool(d.get("at_least", False)),
            why=str(d.get("why", "")))
    except KeyError as exc:
        raise ScenarioError(f"{where}: {exc.args[0]} is required") from None
    from packsentry.protocol import schema

    rules = [str(r) for r in schema.AlarmRule.encmapping]
    if a.rule not in rules:
        near = difflib.get_close_matches(a.rule, rules, n=1)
        raise ScenarioError(f"{where}: unknown rule {a.rule!r}"
                            + (f" (did you mean {near[0]!r}?)" if near else ""))
    if not 1 <= a.level <= 4:
        raise ScenarioError(f"{where}: level must be 1 to 4")
    if a.source is not None and a.source not in SOURCES:
        raise ScenarioError(f"{where}: source must be one of {', '.join(SOURCES)}")
    if a.event is not None and a.event not in EVENTS:
        raise ScenarioError(f"{where}: event must be one of {', '.join(EVENTS)}")
    if a.latest_s < a.earliest_s:
        raise ScenarioError(f"{where}: latest_s is before earliest_s")
    return a


def load(path: Path | str) -> Scenario:
    """Read and check one scenario file."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    where = path.name
    _unknown(d, _TOP, where)
    for name, known in (("sim", _SIM), ("daemon", _DAEMON), ("expect", _EXPECT)):
        _unknown(d.get(name, {}), known, f"{where} [{name}]")
    if "duration_s" not in d or "pack" not in d:
        raise ScenarioError(f"{where}: duration_s and [pack] are required")
    from .packsim import Fault, PackSpec

    pack = dict(d["pack"])
    if "probe_cell" in pack:
        pack["probe_cell"] = tuple(pack["probe_cell"])
    try:
        PackSpec(**pack)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where} [pack]: {exc}") from None
    faults = []
    for i, f in enumerate(d.get("fault", [])):
        _unknown(f, _FAULT, f"{where} [[fault]] {i + 1}")
        try:
            Fault(**{**f, "params": dict(f.get("params", {}))})
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"{where} [[fault]] {i + 1}: {exc}") from None
        faults.append(dict(f))
    sim = d.get("sim", {})
    load_spec = dict(sim.get("load", {"kind": "rest"}))
    if load_spec.get("kind") not in LOAD_KINDS:
        raise ScenarioError(f"{where} [sim] load: kind must be one of {', '.join(LOAD_KINDS)}")
    links = []
    for i, f in enumerate(d.get("link_fault", [])):
        w = f"{where} [[link_fault]] {i + 1}"
        _unknown(f, _LINK, w)
        if f.get("kind") not in LINK_FAULTS:
            raise ScenarioError(f"{w}: kind must be one of {', '.join(LINK_FAULTS)}")
        lf = LinkFault(**f)
        if not lf.end_s > lf.start_s:
            raise ScenarioError(f"{w}: end_s must be after start_s")
        links.append(lf)
    exp = d.get("expect", {})
    alarms = tuple(_alarm(a, f"{where} [[expect.alarm]] {i + 1}")
                   for i, a in enumerate(exp.get("alarm", [])))
    board_alarms = tuple(_alarm(a, f"{where} [[expect.board_alarm]] {i + 1}")
                         for i, a in enumerate(exp.get("board_alarm", [])))
    order = []
    for i, o in enumerate(exp.get("order", [])):
        w = f"{where} [[expect.order]] {i + 1}"
        _unknown(o, {"first", "then"}, w)
        order.append(OrderExpectation(_alarm(o["first"], w + " first"),
                                      _alarm(o["then"], w + " then")))
    soh = []
    for i, s in enumerate(exp.get("soh", [])):
        _unknown(s, _SOH, f"{where} [[expect.soh]] {i + 1}")
        soh.append(SohExpectation(float(s["min_pct"]), float(s["max_pct"]), s.get("unit")))
    transports = tuple(d.get("transports", TRANSPORTS))
    if not set(transports) <= set(TRANSPORTS):
        raise ScenarioError(f"{where}: transports are {', '.join(TRANSPORTS)}")
    return Scenario(
        name=str(d.get("name", path.stem)), path=path,
        description=str(d.get("description", "")).strip(), duration_s=float(d["duration_s"]),
        pack=pack, seed=int(sim.get("seed", 1)), load=load_spec, faults=tuple(faults),
        board=dict(d.get("board", {})), daemon_toml=str(d.get("daemon", {}).get("toml", "")),
        link_faults=tuple(links), alarms=alarms, board_alarms=board_alarms,
        order=tuple(order), soh=tuple(soh),
        only_expected=bool(exp.get("only_expected", False)),
        allow=tuple(exp.get("allow", ())),
        pre_event_samples=int(exp.get("pre_event_samples", 0)),
        all_frames=bool(exp.get("all_frames", True)),
        speed=float(d.get("speed", 1000.0)),
        cpu=float(d["cpu"]) if "cpu" in d else None, feed_s=float(d.get("feed_s", 1.0)),
        transports=transports, drain_s=float(d.get("drain_s", 120.0)))


def available(directory: Path = SCENARIO_DIR) -> dict[str, Path]:
    """Scenario name (file stem) -> file."""
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}


def find(name_or_path: str, directory: Path = SCENARIO_DIR) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    names = available(directory)
    if name_or_path in names:
        return names[name_or_path]
    near = difflib.get_close_matches(name_or_path, list(names), n=1)
    raise ScenarioError(f"no scenario {name_or_path!r}"
                        + (f" (did you mean {near[0]!r}?)" if near else "")
                        + f"; `packsentry hil list` shows the {len(names)} there are")


def load_profile(spec: Mapping[str, Any]) -> Any:
    """[sim] load -> packsim.LoadProfile: {kind = "rest" | "constant" | "charge" | "drive" |
    "depot_day", and that helper's arguments}."""
    from .packsim import LoadProfile

    args = {k: v for k, v in spec.items() if k != "kind"}
    return getattr(LoadProfile, spec["kind"])(**args)
