"""The alarm engine: tiered alarms (DESIGN.md §4) from samples, estimates, board alarm frames
and link events, with an ISA-18.2 / IEC 62682 lifecycle.

Pure logic: time comes in with every call (the frame's `ts_ms`, or the daemon's clock for
`tick` and operator actions), nothing here reads a clock, starts a thread or does I/O, and the
whole state is a JSON document (`state()` / `load_state()`; also in parts, a head and one per
board, so that a save after an event writes only the boards whose alarms moved), so a restart
continues where it stopped and a replayed trace gives the same events.

Model (see docs/alarms.md for the full picture):

- One *track* per (board, rule, scope). Sample rules are per board (scope ""; the event names
  the worst cell or probe), estimates per subject (scope "cell:3"), and two scopes are
  separate alarms of their own: "forecast" (the predicted L2) and "seq" (lost frames).
- A track's level is the highest of: the host's own evaluation (thresholds from limits.py plus
  the settings' overrides, hysteresis, on-delay), the board's local alarm (its alarm frames
  and the alarm flags of its samples: same instance, highest level wins), and the latch of a
  thermal event; plus one level per `recurrence_count` raises within the recurrence window,
  never above L3.
- A track with a level above 0 has an open alarm *instance* (`alarm_id`), which lives until
  its condition has cleared and a person has acknowledged it (active_unack → active_ack →
  cleared; or active_unack → cleared_unack → cleared). Shelving (per track, timed, L1/L2 only)
  and suppression (per board, out of service, all but L4) hide an alarm from people; it is
  still evaluated and every transition still is an event.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np

from packsentry.protocol import layout, schema

from . import alarm_text as text
from . import limits
from .alarm_settings import AlarmSettings

STATE_VERSION = 1
STATES = ("active_unack", "active_ack", "cleared_unack", "cleared", "shelved", "suppressed")
SOURCES = ("host", "board", "predicted")

NOT_ON_CELL = 0xFFFF  # probe_cell value of a probe that is not on a cell (ambient, busbar)
_RISE_WINDOW_MS = 60_000  # rise rate: over the last minute ...
_RISE_MIN_MS = 30_000  # ... or at least half of it
_RISE_MAX_MS = 300_000  # a reference older than this is too coarse for a rate
# the rules whose readings every quiet sample sets (_quiet_readings), in the order the quiet
# path has always made their tracks (the saved state lists tracks in that order)
_READING_RULES = ("sensor_fault", "insulation", "temp_high", "temp_spread", "temp_rise_rate",
                  "thermal_event", "cell_overvoltage", "cell_undervoltage", "cell_spread")
# the columns _quiet_samples screens
_SCREENED = ("pack_mv", "current_ma", "riso_pos_kohm", "riso_neg_kohm", "alarm_flags", "temps_dc",
             "cells_mv")
_RUN_MIN = 6  # on_run screens runs at least this long; shorter ones go sample by sample
_FLEET_MIN = 4  # on_runs screens short runs together when at least this many boards
_DROP_WINDOW_MS = 60_000  # thermal event: voltage drop against the highest of the last minute
_TREND_CLEAR_Z = 0.7  # a forecast clears when |z| falls below 70 % of trend_z ...
_TREND_CLEAR_HORIZON = 1.5  # ... or its crossing moves beyond 1.5 x the horizon


_MARKERS = layout.sample_markers()  # from the wire schema, not retyped here
_FLAGS = {name: int(mask) for name, mask in schema.AlarmFlags.flags.items()}


# -- public records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardProfile:
    """What a board's birth frame says about its pack; the engine needs it before samples."""

    board_id: int
    site: str
    chemistry: str  # "nmc" | "lfp"
    cells_series: int
    rated_mah: int
    max_pack_mv: int
    max_temp_dc: int
    sample_period_ms: int
    n_probes: int
    n_cells: int
    probe_cell: tuple[int, ...]
    riso_period_ms: int = 0  # insulation measurement period (0: unknown)

    @classmethod
    def from_birth(cls, board_id: int, site: str, birth: Mapping[str, Any]) -> BoardProfile:
        """From a decoded birth payload (the codec's dict form)."""
        return cls(board_id=board_id, site=site, chemistry=str(birth["chemistry"]),
                   cells_series=birth["cells_series"], rated_mah=birth["rated_mah"],
                   max_pack_mv=birth["max_pack_mv"], max_temp_dc=birth["max_temp_dc"],
                   sample_period_ms=birth["sample_period_ms"], n_probes=birth["n_probes"],
                   n_cells=birth["n_cells"], probe_cell=tuple(birth["probe_cell"]),
                   riso_period_ms=birth.get("riso_period_ms", 0))


@dataclass(frozen=True)
class AlarmEvent:
    """One lifecycle transition of one alarm: one row of the audit log."""

    alarm_id: int
    board_id: int
    site: str
    rule: str
    level: int
    prev_level: int
    event: str  # one of alarm_settings.EVENTS
    state: str  # one of STATES, after the transition ("cleared": the alarm is closed)
    subject: str  # "pack" | "cell" | "probe"
    subject_index: int  # 0-based, as on the wire
    value: float | None
    threshold: float | None
    unit: str
    ts_ms: int
    source: str  # one of SOURCES
    message: str
    action: str
    actor: str | None = None
    note: str | None = None
    scope: str = ""  # "" | "forecast" | "seq" | "<subject>:<index>" (estimates)
    active: bool = False  # the condition holds (whatever shelving or suppression shows)
    acked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlarmEvent:
        return cls(**d)


# -- internal state -----------------------------------------------------------------------------


