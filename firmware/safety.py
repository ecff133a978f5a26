"""Local safety: the L3 and L4 rules the board checks itself, link or no link.

Thresholds come from the generated `limits` module (the host's limits table) unless the board's
config overrides them. evaluate() runs on every sample, in integers, into preallocated state:
the active rules as a wire alarm-flags mask, the highest level, and raise/clear events queued
for the link (alarm frames). L3/L4 fire on the first qualifying sample (no on-delay); they
clear with the table's hysteresis. A thermal event (L4) latches until reboot: only people
clear it.
"""

from array import array

import limits
import wire

_T_BAD = wire.I16_ABNORMAL  # temps at or above this are markers, not readings
_MV_BAD = wire.U16_ABNORMAL
_KOHM_BAD = wire.U16_ABNORMAL

RAISED = wire.EVENT_RAISED
CLEARED = wire.EVENT_CLEARED
PACK = wire.SUBJECT_PACK
CELL = wire.SUBJECT_CELL
PROBE = wire.SUBJECT_PROBE

_HIST = 64  # seconds of max-temperature and pack-voltage history (rates, voltage drop)
_QUEUE = 16  # alarm events waiting for the link


class LocalSafety:
    def __init__(self, chemistry: str, max_pack_mv: int, max_temp_dc: int,
                 overrides: dict | None = None) -> None:
        o = overrides or {}
        nmc = chemistry == "nmc"
        self.cell_ov_mv = o.get("cell_overvoltage_l3_mv", limits.CELL_OVERVOLTAGE_NMC_L3 if nmc
                                else limits.CELL_OVERVOLTAGE_LFP_L3)
        self.cell_uv_mv = o.get("cell_undervoltage_l3_mv", limits.CELL_UNDERVOLTAGE_NMC_L3
                                if nmc else limits.CELL_UNDERVOLTAGE_LFP_L3)
        self.temp_high_dc = o.get("temp_high_l3_dc", limits.TEMP_HIGH_L3)
        self.temp_spread_dc = o.get("temp_spread_l3_dc", limits.TEMP_SPREAD_L3)
        self.rise_dc_per_min = o.get("temp_rise_l3_dc_per_min", limits.TEMP_RISE_RATE_L3)
        self.cell_spread_mv = o.get("cell_spread_l3_mv", limits.CELL_SPREAD_L3)
        # Ohm per volt of the maximum pack voltage -> one kOhm threshold for this pack.
        ohm_per_v = o.get("insulation_l3_ohm_per_v", limits.INSULATION_L3)
        self.riso_l3_kohm = ohm_per_v * (max_pack_mv // 1000) // 1000
        self.riso_clear_kohm = self.riso_l3_kohm * limits.INSULATION_CLEAR_PCT // 100
        self.max_temp_dc = max_temp_dc
        self.runaway_rate_dc_per_s = limits.THERMAL_EVENT_L4
        self.runaway_hold_s = limits.THERMAL_EVENT_HOLD_S
        self.flags = 0  # active rules (wire ALARM_* mask)
        self.level = 0
        self._t_hist = array("h", bytes(2 * _HIST))  # max temp per sample, 0.1 degC
        self._v_hist = array("i", bytes(4 * _HIST))  # pack mV per sample
        self._ms_hist = array("i", bytes(4 * _HIST))  # ticks of each sample
        self._n = 0  # samples seen (saturates at _HIST)
        self._head = 0
        self._rising_s = 0  # consecutive samples with dT/dt >= the runaway rate
        # queued events: parallel arrays, so queuing allocates nothing
        self.q_rule = bytearray(_QUEUE)
        self.q_level = bytearray(_QUEUE)
        self.q_event = bytearray(_QUEUE)
        self.q_subject = bytearray(_QUEUE)
        self.q_index = array("H", bytes(2 * _QUEUE))
        self.q_value = array("i", bytes(4 * _QUEUE))
        self.q_threshold = array("i", bytes(4 * _QUEUE))
        self.q_len = 0
        self.q_dropped = 0

    # -- per sample ---------------------------------------------------------------------------

    def evaluate(self, ticks_ms: int, pack_mv: int, temps_dc, n_probes: int, cells_mv,
                 n_cells: int, riso_pos_kohm: int, riso_neg_kohm: int) -> int:
        """Update the active rules from one sample; return the highest active level."""
        t_max = -32768
        t_min = 32767
        t_at = 0
        for i in range(n_probes):
            t = temps_dc[i]
            if t >= _T_BAD:
                continue
            if t > t_max:
                t_max = t
                t_at = i
            if t < t_min:
                t_min = t
        have_t = t_max > -32768
        if have_t:
            self._check(wire.RULE_TEMP_HIGH, wire.ALARM_TEMP_HIGH, t_max >= self.temp_high_dc,
                        t_max < self.temp_high_dc - limits.TEMP_HIGH_CLEAR_DC, PROBE, t_at,
                        t_max, self.temp_high_dc)
            spread = t_max - t_min
            self._check(wire.RULE_TEMP_SPREAD, wire.ALARM_TEMP_SPREAD,
                        spread >= self.temp_spread_dc,
                        spread < self.temp_spread_dc - limits.TEMP_SPREAD_CLEAR_DC, PROBE, t_at,
                        spread, self.temp_spread_dc)
        v_max = 0
        v_min = 0xFFFF
        v_max_at = 0
        v_min_at = 0
        for i in range(n_cells):
            v = cells_mv[i]
            if v >= _MV_BAD:
                continue
            if v > v_max:
                v_max = v
                v_max_at = i
            if v < v_min:
                v_min = v
                v_min_at = i
        if v_max:
            self._check(wire.RULE_CELL_OVERVOLTAGE, wire.ALARM_CELL_OVERVOLTAGE,
                        v_max >= self.cell_ov_mv,
                        v_max < self.cell_ov_mv - limits.CELL_OVERVOLTAGE_CLEAR_MV, CELL,
                        v_max_at, v_max, self.cell_ov_mv)
            self._check(wire.RULE_CELL_UNDERVOLTAGE, wire.ALARM_CELL_UNDERVOLTAGE,
                        v_min < self.cell_uv_mv,
                        v_min >= self.cell_uv_mv + limits.CELL_UNDERVOLTAGE_CLEAR_MV, CELL,
                        v_min_at, v_min, self.cell_uv_mv)
            spread = v_max - v_min
            self._check(wire.RULE_CELL_SPREAD, wire.ALARM_CELL_SPREAD,
                        spread >= self.cell_spread_mv,
                        spread < self.cell_spread_mv * limits.CELL_SPREAD_CLEAR_PCT // 100,
                        CELL, v_min_at, spread, self.cell_spread_mv)
        r_min = riso_pos_kohm if riso_pos_kohm < riso_neg_kohm else riso_neg_kohm
        if r_min < _KOHM_BAD:
            side = 0 if riso_pos_kohm <= riso_neg_kohm else 1  # index: 0 HV+ side, 1 HV- side
            self._check(wire.RULE_INSULATION, wire.ALARM_INSULATION, r_min < self.riso_l3_kohm,
                        r_min >= self.riso_clear_kohm, PACK, side, r_min, self.riso_l3_kohm)
        # rates are per second and per minute: keep one history entry per second, whatever
        # the sampling period
        if self._n == 0 or ticks_ms - self._ms_hist[(self._head - 1) % _HIST] >= 1000:
            self._history(ticks_ms, t_max if have_t else -32768, pack_mv, t_at)
        return self.level

    def _history(self, ticks_ms: int, t_max: int, pack_mv: int, t_at: int) -> None:
        h = self._head
        prev = (h - 1) % _HIST
        self._t_hist[h] = t_max
        self._v_hist[h] = pack_mv
        self._ms_hist[h] = ticks_ms
        self._head = (h + 1) % _HIST
        if self._n < _HIST:
            self._n += 1
        if self._n < 2 or t_max == -32768 or self._t_hist[prev] == -32768:
            self._rising_s = 0
            return
        # rise over the last minute (or what history holds): L3 temperature rise rate
        back = self._n - 1 if self._n < 61 else 60
        old = (h - back) % _HIST
        dt_ms = ticks_ms - self._ms_hist[old]
        if dt_ms > 0 and self._t_hist[old] != -32768:
            rise = (t_max - self._t_hist[old]) * 60_000 // dt_ms
            self._check(wire.RULE_TEMP_RISE_RATE, wire.ALARM_TEMP_RISE_RATE,
                        rise >= self.rise_dc_per_min and back >= 30, rise <= 0, PROBE, t_at,
                        rise, self.rise_dc_per_min)
        # thermal event (GB 38031): dT/dt >= 1 K/s held >= 3 s, with T >= the profile's max
        # or the pack voltage down by > 25 % over the same stretch
        step_ms = ticks_ms - self._ms_hist[prev]
        rate = (t_max - self._t_hist[prev]) * 1000 // step_ms if step_ms > 0 else 0
        self._rising_s = self._rising_s + 1 if rate >= self.runaway_rate_dc_per_s else 0
        if self._rising_s >= self.runaway_hold_s and not self.flags & wire.ALARM_THERMAL_EVENT:
            ref = (h - min(self._n - 1, 10)) % _HIST
            v_ref = self._v_hist[ref]
            drop_limit = v_ref * (100 - limits.THERMAL_EVENT_VOLTAGE_DROP_PCT)  # < 2**30
            dropped = v_ref > 0 and pack_mv * 100 < drop_limit
            if t_max >= self.max_temp_dc or dropped:
                self._check(wire.RULE_THERMAL_EVENT, wire.ALARM_THERMAL_EVENT, True, False,
                            PROBE, t_at, rate, self.runaway_rate_dc_per_s, level=4)

    def _check(self, rule: int, bit: int, raise_now: bool, clear_now: bool, subject: int,
               index: int, value: int, threshold: int, level: int = 3) -> None:
        if not self.flags & bit:
            if raise_now:
                self.flags |= bit
                self._queue(rule, level, RAISED, subject, index, value, threshold)
                if level > self.level:
                    self.level = level
        elif clear_now and bit != wire.ALARM_THERMAL_EVENT:  # L4 latches
            self.flags &= ~bit
            self._queue(rule, level, CLEARED, subject, index, value, threshold)
            self.level = 4 if self.flags & wire.ALARM_THERMAL_EVENT else (3 if self.flags else 0)

    def _queue(self, rule: int, level: int, event: int, subject: int, index: int, value: int,
               threshold: int) -> None:
        if self.q_len >= _QUEUE:
            self.q_dropped += 1  # the flags in every sample still carry the state
            return
        i = self.q_len
        self.q_rule[i] = rule
        self.q_level[i] = level
        self.q_event[i] = event
        self.q_subject[i] = subject
        self.q_index[i] = index
        self.q_value[i] = value
        self.q_threshold[i] = threshold
        self.q_len = i + 1