@dataclass
class _Track:
    """Evaluation and lifecycle of one (board, rule, scope)."""

    board_id: int
    rule: str
    scope: str = ""
    subject: str = "pack"
    subject_index: int = 0
    # the host's evaluation
    value: float | None = None
    detail: str = ""
    host_level: int = 0
    since_ms: dict[int, int] = field(default_factory=dict)  # level -> condition holding since
    below_since_ms: dict[int, int] = field(default_factory=dict)  # time-based clears
    latched: bool = False  # thermal event: only people clear it
    # the board's own alarm for the same thing
    board_level: int = 0
    board_value: float | None = None
    board_threshold: float | None = None
    board_subject: str = "pack"
    board_index: int = 0
    board_ms: int = 0  # time of the newest board alarm frame applied (older ones are stale)
    # lifecycle
    raises_ms: list[int] = field(default_factory=list)  # recurrence history
    shelved_until_ms: int | None = None
    alarm_id: int | None = None
    level: int = 0  # effective level of the open instance
    boost: int = 0  # recurrence levels added at its last raise
    active: bool = False
    acked: bool = False
    last: AlarmEvent | None = None

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.board_id, self.rule, self.scope)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (and the key): a quiet track's JSON
        is ~100 bytes this way instead of ~450, and a board has a dozen tracks."""
        d = {name: v for name, default in _TRACK_PLAIN
             if (v := getattr(self, name)) != default or name in _TRACK_KEY}
        if self.since_ms:
            d["since_ms"] = {str(k): v for k, v in self.since_ms.items()}
        if self.below_since_ms:
            d["below_since_ms"] = {str(k): v for k, v in self.below_since_ms.items()}
        if self.last:
            d["last"] = self.last.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Track:
        d = dict(d)
        d["since_ms"] = {int(k): v for k, v in d.get("since_ms", {}).items()}
        d["below_since_ms"] = {int(k): v for k, v in d.get("below_since_ms", {}).items()}
        d["last"] = AlarmEvent.from_dict(d["last"]) if d.get("last") else None
        return cls(**d)


_TRACK_KEY = ("board_id", "rule", "scope")
# the fields saved as they are, with their defaults (to_dict converts the other three)
_TRACK_PLAIN = tuple(
    (f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in dataclasses.fields(_Track) if f.name not in ("since_ms", "below_since_ms", "last"))


@dataclass
class _Trend:
    """Per-interval worst values of one quantity, and the forecast built on them."""

    bucket: int | None = None  # index of the open interval
    worst: float | None = None  # its worst value so far
    points: list[list[float]] = field(default_factory=list)  # [t_h, worst] of closed ones
    streak: int = 0  # consecutive evaluations pointing the other way (confirmation)
    on: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SAVED_HIST_STEP_MS = 1_000


def _thinned(hist: list[list[Any]]) -> list[list[Any]]:
    """The rise history as saved: the reference (oldest), about one sample a second after it,
    the two newest. A 10 Hz board keeps 600 samples a minute, and the fleet's saved state was
    mostly those (27 MB of 32 at 1 000 boards); after a restart the rates are taken against a
    reference as old as before, to within a second. A history of 1 Hz or slower is saved
    whole. (A stride, not a walk: this runs for every board of the fleet every 10 s.)"""
    n = len(hist)
    if n <= 3:
        return hist
    stride = -(-_SAVED_HIST_STEP_MS * (n - 1) // max(hist[-1][0] - hist[0][0], 1))  # (ceil)
    if stride <= 1:
        return hist
    return hist[:n - 2:stride] + hist[-2:]


@dataclass
class _Board:
    profile: BoardProfile | None = None
    in_service: bool = True
    last_sample_ms: int | None = None  # newest sample evaluated
    last_frame_ms: int | None = None  # newest frame of any kind (silence)
    flags: int = 0  # alarm_flags of the newest sample evaluated: the board's alarms now
    report_ms: int = 0  # time one frame covers when the board sends batches (else 0)
    offline: bool = False  # MQTT last will seen and nothing since
    first_sample_ms: int | None = None  # since the profile was set
    riso_seen: bool = False  # a valid insulation reading since the profile was set
    seq_gap_ms: int | None = None
    # [ts_ms, pack_mv or None, [temp_dc or None per probe]]
    hist: list[list[Any]] = field(default_factory=list)
    rising_since_ms: list[int | None] = field(default_factory=list)  # per probe, dT/dt
    rising_steps: list[int] = field(default_factory=list)  # per probe, intervals in a row
    trends: dict[str, _Trend] = field(default_factory=dict)  # "insulation" | "temp_high"

    def to_dict(self) -> dict[str, Any]:
        # (the field names listed once and the profile's vars, not dataclasses.fields and
        # asdict: this runs for every board every 10 s, asdict deep-copies, and the
        # profile's fields are flat)
        d = {name: getattr(self, name) for name in _BOARD_FIELDS}
        d["hist"] = _thinned(self.hist)
        d["profile"] = dict(vars(self.profile)) if self.profile else None
        d["trends"] = {k: t.to_dict() for k, t in self.trends.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Board:
        d = dict(d)
        if d["profile"]:
            p = dict(d["profile"])
            p["probe_cell"] = tuple(p["probe_cell"])
            d["profile"] = BoardProfile(**p)
        d["trends"] = {k: _Trend(**t) for k, t in d["trends"].items()}
        return cls(**d)


_BOARD_FIELDS = tuple(f.name for f in dataclasses.fields(_Board))


class _Candidate(NamedTuple):
    """A board's one-sample run that may be quiet, with its history as _remember will
    leave it (what _quiet_samples screens)."""

    pos: int  # its row in the screened columns
    board: _Board
    profile: BoardProfile
    ts_ms: int
    has_hist: bool  # a sample before it: a reference and a previous one exist
    ref: list[Any]  # the rise reference [ts_ms, pack_mv, temps]
    prev: list[Any]  # the previous sample, the same way
    since_ms: list[int]  # the thermal event's rising state per probe (-1: not rising)
    steps: list[int]


class _Readings(NamedTuple):
    """A quiet sample's readings as on_sample leaves them in the tracks: each worst value
    and where it is (a highest at its last index and a lowest at its first, as max and min
    of (value, index) pairs find them). None: not measured."""

    riso_kohm: int | None  # the lower side measured
    riso_side: int
    temp_dc: int | None  # the hottest probe
    temp_at: int
    spread_dc: int | None  # hottest minus coldest probe of the group (None: fewer than 2)
    spread_at: int  # (the hottest's index)
    rise: float | None  # the fastest rising probe, dC/min (None: no rise reference)
    rise_at: int
    cell_max_mv: int | None
    cell_max_at: int
    cell_min_mv: int
    cell_min_at: int
    cell_spread_mv: int | None  # (None: fewer than 2 cells)


def _spread_group(probe_cell: tuple[int, ...], n_probes: int) -> list[int]:
    """The probes whose spread is watched: those on cells if two or more are, else all."""
    on_cells = [j for j in range(n_probes) if j < len(probe_cell) and probe_cell[j] != NOT_ON_CELL]
    return on_cells if len(on_cells) >= 2 else list(range(n_probes))


def _readings(riso: np.ndarray | None, temps: np.ndarray, group: list[int],
              rises: np.ndarray | None, cells: np.ndarray) -> list[_Readings]:
    """_Readings of k rows at once: riso (k, 2) with unmeasured sides at or above the
    marker (None: no row measured), temps (k, n_probes), the probes of the spread, rises
    (k, n_probes) in dC/min with NaN rows where there is no reference (None: none has),
    cells (k, n_cells). (A Python max per list per sample was a third of a quiet sample.)"""
    k = len(temps)
    rows = np.arange(k)

    def highest(a: np.ndarray) -> tuple[list[Any], list[int]]:
        at = a.shape[1] - 1 - np.argmax(a[:, ::-1], axis=1)
        return a[rows, at].tolist(), at.tolist()

    def lowest(a: np.ndarray) -> tuple[list[Any], list[int]]:
        at = np.argmin(a, axis=1)
        return a[rows, at].tolist(), at.tolist()

    none: list[Any] = [None] * k
    zero = [0] * k
    r_kohm, r_side = none, zero
    if riso is not None:
        r_kohm, r_side = lowest(riso)
        r_kohm = [r if r < _MARKERS["riso_pos_kohm"][0] else None for r in r_kohm]
    t_max, t_at, spread, spread_at, rise, rise_at = none, zero, none, zero, none, zero
    if temps.shape[1]:
        t_max, t_at = highest(temps)
        if len(group) >= 2:
            g = temps[:, group]
            hi, hi_pos = highest(g)
            spread = (np.asarray(hi) - g.min(axis=1)).tolist()
            spread_at = [group[j] for j in hi_pos]
        if rises is not None:
            has = ~np.isnan(rises[:, 0])
            rise, rise_at = highest(np.where(has[:, None], rises, 0.0))
            rise = [r if h else None for r, h in zip(rise, has.tolist(), strict=True)]
    c_max, c_max_at, c_min, c_min_at, c_spread = none, zero, zero, zero, none
    if cells.shape[1]:
        c_max, c_max_at = highest(cells)
        c_min, c_min_at = lowest(cells)
        if cells.shape[1] >= 2:
            c_spread = [a - b for a, b in zip(c_max, c_min, strict=True)]
    return [_Readings(*r) for r in zip(r_kohm, r_side, t_max, t_at, spread, spread_at, rise,
                                       rise_at, c_max, c_max_at, c_min, c_min_at, c_spread,
                                       strict=True)]


class _QuietSample(NamedTuple):
    """What on_sample would take from a quiet sample (see _take_quiet_sample)."""

    board: _Board
    profile: BoardProfile
    readings: _Readings
    temps_dc: list[int]
    pack_mv: int
    current_ma: int
    r_min_kohm: int
    rising: tuple[list[int | None], list[int]] | None  # the thermal event's state after


# -- the engine ---------------------------------------------------------------------------------


class AlarmEngine:
    def __init__(self, settings: AlarmSettings | None = None, *,
                 silence_on_host_clock: bool = False) -> None:
        self.settings = settings or AlarmSettings()
        # Silence is measured on the host's clock when the caller reports receptions with
        # on_heard() (the daemon): a board's own stamps are its uptime until its clock is
        # set, and a compressed or drifting board clock must not make it look silent.
        self.silence_on_host_clock = silence_on_host_clock
        self._boards: dict[int, _Board] = {}
        self._tracks: dict[tuple[int, str, str], _Track] = {}
        self._board_tracks: dict[int, list[_Track]] = {}  # the same tracks, by board
        self._reading_tracks: dict[int, tuple[_Track, ...]] = {}  # by board: _READING_RULES
        self._dirty: set[int] = set()  # boards whose alarms moved since take_dirty()
        self._by_id: dict[int, _Track] = {}
        self._next_id = 1
        self._shelves_changed = True  # _shelf_ms() recomputes (shelving is rare, samples not)
        self._shelf_ms_cached: int | None = None

    # -- inputs ---------------------------------------------------------------------------------

    def set_profile(self, profile: BoardProfile) -> None:
        """From the board's birth frame; alarms and histories of the board carry on."""
        problems = []
        if profile.chemistry not in limits.CHEMISTRIES:
            problems.append(f"chemistry {profile.chemistry!r} (known: "
                            f"{', '.join(limits.CHEMISTRIES)})")
        if profile.max_pack_mv <= 0:
            problems.append("max_pack_mv must be > 0 (insulation limits are per volt of it)")
        if profile.sample_period_ms <= 0:
            problems.append("sample_period_ms must be > 0")
        if problems:
            raise ValueError(f"board {profile.board_id}: bad profile: {'; '.join(problems)}")
        b = self._boards.setdefault(profile.board_id, _Board())
        b.profile = profile
        b.first_sample_ms = None
        b.riso_seen = False

    def on_sample(self, board_id: int, ts_ms: int, m: Mapping[str, Any]) -> list[AlarmEvent]:
        """Evaluate one decoded sample payload. A sample older than the newest one evaluated
        for this board (a late re-send) is ignored: rates and latches need time to move on."""
        b, p = self._board(board_id)
        if b.last_sample_ms is not None and ts_ms < b.last_sample_ms:
            return []
        out = self._expire_shelves(ts_ms)
        b.last_sample_ms = ts_ms
        out += self._heard(b, board_id, ts_ms)
        if b.first_sample_ms is None:
            b.first_sample_ms = ts_ms
        if b.seq_gap_ms is not None:
            # frames flow again (whatever the sample's time: the gap is declared on the
            # host's clock, later than the frames around it)
            b.seq_gap_ms = None
            tr = self._track(board_id, "board_silent", "seq")
            tr.host_level = 0
            out += self._apply(tr, ts_ms)

        temps = self._valid_list("temps_dc", m.get("temps_dc", ()))
        cells = self._valid_list("cells_mv", m.get("cells_mv", ()))
        pack_mv = self._valid("pack_mv", m.get("pack_mv"))
        current_ma = self._valid("current_ma", m.get("current_ma"))
        riso = [self._valid("riso_pos_kohm", m.get("riso_pos_kohm")),
                self._valid("riso_neg_kohm", m.get("riso_neg_kohm"))]
        if any(r is not None for r in riso):
            b.riso_seen = True

        self._board_flags(board_id, ts_ms, int(m.get("alarm_flags", 0) or 0))
        out += self._sensor_faults(b, p, ts_ms, m, temps, cells)
        out += self._insulation(p, ts_ms, riso)
        out += self._temperatures(p, ts_ms, temps)
        self._remember(b, ts_ms, pack_mv, temps)
        out += self._rates(b, p, ts_ms, pack_mv)
        out += self._cells(p, ts_ms, cells)
        # flagged rules no sample rule of the host evaluates (pack over/undervoltage, ...)
        for rule in _FLAG_ONLY_RULES:
            if (tr := self._tracks.get((board_id, rule, ""))) is not None:
                out += self._apply(tr, ts_ms)
        out += self._trends(b, p, ts_ms, riso, temps, current_ma)
        return out

    def on_run(self, board_id: int, ts_ms: np.ndarray,
               cols: Mapping[str, np.ndarray]) -> list[AlarmEvent]:
        """Samples of one board, oldest first, as columns: the sample payload's fields by
        name, `temps_dc` (k, n_probes) and `cells_mv` (k, n_cells). Exactly on_sample for
        each in turn (the tests hold the two to the same events and state), but a run in
        which nothing can happen is taken in one go, with numpy: every rule of the board
        idle and every reading short of its rule's lowest level, which is nearly always."""
        b, p = self._board(board_id)
        ts = np.asarray(ts_ms, np.int64)
        if b.last_sample_ms is not None:  # older ones: on_sample would ignore them
            keep = ts >= b.last_sample_ms
            if not keep.all():
                ts, cols = ts[keep], {k: v[keep] for k, v in cols.items()}
        if len(ts) == 0:
            return []
        # the screen costs ~30 numpy calls: for a couple of samples one by one is cheaper
        quiet = self._quiet_run(b, p, ts, cols) if len(ts) >= _RUN_MIN else None
        if quiet is None:
            out: list[AlarmEvent] = []
            for j in range(len(ts)):
                row = {k: (v[j].tolist()) for k, v in cols.items()}
                out += self.on_sample(board_id, int(ts[j]), row)
            return out
        return self._take_quiet_run(b, p, ts, cols, quiet)

    def on_runs(self, runs: Sequence[tuple[int, np.ndarray, Mapping[str, np.ndarray]]]
                ) -> list[AlarmEvent]:
        """Many boards' runs (board_id, ts_ms, cols), each as on_run takes it: each board's
        samples in order, the same events and state as on_sample for each. A fleet at 10 Hz
        gives each board one or two samples per micro-batch, too few for on_run's screen, so
        such short runs go in rounds (the first sample of every board, then the second, ...),
        each round screened across boards at once. Events come in that order: the runs long
        enough for on_run (and boards with more than one run) first, then round by round."""
        once = Counter(board_id for board_id, _, _ in runs)
        short = [i for i, (board_id, ts, _) in enumerate(runs)
                 if len(ts) < _RUN_MIN and once[board_id] == 1]
        if len(short) < _FLEET_MIN:
            short = []
        out: list[AlarmEvent] = []
        fleet = set(short)
        for i, (board_id, ts, cols) in enumerate(runs):
            if i not in fleet:
                out += self.on_run(board_id, ts, cols)
        if not short:
            return out
        # the short runs of each shape joined into one set of columns, once (not a slice per
        # board and round): round j screens row start + j of every run longer than j
        shapes: dict[tuple[int, int], list[int]] = {}
        for i in short:
            c = runs[i][2]
            shapes.setdefault((c["temps_dc"].shape[1], c["cells_mv"].shape[1]), []).append(i)
        joined = []
        for members in shapes.values():
            lens = np.array([len(runs[i][1]) for i in members])
            joined.append((members, lens, np.cumsum(lens) - lens,
                           np.concatenate([runs[i][1] for i in members]),
                           {k: np.concatenate([runs[i][2][k] for i in members])
                            for k in _SCREENED}))
        for j in range(max(len(runs[i][1]) for i in short)):
            quiet: dict[int, _QuietSample] = {}
            for members, lens, starts, all_ts, all_cols in joined:
                sel = np.flatnonzero(lens > j)
                if len(sel) < _FLEET_MIN:
                    continue
                rows = starts[sel] + j
                r_ts, r_cols = all_ts, all_cols  # (one sample per run: the columns as they are)
                if len(rows) < len(all_ts):
                    r_ts, r_cols = all_ts[rows], {k: v[rows] for k, v in all_cols.items()}
                keys = [members[x] for x in sel.tolist()]
                found = self._quiet_samples([runs[i][0] for i in keys], r_ts, r_cols)
                quiet.update((keys[row], q) for row, q in found.items())
            for i in short:
                board_id, ts, cols = runs[i]
                if len(ts) <= j:
                    continue
                q = quiet.get(i)
                if q is not None:
                    out += self._take_quiet_sample(board_id, int(ts[j]), q)
                elif len(ts) == 1:
                    out += self.on_run(board_id, ts, cols)
                else:
                    out += self.on_run(board_id, ts[j:j + 1],
                                       {k: v[j:j + 1] for k, v in cols.items()})
        return out

    def _quiet_samples(self, board_ids: Sequence[int], ts_ms: np.ndarray,
                       cols: Mapping[str, np.ndarray]) -> dict[int, _QuietSample]:
        """Of one sample each of distinct boards (row by row: its board, time and the
        _SCREENED columns), those in which nothing can happen (as _quiet_run; the tests hold
        them to on_sample), by row, with what _take_quiet_sample needs."""
        shelf_ms = self._shelf_ms()  # (once for all boards)
        n_probes = cols["temps_dc"].shape[1]  # (one shape: the same for every row)
        groups: dict[tuple[Any, ...], list[_Candidate]] = {}
        for row, (board_id, t) in enumerate(zip(board_ids, ts_ms.tolist(), strict=True)):
            b, p = self._board(board_id)
            if (b.last_sample_ms is not None and t <= b.last_sample_ms) \
                    or not self._calm(b, board_id, t, shelf_ms):
                continue
            # the rise reference and the previous sample, as _remember will leave them
            hist, n = b.hist, len(b.hist)
            r = 0
            while r + 1 < n and n + 1 - r > 2 and hist[r + 1][0] <= t - _RISE_WINDOW_MS:
                r += 1
            ref, prev = (hist[r], hist[-1]) if n else ([t, 0, [0] * n_probes],) * 2
            if len(ref[2]) != n_probes or len(prev[2]) != n_probes or None in ref[2] \
                    or None in prev[2]:
                continue
            # a probe rising at >= the thermal event's dT/dt (at 10 Hz one 0.1 K step does)
            since = [-1 if x is None else x for x in (b.rising_since_ms + [None] * n_probes)]
            steps = (b.rising_steps + [0] * n_probes)[:n_probes]
            groups.setdefault((p.chemistry, p.probe_cell), []).append(
                _Candidate(row, b, p, t, n > 0, ref, prev, since[:n_probes], steps))
        out: dict[int, _QuietSample] = {}
        for (chem, probe_cell), members in groups.items():
            col = cols
            if len(members) < len(ts_ms):  # (nearly always one group: the rows as they are)
                idx = [m.pos for m in members]
                col = {k: v[idx] for k, v in cols.items()}
            temps = col["temps_dc"].astype(np.int64)
            cells = col["cells_mv"]  # (as in _quiet_run)
            ts = np.array([m.ts_ms for m in members], np.int64)
            has_ref = np.array([m.has_hist for m in members])
            ref_ts = np.array([m.ref[0] for m in members], np.int64)
            prev_ts = np.array([m.prev[0] for m in members], np.int64)
            max_pack = np.array([m.profile.max_pack_mv for m in members], np.float64)
            fitted = np.array([m.profile.riso_period_ms > 0 for m in members])
            ok, riso, _, r_min = self._screen_rows(chem, probe_cell, col, temps, cells,
                                                   max_pack, fitted)
            new_since: list[list[int]] | None = None  # rising state after (None: as it was)
            new_steps: list[list[int]] = []
            if n_probes:
                ref_t = np.array([m.ref[2] for m in members], np.int64).reshape(-1, n_probes)
                prev_t = np.array([m.prev[2] for m in members], np.int64).reshape(-1, n_probes)
                dt = ts - ref_ts
                rate_ok = has_ref & (dt >= _RISE_MIN_MS) & (dt <= _RISE_MAX_MS)
                rises_all = (temps - ref_t) * 60_000 / np.where(rate_ok, dt, 1)[:, None]
                ok &= ~rate_ok | self._short_of(chem, "temp_rise_rate", rises_all.max(axis=1),
                                                True)
                lim_te = self.settings.limit(chem, "thermal_event")
                if lim_te is not None:
                    # _thermal_event's rising state; quiet while no rising probe has held
                    # for hold_s yet (then nothing latches, whatever the temperature)
                    pdt = ts - prev_ts
                    step = has_ref & (pdt > 0)
                    rate = (temps - prev_t) * 1000 / np.where(step, pdt, 1)[:, None]
                    rate_min, hold_ms = lim_te.levels[4], lim_te.extra["hold_s"] * 1000
                    rising = step[:, None] & (rate >= rate_min)
                    since = np.array([m.since_ms for m in members], np.int64).reshape(
                        -1, n_probes)
                    since = np.where(since >= 0, since, prev_ts[:, None])
                    ok &= ~(rising & (ts[:, None] - since >= hold_ms)).any(axis=1)
                    ok &= ~(step[:, None] & (rate >= rate_min - 1e-9) & ~rising).any(axis=1)
                    new_since = np.where(rising, since, -1).tolist()
                    new_steps = np.where(rising, np.array([m.steps for m in members]).reshape(
                        -1, n_probes) + 1, 0).tolist()
            else:
                rate_ok = np.zeros(len(members), bool)
            quiet = np.flatnonzero(ok)
            rise_rows = None
            if n_probes and rate_ok[quiet].any():
                rise_rows = np.where(rate_ok[quiet, None], rises_all[quiet], np.nan)
            readings = _readings(riso[quiet], temps[quiet], _spread_group(probe_cell, n_probes),
                                 rise_rows, cells[quiet])
            lists = (temps[quiet].tolist(), col["pack_mv"][quiet].tolist(),
                     col["current_ma"][quiet].tolist(), r_min[quiet].tolist())
            for i, j in enumerate(quiet.tolist()):
                m = members[j]
                rising_now = None
                if new_since is not None and m.has_hist:
                    rising_now = ([None if x < 0 else x for x in new_since[j]], new_steps[j])
                out[m.pos] = _QuietSample(m.board, m.profile, readings[i], lists[0][i],
                                          lists[1][i], lists[2][i], lists[3][i], rising_now)
        return out

    def _take_quiet_sample(self, board_id: int, ts_ms: int, q: _QuietSample
                           ) -> list[AlarmEvent]:
        """on_sample for a sample _quiet_samples passed: the readings, the rise history and
        the forecasts' intervals."""
        b, p, readings, temps, pack_mv, current_ma, r_min, rising = q
        self._quiet_readings(b, p, ts_ms, ts_ms, readings, len(temps), False)
        if rising is not None:
            b.rising_since_ms, b.rising_steps = rising
        self._remember(b, ts_ms, pack_mv, temps)
        out: list[AlarmEvent] = []
        if readings.riso_kohm is not None:
            out += self._trend_point(b, p, ts_ms, "insulation", r_min * 1e6 / p.max_pack_mv)
        if readings.temp_dc is not None and \
                abs(current_ma) >= p.rated_mah * self.settings.in_use_c_rate:
            out += self._trend_point(b, p, ts_ms, "temp_high", float(readings.temp_dc))
        return out

    def _quiet_run(self, b: _Board, p: BoardProfile, ts: np.ndarray,
                   cols: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """What a quiet run leaves behind (the last readings, the rise references), or None
        if anything in it might raise, clear, shelve or debounce: then on_sample decides."""
        last = int(ts[-1])
        if len(ts) > 1 and (np.diff(ts) < 0).any():
            return None
        if not self._calm(b, p.board_id, last) or any(x is not None for x in b.rising_since_ms):
            return None
        temps = np.asarray(cols["temps_dc"], np.int64).reshape(len(ts), -1)
        # cell voltages in their own dtype (uint16 from the decoder): only their max and min are
        # taken, and a 96-cell run copied to int64 was the screen's largest array
        cells = np.asarray(cols["cells_mv"]).reshape(len(ts), -1)
        ok, riso, has_riso, r_min = self._screen_rows(p.chemistry, p.probe_cell, cols, temps,
                                                      cells, p.max_pack_mv, p.riso_period_ms > 0)
        if not ok.all():
            return None
        n_probes = temps.shape[1]

        def short_of(rule: str, values: np.ndarray, rounded: bool = False) -> bool:
            return bool(self._short_of(p.chemistry, rule, values, rounded).all())

        # the rise references, as _remember keeps them, and the rates over them
        h_ts = np.concatenate((np.array([h[0] for h in b.hist], np.int64), ts))
        h_temps = [h[2] for h in b.hist]
        n0 = len(b.hist)
        if any(len(t) != n_probes or None in t for t in h_temps):
            return None  # a marker or another probe count in the history: rare, slow path
        all_t = np.concatenate([np.array(h_temps, np.int64).reshape(n0, n_probes), temps])
        cur = np.arange(n0, n0 + len(ts))
        ref = np.searchsorted(h_ts, ts - _RISE_WINDOW_MS, side="right") - 1
        ref = np.minimum(np.maximum(ref, 0), cur - 1)
        ref = np.maximum.accumulate(np.maximum(ref, 0))  # the history only moves forward
        ref = np.where(cur >= 1, ref, 0)
        dt = ts - h_ts[ref]
        rate_ok = (dt >= _RISE_MIN_MS) & (dt <= _RISE_MAX_MS) & (cur >= 1) & (n_probes > 0)
        rises = np.zeros((len(ts), n_probes))
        if rate_ok.any() and n_probes:
            rises = (all_t[cur] - all_t[ref]) * 60_000 / np.where(rate_ok, dt, 1)[:, None]
            if not short_of("temp_rise_rate", rises[rate_ok].max(axis=1), rounded=True):
                return None
        lim_te = self.settings.limit(p.chemistry, "thermal_event")
        if lim_te is not None and n_probes:
            step = cur >= 1
            prev_dt = np.where(step, h_ts[cur] - h_ts[np.maximum(cur - 1, 0)], 1)
            rate = (all_t[cur] - all_t[np.maximum(cur - 1, 0)]) * 1000 / np.where(
                prev_dt > 0, prev_dt, 1)[:, None]
            rate_min = lim_te.levels[4]
            if ((rate >= rate_min - 1e-9) & (step & (prev_dt > 0))[:, None]).any():
                return None
        return {"riso": riso, "has_riso": has_riso, "r_min": r_min,
                "temps": temps, "cells": cells, "h_ts": h_ts, "all_t": all_t, "ref": ref,
                "rate_ok": rate_ok, "rises": rises, "n0": n0}

    def _calm(self, b: _Board, board_id: int, ts_ms: int, shelf_ms: int | None = None) -> bool:
        """Nothing about the board can move at ts_ms but its readings: online, no open seq
        gap, every rule idle, no shelving due."""
        if b.offline or b.seq_gap_ms is not None:
            return False
        if any(tr.host_level or tr.board_level or tr.latched or tr.active or tr.since_ms
               or tr.below_since_ms for tr in self._board_tracks.get(board_id, ())):
            return False
        due = self._shelf_ms() if shelf_ms is None else shelf_ms
        return due is None or ts_ms < due

    def _screen_rows(self, chemistry: str, probe_cell: tuple[int, ...],
                     cols: Mapping[str, np.ndarray], temps: np.ndarray, cells: np.ndarray,
                     max_pack_mv: float | np.ndarray, fitted: bool | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per sample row (one board's run, or one sample each of many boards of one shape
        and chemistry; max_pack_mv and fitted per row or for all): no board flag, no marker
        to tell apart, every reading short of its rule's lowest level. Also the insulation
        readings: (ok, riso (k, 2), has_riso, r_min)."""
        ok = (np.asarray(cols["alarm_flags"]) == 0) \
            & (np.asarray(cols["pack_mv"]) < _MARKERS["pack_mv"][0]) \
            & (np.asarray(cols["current_ma"]) < _MARKERS["current_ma"][0])
        riso = np.stack([np.asarray(cols["riso_pos_kohm"], np.int64),
                         np.asarray(cols["riso_neg_kohm"], np.int64)], axis=1)
        marker = riso >= _MARKERS["riso_pos_kohm"][0]
        # a marker on a fitted monitor (a fault, or the boot's grace) or an ABNORMAL one:
        # on_sample tells those apart
        ok &= ~(marker.any(axis=1) & (fitted | (
            marker & (riso != _MARKERS["riso_pos_kohm"][1])).any(axis=1)))
        has_riso = ~marker.all(axis=1)
        r_min = np.where(marker, np.iinfo(np.int64).max, riso).min(axis=1)
        ok &= ~has_riso | self._short_of(chemistry, "insulation", r_min * 1e6 / max_pack_mv,
                                         True)
        n_probes = temps.shape[1]
        if n_probes:
            t_max = temps.max(axis=1)
            ok &= (t_max < _MARKERS["temps_dc"][0]) & self._short_of(
                chemistry, "temp_high", t_max.astype(np.float64))
            group = _spread_group(probe_cell, n_probes)
            if len(group) >= 2:
                g = temps[:, group]
                ok &= self._short_of(chemistry, "temp_spread",
                                     (g.max(axis=1) - g.min(axis=1)).astype(np.float64))
        if cells.shape[1]:
            c_max, c_min = cells.max(axis=1), cells.min(axis=1)
            ok &= (c_max < _MARKERS["cells_mv"][0]) & self._short_of(
                chemistry, "cell_overvoltage", c_max.astype(np.float64)) & self._short_of(
                chemistry, "cell_undervoltage", c_min.astype(np.float64))
            if cells.shape[1] >= 2:
                ok &= self._short_of(chemistry, "cell_spread",
                                     (c_max - c_min).astype(np.float64))
        return ok, riso, has_riso, r_min

    def _short_of(self, chemistry: str, rule: str, values: np.ndarray,
                  rounded: bool = False) -> np.ndarray:
        """Per value: short of the rule's lowest level. A margin: the per-sample path
        compares values rounded to 0.1 for some rules (round() and numpy's rounding differ
        at ties), and float noise for the rest."""
        lim = self.settings.limit(chemistry, rule)
        if lim is None:
            return np.ones(np.shape(values), bool)
        thr = lim.levels[min(lim.levels)]
        margin = (0.1 if rounded else 0.0) + 1e-6 * max(1.0, abs(thr))
        return values < thr - margin if lim.above else values >= thr + margin

    def _quiet_readings(self, b: _Board, p: BoardProfile, first: int, last: int,
                        r: _Readings, n_probes: int, had_hist: bool) -> None:
        """What on_sample leaves in the tracks after quiet samples from `first` to `last`:
        the readings r of the last one (its insulation: of the last that measured it; its
        rise: of the last with a rise rate)."""
        board_id = p.board_id
        b.last_sample_ms = last
        if not self.silence_on_host_clock:
            b.last_frame_ms = last if b.last_frame_ms is None else max(b.last_frame_ms, last)
        if b.first_sample_ms is None:
            b.first_sample_ms = first
        b.flags = 0
        trs = self._reading_tracks.get(board_id)
        if trs is None:  # (a dict lookup per rule and sample was a fifth of this call)
            trs = self._reading_tracks[board_id] = tuple(
                self._track(board_id, rule, "") for rule in _READING_RULES)
        (sensor_fault, insulation, temp_high, temp_spread, temp_rise_rate, thermal_event,
         *cell_rules) = trs
        sensor_fault.value = 0.0
        if r.riso_kohm is not None:
            b.riso_seen = True
            # (the detail the threshold's idle path leaves is "", one side or both)
            tr = insulation
            tr.value, tr.detail = round(r.riso_kohm * 1e6 / p.max_pack_mv, 1), ""
            tr.subject_index = r.riso_side
        if r.temp_dc is not None:
            tr = temp_high
            tr.subject, tr.value, tr.detail, tr.subject_index = ("probe", float(r.temp_dc), "",
                                                                 r.temp_at)
            temp_spread.subject = "probe"
            if r.spread_dc is not None:
                tr = temp_spread
                tr.value, tr.detail, tr.subject_index = float(r.spread_dc), "", r.spread_at
            tr = temp_rise_rate
            tr.subject = "probe"
            if r.rise is not None:
                tr.value, tr.detail, tr.subject_index = round(r.rise, 1), "", r.rise_at
        else:
            temp_rise_rate.subject = "probe"
        thermal_event.subject = "probe"
        if self.settings.limit(p.chemistry, "thermal_event") is not None and had_hist:
            b.rising_since_ms, b.rising_steps = [None] * n_probes, [0] * n_probes
        if r.cell_max_mv is not None:
            over, under, spread = cell_rules
            over.subject = under.subject = spread.subject = "cell"
            over.value, over.detail, over.subject_index = float(r.cell_max_mv), "", r.cell_max_at
            under.value, under.detail = float(r.cell_min_mv), ""
            under.subject_index = r.cell_min_at
            if r.cell_spread_mv is not None:
                spread.value, spread.detail = float(r.cell_spread_mv), ""

    def _take_quiet_run(self, b: _Board, p: BoardProfile, ts: np.ndarray,
                        cols: Mapping[str, np.ndarray], q: dict[str, Any]) -> list[AlarmEvent]:
        """The state on_sample would leave after the run (no event can come of it, but the
        insulation and temperature forecasts, whose intervals close on their own clock)."""
        k, last = len(ts), int(ts[-1])
        has_riso, temps = q["has_riso"], q["temps"]
        n_probes = temps.shape[1]
        # the last row's readings, but insulation's and the rise's of the last that had one
        riso = q["riso"][np.flatnonzero(has_riso)[-1:]] if has_riso.any() else None
        rises = None
        if n_probes and q["rate_ok"].any():
            rises = q["rises"][np.flatnonzero(q["rate_ok"])[-1:]]
        (readings,) = _readings(riso, temps[-1:], _spread_group(p.probe_cell, n_probes), rises,
                                q["cells"][-1:])
        self._quiet_readings(b, p, int(ts[0]), last, readings, n_probes, q["n0"] + k >= 2)
        # the rise history as _remember leaves it after the last sample
        n0, all_t = q["n0"], q["all_t"]
        # only the entries that survive the trim become lists: the reference (the newest
        # at least a window old, or the oldest), then everything after it
        h_ts = q["h_ts"]
        start = int(np.searchsorted(h_ts, last - _RISE_WINDOW_MS, side="right")) - 1
        start = min(max(start, 0), len(h_ts) - 2) if len(h_ts) >= 2 else 0
        lo = max(0, start - n0)  # (whole columns to lists: int() per numpy scalar is slow)
        b.hist = b.hist[start:] + [[t, mv, temps_row] for t, mv, temps_row in zip(
            ts[lo:].tolist(), cols["pack_mv"][lo:k].tolist(), all_t[n0 + lo:n0 + k].tolist(),
            strict=True)]
        # the forecasts: one call per interval of the trend (what closes one is the first
        # sample of the next, as in on_sample)
        trend_ins = q["r_min"] * 1e6 / p.max_pack_mv
        cur_ma = np.asarray(cols["current_ma"], np.int64)
        in_use = np.abs(cur_ma) >= p.rated_mah * self.settings.in_use_c_rate
        series = [("insulation", has_riso, trend_ins, False)]
        if temps.shape[1]:
            series.append(("temp_high", in_use, temps.max(axis=1).astype(np.float64), True))
        points: list[tuple[int, int, str, float]] = []  # (ts, order in on_sample, rule, worst)
        for order, (rule, mask, values, above) in enumerate(series):
            lim = self.settings.limit(p.chemistry, rule)
            if lim is None or 3 not in lim.levels or not mask.any():
                continue
            bucket_ms = int(self.settings.trend(rule)[0] * 1000)
            idx = np.flatnonzero(mask)
            buckets = ts[idx] // bucket_ms
            # (np.concatenate, not np.r_: its index machinery cost more than the rest here)
            starts = np.flatnonzero(np.concatenate(([True], buckets[1:] != buckets[:-1])))
            ends = np.append(starts[1:], len(idx))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                seg = values[idx[s:e]]
                points.append((int(ts[idx[s]]), order, rule,
                               float(seg.max() if above else seg.min())))
        out: list[AlarmEvent] = []
        for t, _, rule, worst in sorted(points):
            out += self._trend_point(b, p, t, rule, worst)
        return out

    def on_estimate(self, board_id: int, ts_ms: int, soh_pct: float, r0_growth_pct: float,
                    subject: str = "pack", subject_index: int = 0) -> list[AlarmEvent]:
        """State-of-health estimates; each subject (pack or cell) is its own alarm."""
        _, p = self._board(board_id)
        out = self._expire_shelves(ts_ms)
        for rule, value in (("capacity_soh", soh_pct), ("r0_growth", r0_growth_pct)):
            if value is None or not math.isfinite(value):
                continue
            tr = self._track(board_id, rule, f"{subject}:{subject_index}")
            tr.subject, tr.subject_index = subject, subject_index
            out += self._threshold(tr, p, ts_ms, float(value), subject_index)
        return out

    def on_board_alarm(self, board_id: int, ts_ms: int, a: Mapping[str, Any]) -> list[AlarmEvent]:
        """A board's local alarm frame: the same alarm instance as the host's own evaluation of
        that rule (highest level wins), at the board's time.

        A frame older than the newest sample evaluated (re-sent after an outage the host could
        not wait out) is still news when it raises: the episode happened, at its time, and
        counts for recurrence; if the newer sample's flags show the board's alarm gone, the
        episode closes at that sample. A late clear tells nothing the newer flags did not."""
        b, p = self._board(board_id)
        rule = str(a["rule"])
        tr = self._track(board_id, rule, "")
        late = b.last_sample_ms is not None and ts_ms < b.last_sample_ms
        if ts_ms < tr.board_ms or (late and a["event"] != "raised"):
            return []
        tr.board_ms = ts_ms
        out = self._expire_shelves(ts_ms)
        out += self._heard(b, board_id, ts_ms)
        value, threshold = a.get("value"), a.get("threshold")
        if rule == "insulation":  # the board sends kOhm; alarms speak Ohm per volt
            value = None if value is None else round(value * 1e6 / p.max_pack_mv)
            threshold = None if threshold is None else round(threshold * 1e6 / p.max_pack_mv)
        tr.board_value, tr.board_threshold = value, threshold
        tr.board_subject, tr.board_index = str(a.get("subject", "pack")), int(
            a.get("subject_index", 0))
        if a["event"] == "raised":
            tr.board_level = int(a["level"])
        elif rule != "thermal_event":  # the board's L4 latches until it reboots
            tr.board_level = 0
        out += self._apply(tr, ts_ms)
        if late and rule in _FLAGS and not b.flags & _FLAGS[rule] and rule != "thermal_event":
            tr.board_level = 0
            assert b.last_sample_ms is not None
            out += self._apply(tr, b.last_sample_ms)
        return out

    def on_heard(self, board_id: int, now_ms: int,
                 report_ms: int | None = None) -> list[AlarmEvent]:
        """Frames from the board arrived at the host's time now_ms (silence_on_host_clock).
        report_ms: the time its newest sample-bearing frame covers (n x the sample period
        for a batch, one period for a sample): a board that batches reports less often."""
        b = self._boards.get(board_id)
        if b is None or b.profile is None:
            return []
        if report_ms is not None:
            b.report_ms = report_ms
        b.last_frame_ms = now_ms if b.last_frame_ms is None else max(b.last_frame_ms, now_ms)
        return self._heard(b, board_id, now_ms)

    def silent_after_ms(self, board_id: int) -> int | None:
        """How long the board may go without a frame before it is silent (None: unknown)."""
        b = self._boards.get(board_id)
        if b is None or b.profile is None:
            return None
        return self.settings.silent_periods * max(b.profile.sample_period_ms, b.report_ms)

    def on_link(self, board_id: int, ts_ms: int, online: bool) -> list[AlarmEvent]:
        """Link news: offline is the MQTT last will (board_silent L1 at once); online means
        the board is back (it also clears when any frame arrives)."""
        b, _ = self._board(board_id)
        out = self._expire_shelves(ts_ms)
        if online:
            return out + self._heard(b, board_id, ts_ms)
        b.offline = True
        tr = self._track(board_id, "board_silent", "")
        tr.host_level, tr.value, tr.detail = 1, None, "MQTT last will: the board went offline"
        return out + self._apply(tr, ts_ms)

    def on_seq_gap(self, board_id: int, ts_ms: int, missing: int) -> list[AlarmEvent]:
        """Frames lost for good (a sequence gap store-and-forward did not fill): data-quality
        L1 under rule board_silent, scope "seq"; it clears with the next sample evaluated, so
        it counts (and escalates) as a recurrence when the link keeps losing frames."""
        b, _ = self._board(board_id)
        out = self._expire_shelves(ts_ms)
        if missing <= 0:
            return out
        b.seq_gap_ms = ts_ms
        tr = self._track(board_id, "board_silent", "seq")
        tr.host_level, tr.value = 1, float(missing)
        return out + self._apply(tr, ts_ms)

    def tick(self, now_ms: int, heard_until_ms: int | None = None) -> list[AlarmEvent]:
        """Time passing: shelving expiry, silent boards, on-delays that ran out between
        samples (only while the board's data is fresh). heard_until_ms: the caller has not
        processed what arrived after it yet (a backlog), so silence is judged there."""
        out = self._expire_shelves(now_ms)
        fresh: set[int] = set()
        heard_at = now_ms if heard_until_ms is None else min(now_ms, heard_until_ms)
        for board_id, b in self._boards.items():
            p = b.profile
            if p is None or b.last_frame_ms is None:
                continue
            age = heard_at - b.last_frame_ms
            if age < self.settings.silent_periods * max(p.sample_period_ms, b.report_ms):
                if b.last_sample_ms is not None:
                    fresh.add(board_id)
            elif not b.offline:
                tr = self._track(board_id, "board_silent", "")
                tr.host_level, tr.value, tr.detail = 1, float(age // p.sample_period_ms), ""
                out += self._apply(tr, now_ms)
        # (since_ms first: it is empty on nearly every track, and this runs over all of them
        # every second)
        pending = [t for t in self._tracks.values() if t.since_ms and t.board_id in fresh
                   and t.value is not None and t.rule in _THRESHOLD_RULES
                   and any(lvl > t.host_level for lvl in t.since_ms)]
        for tr in pending:
            p = self._boards[tr.board_id].profile
            assert p is not None and tr.value is not None
            out += self._threshold(tr, p, now_ms, tr.value, tr.subject_index, tr.detail)
        return out

    # -- operator actions -----------------------------------------------------------------------

    def acknowledge(self, alarm_id: int, now_ms: int, actor: str,
                    note: str | None = None) -> list[AlarmEvent]:
        tr = self._open(alarm_id)
        if tr.acked:
            raise ValueError(f"{self._name(tr)} is already acknowledged ({self._state(tr)})")
        tr.acked = True
        if tr.latched:  # a thermal event's latch is released by a person
            out = [self._emit(tr, "acknowledged", now_ms, tr.level, actor=actor, note=note)]
            tr.latched = False
            return out + self._apply(tr, now_ms)
        done = not tr.active and tr.shelved_until_ms is None  # cleared: this closes it
        return [self._emit(tr, "acknowledged", now_ms, tr.level, actor=actor, note=note,
                           close=done)]

    def shelve(self, alarm_id: int, until_ms: int | None, now_ms: int, actor: str,
               note: str | None = None) -> list[AlarmEvent]:
        """Hide an L1/L2 alarm from people until `until_ms` (None: the default duration).
        L3/L4 are safety alarms: ISA-18.2 keeps them off the shelf, and so does this."""
        tr = self._open(alarm_id)
        if tr.level >= 3:
            raise ValueError(f"{self._name(tr)} is L{tr.level}: safety alarms (L3/L4) cannot "
                             "be shelved")
        if until_ms is None:
            until_ms = now_ms + int(self.settings.shelve_default_s * 1000)
        if until_ms <= now_ms:
            raise ValueError(f"{self._name(tr)}: shelve until {until_ms} is not in the future")
        if until_ms - now_ms > self.settings.shelve_max_s * 1000:
            raise ValueError(f"{self._name(tr)}: shelving is limited to "
                             f"{self.settings.shelve_max_s / 3600:g} h")
        tr.shelved_until_ms = until_ms
        self._shelves_changed = True
        return [self._emit(tr, "shelved", now_ms, tr.level, actor=actor, note=note,
                           until_ms=until_ms)]

    def unshelve(self, alarm_id: int, now_ms: int, actor: str) -> list[AlarmEvent]:
        tr = self._open(alarm_id)
        if tr.shelved_until_ms is None:
            raise ValueError(f"{self._name(tr)} is not shelved ({self._state(tr)})")
        return self._unshelve(tr, now_ms, actor, None)

    def set_in_service(self, board_id: int, in_service: bool, now_ms: int,
                       actor: str) -> list[AlarmEvent]:
        """Out of service: the board's alarms are still evaluated and logged, but people are
        not told (state "suppressed"), except a thermal event, which is a fire wherever the
        pack stands."""
        b = self._boards.get(board_id)
        if b is None:
            raise KeyError(f"unknown board {board_id}")
        if b.in_service == in_service:
            return []
        out: list[AlarmEvent] = []
        opened = [t for t in self._tracks.values() if t.board_id == board_id and t.alarm_id]
        if not in_service:
            b.in_service = False
            for tr in opened:
                if tr.level < 4:
                    out.append(self._emit(tr, "suppressed", now_ms, tr.level, actor=actor))
            return out
        hidden = [t for t in opened if t.level < 4]
        b.in_service = True
        for tr in hidden:
            if not tr.active:  # cleared while out of service: nothing left to tell
                tr.acked = True
            out.append(self._emit(tr, "returned_to_service", now_ms, tr.level, actor=actor,
                                  close=not tr.active and tr.shelved_until_ms is None))
        return out

    # -- views ----------------------------------------------------------------------------------

    def active(self) -> list[AlarmEvent]:
        """The latest event of every open alarm, highest level first."""
        events = [t.last for t in self._tracks.values() if t.alarm_id and t.last]
        return sorted(events, key=lambda e: (-e.level, e.alarm_id))

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "next_id": self._next_id,
            "boards": {str(k): b.to_dict() for k, b in self._boards.items()},
            "tracks": [t.to_dict() for t in self._tracks.values()],
        }

    # The same state in parts, so that a save after an alarm event writes the boards whose
    # alarms moved (and the id counter), not the whole fleet: at 1000 boards the whole
    # state is ~7 MB of JSON and ~0.3 s to build.

    def head_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "next_id": self._next_id}

    def board_state(self, board_id: int) -> dict[str, Any]:
        return {"board": self._boards[board_id].to_dict(),
                "tracks": [t.to_dict() for t in self._board_tracks.get(board_id, ())]}

    def boards(self) -> list[int]:
        return list(self._boards)

    def take_dirty(self) -> set[int]:
        """The boards whose alarms changed since the last call (their part needs saving)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    @staticmethod
    def join_state(head: Mapping[str, Any], parts: Mapping[int, Mapping[str, Any]]
                   ) -> dict[str, Any]:
        return {**head, "boards": {str(k): v["board"] for k, v in parts.items()},
                "tracks": [t for v in parts.values() for t in v["tracks"]]}

    def load_state(self, d: Mapping[str, Any]) -> None:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"alarm state version {d.get('version')!r}, expected "
                             f"{STATE_VERSION}")
        self._next_id = int(d["next_id"])
        self._boards = {int(k): _Board.from_dict(v) for k, v in d["boards"].items()}
        self._tracks = {}
        self._board_tracks = {}
        self._reading_tracks = {}
        self._by_id = {}
        self._shelves_changed = True
        for td in d["tracks"]:
            tr = _Track.from_dict(td)
            self._tracks[tr.key] = tr
            self._board_tracks.setdefault(tr.board_id, []).append(tr)
            if tr.alarm_id:
                self._by_id[tr.alarm_id] = tr

    @classmethod
    def from_state(cls, d: Mapping[str, Any],
                   settings: AlarmSettings | None = None) -> AlarmEngine:
        engine = cls(settings)
        engine.load_state(d)
        return engine

    # -- rules ----------------------------------------------------------------------------------

    def _valid(self, name: str, value: Any) -> int | None:
        """The reading, or None for a marker (abnormal/invalid) or a missing field."""
        if value is None:
            return None
        return None if value >= _MARKERS[name][0] else int(value)

    def _valid_list(self, name: str, values: Any) -> list[int | None]:
        """_valid for each; a list without a marker (nearly always) is taken as it is."""
        values = list(values)
        if not values or max(values) < _MARKERS[name][0]:
            return values
        return [self._valid(name, v) for v in values]

    def _board_flags(self, board_id: int, ts_ms: int, flags: int) -> None:
        """A sample's alarm_flags are the board's local alarms now (they also stand in for an
        alarm frame the board had to drop). A thermal event flag that goes away (the board
        rebooted) ends the board's part only: the host's latch waits for a person. A board
        alarm frame newer than the sample (applied at once, ahead of a held backlog) wins."""
        self._boards[board_id].flags = flags
        for rule, mask in _FLAGS.items():
            if rule == "board_silent":
                continue  # a board that reports is not silent, whatever it claims
            if flags & mask:
                tr = self._track(board_id, rule, "")
                if tr.board_ms <= ts_ms:
                    tr.board_level = tr.board_level or _flag_level(rule)
            elif (tr := self._tracks.get((board_id, rule, ""))) is not None and \
                    tr.board_ms <= ts_ms:
                tr.board_level = 0

    def _sensor_faults(self, b: _Board, p: BoardProfile, ts_ms: int, m: Mapping[str, Any],
                       temps: list[int | None], cells: list[int | None]) -> list[AlarmEvent]:
        faults: list[tuple[str, int, str]] = []  # (subject name, index, marker)

        def check(name: str, value: Any, what: str, index: int = 0) -> None:
            if value is None:
                return
            abnormal, invalid = _MARKERS[name]
            if value == invalid:
                faults.append((what, index, "invalid"))
            elif value >= abnormal:
                faults.append((what, index, "abnormal"))

        check("pack_mv", m.get("pack_mv"), "pack voltage")
        check("current_ma", m.get("current_ma"), "current")
        # before the first insulation measurement of a boot the board sends INVALID: that is
        # "not measured yet", for up to two measurement periods
        grace = (not b.riso_seen and b.first_sample_ms is not None
                 and ts_ms - b.first_sample_ms < 2 * p.riso_period_ms)
        fitted = p.riso_period_ms > 0  # a birth with period 0: no insulation monitor fitted
        for i, name in enumerate(("riso_pos_kohm", "riso_neg_kohm")):
            v = m.get(name)
            if not ((grace or not fitted) and v == _MARKERS[name][1]):
                check(name, v, f"insulation {text.SIDES[i]}", i)
        for name, what in (("temps_dc", "probe"), ("cells_mv", "cell")):
            values = m.get(name, ())
            if values and max(values) >= _MARKERS[name][0]:  # else: none to name
                for i, v in enumerate(values):
                    check(name, v, what, i)
        # blind: a whole quantity unreadable limits what the engine can watch -> L2
        blind = bool((temps and all(t is None for t in temps))
                     or (cells and all(c is None for c in cells))
                     or any(f[0] == "pack voltage" for f in faults)
                     or sum(f[0].startswith("insulation") for f in faults) == 2)
        level = (2 if blind else 1) if faults else 0
        tr = self._track(p.board_id, "sensor_fault", "")
        first = faults[0] if faults else None
        if first:
            tr.subject = {"probe": "probe", "cell": "cell"}.get(first[0], "pack")
            tr.subject_index = first[1]
            names = [f"{_fault_name(f, p)} {f[2]}" for f in faults[:6]]
            more = f" and {len(faults) - 6} more" if len(faults) > 6 else ""
            tr.detail = ", ".join(names) + more + (" (a whole quantity unreadable)"
                                                   if blind else "")
        tr.value = float(len(faults))
        crossed = set(range(1, level + 1))
        held = {lvl for lvl in crossed if lvl <= tr.host_level}  # no hysteresis: a marker
        tr.host_level = self._debounce(tr, crossed, held, ts_ms)
        return self._apply(tr, ts_ms)

    def _insulation(self, p: BoardProfile, ts_ms: int,
                    riso: list[int | None]) -> list[AlarmEvent]:
        tr = self._track(p.board_id, "insulation", "")
        known = [(r, i) for i, r in enumerate(riso) if r is not None]
        if not known:
            return self._apply(tr, ts_ms)  # nothing measured: hold, never clear on no data
        r_kohm, side = min(known)
        # Ohm per volt of the maximum pack voltage (UN R100 / GB 18384 are per volt)
        ohm_per_v = r_kohm * 1e6 / p.max_pack_mv
        tr.detail = "" if len(known) == 2 else "other side unreadable"
        return self._threshold(tr, p, ts_ms, round(ohm_per_v, 1), side, tr.detail)

    def _temperatures(self, p: BoardProfile, ts_ms: int,
                      temps: list[int | None]) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        valid = [(t, i) for i, t in enumerate(temps) if t is not None]
        tr_hot = self._track(p.board_id, "temp_high", "")
        tr_spread = self._track(p.board_id, "temp_spread", "")
        if not valid:
            return self._apply(tr_hot, ts_ms) + self._apply(tr_spread, ts_ms)
        t_max, at = max(valid)
        tr_hot.subject = "probe"
        if len(valid) < len(temps) and self._lower(tr_hot, p, float(t_max)):
            # a probe went unreadable while it is hot: past the NTC's range in a thermal
            # event, or burnt off. The cooler probes left do not clear or lower the alarm.
            return self._apply(tr_hot, ts_ms) + self._apply(tr_spread, ts_ms)
        out += self._threshold(tr_hot, p, ts_ms, float(t_max), at, "")
        # spread among the probes on cells (an ambient or busbar probe is not a cell's
        # temperature), or among all probes when fewer than two sit on cells
        on_cells = [(t, i) for t, i in valid
                    if i < len(p.probe_cell) and p.probe_cell[i] != NOT_ON_CELL]
        group = on_cells if len(on_cells) >= 2 else valid
        tr_spread.subject = "probe"
        if len(group) < 2:
            return out + self._apply(tr_spread, ts_ms)
        (hi, hi_at), (lo, lo_at) = max(group), min(group)

        def detail() -> str:
            return (f"{text.subject_name('probe', hi_at, p.probe_cell)} hottest at "
                    f"{hi / 10:.1f} °C, {text.subject_name('probe', lo_at, p.probe_cell)} "
                    f"coolest at {lo / 10:.1f} °C")
        return out + self._threshold(tr_spread, p, ts_ms, float(hi - lo), hi_at, detail)

    def _remember(self, b: _Board, ts_ms: int, pack_mv: int | None,
                  temps: list[int | None]) -> None:
        b.hist.append([ts_ms, pack_mv, temps])
        # keep one sample at least a minute old (the rise reference), nothing older
        while len(b.hist) > 2 and b.hist[1][0] <= ts_ms - _RISE_WINDOW_MS:
            b.hist.pop(0)

    def _rates(self, b: _Board, p: BoardProfile, ts_ms: int,
               pack_mv: int | None) -> list[AlarmEvent]:
        # rise per minute, per probe: against the oldest sample kept (a minute old, or at
        # least half a minute while the history is short; over 5 min old is too coarse)
        tr = self._track(p.board_id, "temp_rise_rate", "")
        tr.subject = "probe"
        ref, now = b.hist[0], b.hist[-1]
        dt = ts_ms - ref[0]
        rises = []
        if _RISE_MIN_MS <= dt <= _RISE_MAX_MS:
            rises = [((t - r) * 60_000 / dt, i)
                     for i, (t, r) in enumerate(zip(now[2], ref[2], strict=False))
                     if t is not None and r is not None]
        if rises:
            rise, at = max(rises)
            out = self._threshold(tr, p, ts_ms, round(rise, 1), at, "")
        else:
            out = self._apply(tr, ts_ms)  # no rate this time: hold
        return out + self._thermal_event(b, p, ts_ms, pack_mv)

    def _thermal_event(self, b: _Board, p: BoardProfile, ts_ms: int,
                       pack_mv: int | None) -> list[AlarmEvent]:
        """GB 38031: dT/dt >= 1 K/s held >= 3 s (and over at least two sample intervals, so
        one glitching reading cannot do it) with T >= the profile's maximum or the pack
        voltage down > 25 %. Latches: only an acknowledgement releases it."""
        tr = self._track(p.board_id, "thermal_event", "")
        tr.subject = "probe"
        lim = self.settings.limit(p.chemistry, "thermal_event")
        if lim is None or len(b.hist) < 2:
            return self._apply(tr, ts_ms)
        rate_min = lim.levels[4]
        hold_ms = lim.extra["hold_s"] * 1000
        (t0, _, prev), (t1, _, temps) = b.hist[-2], b.hist[-1]
        n = len(temps)
        b.rising_since_ms = (b.rising_since_ms + [None] * n)[:n]
        b.rising_steps = (b.rising_steps + [0] * n)[:n]
        dt = t1 - t0
        drop_pct: float | None = None  # computed only when a probe qualifies (rare)

        def voltage_drop_pct() -> float:
            ref_mv = max((h[1] for h in b.hist if h[1] is not None
                          and h[0] >= ts_ms - _DROP_WINDOW_MS), default=None)
            return ((ref_mv - pack_mv) * 100 / ref_mv
                    if ref_mv and pack_mv is not None else 0.0)

        hit: tuple[float, int, str] | None = None
        for i in range(n):
            t, r = temps[i], prev[i] if i < len(prev) else None
            rate = (t - r) * 1000 / dt if t is not None and r is not None and dt > 0 else None
            if rate is None or rate < rate_min:
                b.rising_since_ms[i], b.rising_steps[i] = None, 0
                continue
            if b.rising_since_ms[i] is None:
                b.rising_since_ms[i] = t0
            b.rising_steps[i] += 1
            since = b.rising_since_ms[i]
            assert since is not None and t is not None
            held = ts_ms - since >= hold_ms and b.rising_steps[i] >= 2
            hot = t >= p.max_temp_dc
            if held and not hot and drop_pct is None:
                drop_pct = voltage_drop_pct()
            dropped = drop_pct is not None and drop_pct > lim.extra["voltage_drop_pct"]
            if held and (hot or dropped) and (hit is None or rate > hit[0]):
                why = (f"{text.subject_name('probe', i, p.probe_cell)} at {t / 10:.1f} °C "
                       f"≥ profile max {p.max_temp_dc / 10:.1f} °C") if hot else (
                       f"pack voltage down {drop_pct:.0f} % (> "
                       f"{lim.extra['voltage_drop_pct']} %)")
                hit = (rate, i, why)
        # latch a new occurrence; once a person has acknowledged it, the alarm clears when the
        # condition ends instead of latching again
        if hit is not None and not tr.latched and not (tr.active and tr.acked):
            tr.latched = True
            tr.value, tr.subject_index, tr.detail = round(hit[0], 1), hit[1], hit[2]
        tr.host_level = 4 if hit is not None else 0
        return self._apply(tr, ts_ms)

    def _cells(self, p: BoardProfile, ts_ms: int, cells: list[int | None]) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        valid = [(v, i) for i, v in enumerate(cells) if v is not None]
        trs = [self._track(p.board_id, r, "") for r in
               ("cell_overvoltage", "cell_undervoltage", "cell_spread")]
        if not valid:
            for tr in trs:
                out += self._apply(tr, ts_ms)
            return out
        for tr in trs:
            tr.subject = "cell"
        if len(valid) == len(cells):  # no marker: find the extremes without tuples (hot)
            plain = cast(list[int], cells)
            v_max, v_min = max(plain), min(plain)
            max_at = len(plain) - 1 - plain[::-1].index(v_max)  # max() of (v, i): the last
            min_at = plain.index(v_min)
        else:
            (v_max, max_at), (v_min, min_at) = max(valid), min(valid)
        out += self._threshold(trs[0], p, ts_ms, float(v_max), max_at, "")
        out += self._threshold(trs[1], p, ts_ms, float(v_min), min_at, "")
        if len(valid) < 2:
            return out + self._apply(trs[2], ts_ms)
        lim = self.settings.limit(p.chemistry, "cell_spread")
        if lim is not None and self._idle(trs[2], lim, float(v_max - v_min)):
            trs[2].value, trs[2].detail = float(v_max - v_min), ""
            return out  # naming the odd cell costs a sort: only worth it when it matters
        # name the cell furthest from the median: the one that drifts
        ordered = sorted(v for v, _ in valid)
        median = ordered[len(ordered) // 2]
        _, odd_v, odd_at = max((abs(v - median), v, i) for v, i in valid)

        def detail() -> str:
            return (f"cell {odd_at + 1} furthest from the rest at {text.volts(odd_v)} "
                    f"(median {text.volts(median)})")
        return out + self._threshold(trs[2], p, ts_ms, float(v_max - v_min), odd_at, detail)

    # -- prediction -----------------------------------------------------------------------------

    def _trends(self, b: _Board, p: BoardProfile, ts_ms: int, riso: list[int | None],
                temps: list[int | None], current_ma: int | None) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        known = [r for r in riso if r is not None]
        if known:
            out += self._trend_point(b, p, ts_ms, "insulation", min(known) * 1e6 / p.max_pack_mv)
        valid = [t for t in temps if t is not None]
        in_use = (current_ma is not None
                  and abs(current_ma) >= p.rated_mah * self.settings.in_use_c_rate)
        if valid and in_use:
            out += self._trend_point(b, p, ts_ms, "temp_high", float(max(valid)))
        return out

    def _trend_point(self, b: _Board, p: BoardProfile, ts_ms: int, rule: str,
                     value: float) -> list[AlarmEvent]:
        """Keep the interval's worst value; when an interval closes, refit and forecast."""
        lim = self.settings.limit(p.chemistry, rule)
        if lim is None or 3 not in lim.levels:
            return []
        bucket_s, window_s, _, _ = self.settings.trend(rule)
        bucket_ms = int(bucket_s * 1000)
        bucket = ts_ms // bucket_ms
        tn = b.trends.get(rule)  # (per quiet sample: no _Trend made just to be dropped)
        if tn is None:
            tn = b.trends[rule] = _Trend()
        if tn.bucket == bucket:
            if tn.worst is None or (value > tn.worst if lim.above else value < tn.worst):
                tn.worst = value
            return []
        out: list[AlarmEvent] = []
        if tn.bucket is not None and tn.worst is not None and bucket > tn.bucket:
            t_h = (tn.bucket + 0.5) * bucket_ms / 3_600_000
            tn.points.append([t_h, tn.worst])
            oldest = ts_ms / 3_600_000 - window_s / 3600
            tn.points = [pt for pt in tn.points if pt[0] >= oldest]
            out += self._forecast(tn, p, ts_ms, rule, lim)
        tn.bucket, tn.worst = bucket, value
        return out

    def _forecast(self, tn: _Trend, p: BoardProfile, ts_ms: int, rule: str,
                  lim: limits.Limit) -> list[AlarmEvent]:
        """Theil-Sen line through the interval extremes. Raise L2 when, with the slowest
        slope the data allow at `trend_z` confidence, the fitted line still reaches the L3
        threshold within the horizon (and Mann-Kendall calls it a trend), for `confirm`
        evaluations in a row; clear when even the central slope puts the crossing beyond
        1.5 x the horizon, or the trend is gone."""
        s = self.settings
        _, _, min_points, confirm = s.trend(rule)
        tr = self._track(p.board_id, rule, "forecast")
        now_h = ts_ms / 3_600_000
        horizon_h = s.forecast_horizon_s / 3600
        sign = 1 if lim.above else -1  # the direction towards the alarm
        threshold = lim.levels[3]
        if len(tn.points) >= min_points:
            ts = [pt[0] - now_h for pt in tn.points]  # hours before now: the line at t = 0
            fit = sen_fit(ts, [pt[1] for pt in tn.points], s.trend_z)
            slowest = fit.slope_lo if sign > 0 else fit.slope_hi
            hours = _hours_to(threshold, fit.intercept, slowest, sign)
            central = _hours_to(threshold, fit.intercept, fit.slope, sign)
            raise_now = fit.z * sign >= s.trend_z and hours <= horizon_h
            clear_now = (fit.z * sign < s.trend_z * _TREND_CLEAR_Z
                         or central > horizon_h * _TREND_CLEAR_HORIZON)
            if rule == "insulation":
                rate = (f"falling {-fit.slope:.0f} Ω/V per hour (at least "
                        f"{max(0.0, -slowest):.0f})")
            else:
                rate = (f"rising {fit.slope / 10:.2f} K per hour in use (at least "
                        f"{max(0.0, slowest) / 10:.2f})")
            tr.detail = (f"{rate}, Theil-Sen over {len(ts)} intervals, Mann-Kendall z "
                         f"{fit.z:+.1f}; L3 at "
                         f"{text.quantity(rule, text.unit_of(rule), threshold)}")
            tr.value = round(hours, 1) if math.isfinite(hours) else None
        else:  # too few points (a gap emptied the window): no evidence for a forecast
            raise_now, clear_now = False, True
        flip = clear_now if tn.on else raise_now
        tn.streak = tn.streak + 1 if flip else 0
        if tn.streak >= confirm:
            tn.on, tn.streak = not tn.on, 0
        tr.host_level = 2 if tn.on else 0
        return self._apply(tr, ts_ms)

    # -- levels ---------------------------------------------------------------------------------

    def _threshold(self, tr: _Track, p: BoardProfile, ts_ms: int, value: float, index: int,
                   detail: str | Callable[[], str] = "") -> list[AlarmEvent]:
        """A threshold rule: levels crossed, hysteresis, on-delay; then the lifecycle.
        `detail` may be a function: it is only worth building when something happens."""
        lim = self.settings.limit(p.chemistry, tr.rule)
        if lim is None:
            return []
        if self._idle(tr, lim, value):
            tr.value, tr.detail, tr.subject_index = value, "", index
            return []
        tr.value, tr.detail = value, detail if isinstance(detail, str) else detail()
        if tr.host_level == 0 or _beyond(lim, value, lim.levels[min(lim.levels)]):
            tr.subject_index = index  # keep naming what raised it while it only holds
        crossed = {lvl for lvl, thr in lim.levels.items() if _beyond(lim, value, thr)}
        held = {lvl for lvl in lim.levels if lvl <= tr.host_level
                and self._held(tr, lim, lvl, value, ts_ms, lvl in crossed)}
        tr.host_level = self._debounce(tr, crossed, held, ts_ms)
        return self._apply(tr, ts_ms)

    def _lower(self, tr: _Track, p: BoardProfile, value: float) -> bool:
        """The rule is raised and the value is short of its current level."""
        lim = self.settings.limit(p.chemistry, tr.rule)
        return (lim is not None and tr.host_level in lim.levels
                and not _beyond(lim, value, lim.levels[tr.host_level]))

    @staticmethod
    def _idle(tr: _Track, lim: limits.Limit, value: float) -> bool:
        """The common case and the hot path: an idle rule and a value short of its lowest
        level (the levels are monotonic), so nothing can change but the reading."""
        return not (tr.host_level or tr.board_level or tr.latched or tr.active or tr.since_ms
                    or tr.below_since_ms) and not _beyond(lim, value, lim.levels[min(lim.levels)])

    def _held(self, tr: _Track, lim: limits.Limit, level: int, value: float, ts_ms: int,
              crossed: bool) -> bool:
        """Still in the alarm at this level, given the table's hysteresis."""
        if "l2_hold_s" in lim.extra:  # time-based: below the threshold for the hold time
            if crossed:
                tr.below_since_ms.pop(level, None)
                return True
            since = tr.below_since_ms.setdefault(level, ts_ms)
            return ts_ms - since < lim.extra["l2_hold_s"] * 1000
        bound = clear_bound(lim, lim.levels[level])
        return value >= bound if lim.above else value < bound

    def _debounce(self, tr: _Track, crossed: set[int], held: set[int], ts_ms: int) -> int:
        """On-delay per level (L3/L4: none): a crossing counts once it has held that long."""
        for lvl in list(tr.since_ms):
            if lvl not in crossed:
                del tr.since_ms[lvl]
        for lvl in crossed:
            tr.since_ms.setdefault(lvl, ts_ms)
        eligible = {lvl for lvl in crossed
                    if ts_ms - tr.since_ms[lvl] >= self.settings.on_delay_ms(tr.rule, lvl)}
        level = max(eligible | held, default=0)
        for lvl in list(tr.below_since_ms):  # clear timers of levels no longer held
            if lvl > level:
                del tr.below_since_ms[lvl]
        return level

    # -- lifecycle ------------------------------------------------------------------------------

    def _apply(self, tr: _Track, ts_ms: int) -> list[AlarmEvent]:
        """Bring the alarm instance in line with the track's level."""
        base = max(tr.host_level, tr.board_level, 4 if tr.latched else 0)
        out: list[AlarmEvent] = []
        if base == 0:
            if tr.alarm_id is not None and tr.active:
                prev = tr.level
                tr.active = False
                out.append(self._emit(tr, "cleared", ts_ms, prev,
                                      close=tr.acked and tr.shelved_until_ms is None))
            return out
        if tr.alarm_id is None or not tr.active:
            if tr.alarm_id is None:
                tr.alarm_id = self._next_id
                self._next_id += 1
                self._by_id[tr.alarm_id] = tr
                self._shelves_changed |= tr.shelved_until_ms is not None
            window_ms = self.settings.recurrence_window_s * 1000
            tr.raises_ms = [t for t in tr.raises_ms if ts_ms - t < window_ms] + [ts_ms]
            tr.boost = len(tr.raises_ms) // self.settings.recurrence_count
            tr.active, tr.acked = True, False
            tr.level = base
            out += self._safety_unshelve(tr, ts_ms)
            out.append(self._emit(tr, "raised", ts_ms, 0))
            eff = _boosted(tr.rule, base, tr.boost)
            if eff > base:
                out += self._safety_unshelve(tr, ts_ms, eff)
                n = len(tr.raises_ms)
                reason = (f"raised {n} times in {self.settings.recurrence_window_s / 3600:g} h "
                          f"(now {self._cond(tr)})")
                prev, tr.level = tr.level, eff
                out.append(self._emit(tr, "escalated", ts_ms, prev, reason=reason))
            return out
        eff = _boosted(tr.rule, base, tr.boost)
        if eff > tr.level:
            out += self._safety_unshelve(tr, ts_ms, eff)
            prev, tr.level, tr.acked = tr.level, eff, False  # a higher level is news again
            out.append(self._emit(tr, "escalated", ts_ms, prev))
        elif eff < tr.level:
            prev, tr.level = tr.level, eff
            out.append(self._emit(tr, "deescalated", ts_ms, prev))
        return out

    def _safety_unshelve(self, tr: _Track, ts_ms: int, level: int | None = None) -> list[
            AlarmEvent]:
        if tr.shelved_until_ms is None or (level or tr.level) < 3:
            return []
        return self._unshelve(tr, ts_ms, None, "L3/L4 safety alarms are never shelved")

    def _unshelve(self, tr: _Track, ts_ms: int, actor: str | None,
                  note: str | None) -> list[AlarmEvent]:
        tr.shelved_until_ms = None
        self._shelves_changed = True
        if not tr.active:
            tr.acked = True  # cleared while shelved: nothing left for anyone to do
        return [self._emit(tr, "unshelved", ts_ms, tr.level, actor=actor, note=note,
                           close=not tr.active)]

    def _shelf_ms(self) -> int | None:
        """When the next shelving expires (None: nothing is shelved)."""
        if self._shelves_changed:
            # only open alarms can be shelved: _by_id is short, _tracks is not
            self._shelf_ms_cached = min((t.shelved_until_ms for t in self._by_id.values()
                                         if t.shelved_until_ms is not None), default=None)
            self._shelves_changed = False
        return self._shelf_ms_cached

    def _expire_shelves(self, now_ms: int) -> list[AlarmEvent]:
        due = self._shelf_ms()
        if due is None or now_ms < due:  # every sample asks: the answer is nearly always no
            return []
        out: list[AlarmEvent] = []
        for tr in [t for t in self._by_id.values() if t.shelved_until_ms is not None
                   and now_ms >= t.shelved_until_ms]:
            out += self._unshelve(tr, now_ms, None, "shelving expired")
        return out

    def _close(self, tr: _Track) -> None:
        self._shelves_changed |= tr.shelved_until_ms is not None
        if tr.alarm_id is not None:
            self._by_id.pop(tr.alarm_id, None)
        tr.alarm_id, tr.level, tr.boost = None, 0, 0
        tr.active = tr.acked = False

    def _state(self, tr: _Track) -> str:
        if tr.alarm_id is None:
            return "cleared"
        b = self._boards.get(tr.board_id)
        if b is not None and not b.in_service and tr.level < 4:
            return "suppressed"
        if tr.shelved_until_ms is not None:
            return "shelved"
        if tr.active:
            return "active_ack" if tr.acked else "active_unack"
        return "cleared" if tr.acked else "cleared_unack"

    def _emit(self, tr: _Track, event: str, ts_ms: int, prev_level: int, *,
              actor: str | None = None, note: str | None = None, reason: str | None = None,
              until_ms: int | None = None, close: bool = False) -> AlarmEvent:
        """Build the event for a transition (and close the alarm first if it ends here)."""
        assert tr.alarm_id is not None
        self._dirty.add(tr.board_id)
        p = self._boards[tr.board_id].profile
        assert p is not None
        alarm_id, level, active, acked = tr.alarm_id, tr.level, tr.active, tr.acked or close
        if close:
            self._close(tr)
        scope = tr.scope if tr.scope in ("forecast", "seq") else ""
        source, subject, index, value, threshold, mode = self._reading(tr, p, event)
        if source == "board" and value is None:
            cond = f"the board's local L{tr.board_level} alarm (from its sample flags)"
        elif value is None and not tr.detail and not scope and tr.rule != "board_silent":
            cond = "the board's local alarm ended"
        else:
            cond = text.condition(tr.rule, scope, subject, index, value, threshold,
                                  self._above(tr, p), mode=mode, detail=tr.detail,
                                  probe_cell=p.probe_cell)
        recurrence = reason is not None and reason.startswith("raised")
        ev = AlarmEvent(
            alarm_id=alarm_id, board_id=tr.board_id, site=p.site, rule=tr.rule, level=level,
            prev_level=prev_level, event=event, state=self._state(tr), subject=subject,
            subject_index=index, value=value, threshold=threshold,
            unit=text.unit_of(tr.rule, scope), ts_ms=ts_ms, source=source,
            message=text.message(event, board_id=tr.board_id, site=p.site, rule=tr.rule,
                                 scope=scope, level=level, prev_level=prev_level, cond=cond,
                                 source=source, actor=actor, note=note, reason=reason,
                                 until_ms=until_ms),
            action=text.action(tr.rule, scope, level, event, active=active, acked=acked,
                               recurrence=recurrence),
            actor=actor, note=note, scope=tr.scope, active=active, acked=acked)
        if tr.alarm_id is not None:
            tr.last = ev
        return ev

    def _reading(self, tr: _Track, p: BoardProfile, event: str
                 ) -> tuple[str, str, int, float | None, float | None, str]:
        """(source, subject, index, value, threshold, mode) an event reports: the threshold
        crossed (mode "crossed", or "holding" inside the hysteresis band), or for a clear or a
        level down the bound the value came back over (mode "back")."""
        back = event in ("cleared", "deescalated")
        if tr.scope == "forecast":
            horizon_h = self.settings.forecast_horizon_s / 3600
            return ("predicted", tr.subject, tr.subject_index, tr.value, horizon_h,
                    "back" if event == "cleared" else "crossed")
        host = max(tr.host_level, 4 if tr.latched else 0)
        if tr.board_level > host and event != "cleared":
            return ("board", tr.board_subject, tr.board_index, tr.board_value,
                    tr.board_threshold, "crossed")
        lim = None if tr.scope == "seq" else self.settings.limit(p.chemistry, tr.rule)
        reading = ("host", tr.subject, tr.subject_index, tr.value)
        if lim is None or tr.value is None:
            return (*reading, None, "back" if event == "cleared" else "crossed")
        above_host = [x for x in lim.levels if x > tr.host_level]
        if back and above_host:
            thr = lim.levels[min(above_host)]
            bound = thr if "l2_hold_s" in lim.extra else clear_bound(lim, thr)
            return (*reading, bound, "back")
        lvl = max((x for x in lim.levels if x <= tr.host_level), default=min(lim.levels))
        thr = lim.levels[lvl]
        return (*reading, thr, "crossed" if _beyond(lim, tr.value, thr) else "holding")

    def _above(self, tr: _Track, p: BoardProfile) -> bool:
        lim = self.settings.limit(p.chemistry, tr.rule)
        return True if lim is None else lim.above

    def _cond(self, tr: _Track) -> str:
        p = self._boards[tr.board_id].profile
        assert p is not None
        _, subject, index, value, threshold, mode = self._reading(tr, p, "raised")
        scope = tr.scope if tr.scope in ("forecast", "seq") else ""
        return text.condition(tr.rule, scope, subject, index, value, threshold,
                              self._above(tr, p), mode=mode, detail=tr.detail,
                              probe_cell=p.probe_cell)

    # -- lookups --------------------------------------------------------------------------------

    def _board(self, board_id: int) -> tuple[_Board, BoardProfile]:
        b = self._boards.get(board_id)
        if b is None or b.profile is None:
            raise KeyError(f"board {board_id} has no profile yet: set_profile() from its birth "
                           "frame first (ask it for a rebirth)")
        return b, b.profile

    def _heard(self, b: _Board, board_id: int, ts_ms: int) -> list[AlarmEvent]:
        """A frame (or an online notice) arrived: the board is not silent."""
        if not self.silence_on_host_clock:
            b.last_frame_ms = ts_ms if b.last_frame_ms is None else max(b.last_frame_ms, ts_ms)
        b.offline = False
        tr = self._tracks.get((board_id, "board_silent", ""))
        if tr is None or tr.host_level == 0:
            return []
        tr.host_level = 0
        return self._apply(tr, ts_ms)

    def _track(self, board_id: int, rule: str, scope: str) -> _Track:
        key = (board_id, rule, scope)
        tr = self._tracks.get(key)
        if tr is None:
            tr = self._tracks[key] = _Track(board_id, rule, scope)
            self._board_tracks.setdefault(board_id, []).append(tr)
        return tr

    def _open(self, alarm_id: int) -> _Track:
        tr = self._by_id.get(alarm_id)
        if tr is not None:
            return tr
        if 0 < alarm_id < self._next_id:
            raise ValueError(f"alarm {alarm_id} is closed (cleared and acknowledged)")
        raise KeyError(f"unknown alarm id {alarm_id}")

    def _name(self, tr: _Track) -> str:
        return (f"alarm {tr.alarm_id} ({text.title(tr.rule, tr.scope)} L{tr.level}, "
                f"board {tr.board_id})")


_SAMPLE_RULES = frozenset(("sensor_fault", "insulation", "temp_high", "temp_spread",
                           "temp_rise_rate", "thermal_event", "cell_overvoltage",
                           "cell_undervoltage", "cell_spread"))
# wire rules whose flag the board may set but no host sample rule evaluates
_FLAG_ONLY_RULES = tuple(r for r in _FLAGS if r not in _SAMPLE_RULES and r != "board_silent")
# data quality is never a reason to stop a pack: recurrence takes it to L2 at most
_RECURRENCE_CAP = {"board_silent": 2, "sensor_fault": 2}


def _flag_level(rule: str) -> int:
    """The level a board's alarm flag stands for: the board checks L3/L4 rows locally."""
    if rule == "thermal_event":
        return 4
    rows = [lim for lim in limits.LIMITS if lim.rule == rule]
    if rule == "sensor_fault" or (rows and max(rows[0].levels) < 3):
        return 1
    return 3
_THRESHOLD_RULES = frozenset(lim.rule for lim in limits.LIMITS
                             if lim.rule not in ("thermal_event", "board_silent"))


def _boosted(rule: str, base: int, boost: int) -> int:
    cap = _RECURRENCE_CAP.get(rule, 3)
    return base if base >= cap else min(cap, base + boost)


def _beyond(lim: limits.Limit, value: float, threshold: float) -> bool:
    return value >= threshold if lim.above else value < threshold


def clear_bound(lim: limits.Limit, threshold: int) -> float:
    """Where an alarm at `threshold` clears (the table's hysteresis): `clear_pct` scales the
    threshold, any other `clear_*` moves it back by that much in the quantity's unit."""
    for key, amount in lim.extra.items():
        if key == "clear_pct":
            return threshold * amount / 100
        if key.startswith("clear_"):
            return threshold - amount if lim.above else threshold + amount
    return threshold


def _hours_to(threshold: float, now_value: float, slope_per_h: float, sign: int) -> float:
    """Hours until a line at now_value moving slope_per_h reaches threshold (sign: the
    direction towards the alarm); 0 if it is there already, inf if it is moving away."""
    if sign * (now_value - threshold) >= 0:
        return 0.0
    if slope_per_h * sign <= 0:
        return math.inf
    return (threshold - now_value) / slope_per_h


def _fault_name(f: tuple[str, int, str], p: BoardProfile) -> str:
    what, index, _ = f
    if what in ("probe", "cell"):
        return text.subject_name(what, index, p.probe_cell)
    return what


# -- robust trend ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SenFit:
    slope: float  # Theil-Sen: the median of the pairwise slopes
    intercept: float  # the median of y - slope * t (the line's value at t = 0)
    slope_lo: float  # confidence bounds on the slope at the z asked for (Gilbert 1987)
    slope_hi: float
    z: float  # Mann-Kendall trend statistic: > 0 rising, < 0 falling


def sen_fit(ts: list[float], ys: list[float], z_conf: float) -> SenFit:
    """Theil-Sen line with its slope's confidence bounds and the Mann-Kendall z. Robust: up
    to ~29 % of the points can be anything without moving the line far (one dip does nothing),
    and neither needs the noise to be normal."""
    n = len(ys)
    slopes = sorted((ys[j] - ys[i]) / (ts[j] - ts[i])
                    for i in range(n) for j in range(i + 1, n) if ts[j] != ts[i])
    if not slopes:
        return SenFit(0.0, _median(ys), 0.0, 0.0, 0.0)
    slope = _median(slopes)
    intercept = _median([y - slope * t for t, y in zip(ts, ys, strict=True)])
    s = sum((ys[j] > ys[i]) - (ys[j] < ys[i]) for i in range(n) for j in range(i + 1, n))
    counts: dict[float, int] = {}
    for y in ys:
        counts[y] = counts.get(y, 0) + 1
    var = (n * (n - 1) * (2 * n + 5)
           - sum(c * (c - 1) * (2 * c + 5) for c in counts.values())) / 18
    if var <= 0:
        return SenFit(slope, intercept, slope, slope, 0.0)
    z = 0.0 if s == 0 else (s - math.copysign(1, s)) / math.sqrt(var)  # continuity-corrected
    half = z_conf * math.sqrt(var)
    m = len(slopes)
    lo = slopes[max(0, min(m - 1, math.floor((m - half) / 2) - 1))]
    hi = slopes[max(0, min(m - 1, math.ceil((m + half) / 2)))]
    return SenFit(slope, intercept, lo, hi, z)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
