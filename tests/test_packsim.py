"""The pack simulator (hil/packsim.py): physics sanity, every fault against the alarm limits
it is designed to cross (through the host's own alarm engine where the scenario is about
alarms), determinism, the wire units, link faults, and a vectorised smoke run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from packsentry.hil import packsim as ps
from packsentry.hil.packsim import Fault, LinkFaults, LoadProfile, PackSim, PackSpec, Segment
from packsentry.host.alarms import AlarmEngine, AlarmEvent, BoardProfile
from packsentry.host.ocv import OCV_V, SOC_GRID, chemistry_id
from packsentry.protocol import codec

NMC16 = PackSpec("nmc", 16, 4.0)
H = 3600.0


def ocv_v(chemistry: str, soc: np.ndarray) -> np.ndarray:
    return np.interp(soc, SOC_GRID, OCV_V[chemistry_id(chemistry)])


def engine_for(spec: PackSpec, period_ms: int) -> AlarmEngine:
    eng = AlarmEngine()
    eng.set_profile(BoardProfile(
        board_id=1, site="rig", max_temp_dc=600, sample_period_ms=period_ms,
        riso_period_ms=period_ms, **{**spec.birth_fields(), "probe_cell": spec.probe_cell}))
    return eng


def feed(sim: PackSim, eng: AlarmEngine, duration_s: float, dt_s: float,
         pack: int = 0) -> tuple[list[AlarmEvent], list[ps.Readings]]:
    events: list[AlarmEvent] = []
    readings = []
    for _ in range(round(duration_s / dt_s)):
        r = sim.step(dt_s)
        readings.append(r)
        events += eng.on_sample(1, round(r.t_s * 1000), r.to_board_units(pack))
    return events, readings


def first(events: list[AlarmEvent], **match: Any) -> AlarmEvent | None:
    return next((e for e in events if all(getattr(e, k) == v for k, v in match.items())), None)


# -- physics --------------------------------------------------------------------------------


def test_ocv_at_rest_matches_the_host_curve() -> None:
    specs = [PackSpec(chem, 8, 2.0, initial_soc=soc) for chem in ("nmc", "lfp")
             for soc in (0.1, 0.5, 0.9)]
    sim = PackSim(specs, seed=1)
    r = sim.run(2 * H, 10.0)[-1]
    for i, spec in enumerate(specs):
        curve = ocv_v(spec.chemistry, r.soc[i])
        assert np.allclose(r.true_cell_v[i], curve, atol=1e-6)
        assert np.allclose(r.cell_v[i], curve, atol=0.005)  # sensor noise ~1 mV
        assert abs(r.pack_v[i] - curve.sum()) < 0.05
    assert np.all(r.true_current_a == 0.0)


def test_discharge_at_1c_takes_about_an_hour_fresh_and_less_aged() -> None:
    load = LoadProfile.constant(1.0, v_min_v=2.5)
    fresh = PackSpec("nmc", 4, 4.0, initial_soc=1.0, spread=0.0)
    aged = PackSpec("nmc", 4, 4.0, initial_soc=1.0, spread=0.0, cycles=1000, days=730)
    lfp = PackSpec("lfp", 4, 4.0, initial_soc=1.0, spread=0.0)
    sim = PackSim([fresh, aged, lfp], seed=2, load=load, noise=False)
    end_s = np.full(3, np.nan)
    cap = None
    for _ in range(7200):
        r = sim.step(1.0)
        cap = r.capacity_ah[:, 0] if cap is None else cap
        end_s = np.where(np.isnan(end_s) & (r.true_current_a == 0.0), r.t_s, end_s)
    assert 0.95 * H < end_s[0] <= 1.0 * H and 0.95 * H < end_s[2] <= 1.0 * H
    assert cap is not None and 0.70 < cap[1] / cap[0] < 0.80  # 20 % cycling + calendar fade
    assert end_s[1] / end_s[0] == pytest.approx(cap[1] / cap[0], abs=0.03)


def test_voltage_sag_on_a_current_step_is_i_times_r0_and_grows_in_the_cold() -> None:
    specs = [PackSpec("nmc", 4, 4.0, spread=0.0), PackSpec("nmc", 4, 4.0, ambient_c=0.0,
                                                           spread=0.0)]
    sim = PackSim(specs, seed=3, load=LoadProfile.constant(2.0), noise=False)
    r = sim.step(0.001)  # the RC pair has no time to move
    sag_v = ocv_v("nmc", r.soc) - r.true_cell_v
    r0_25 = r.r0_ohm[0, 0]
    assert sag_v[0] / 8.0 == pytest.approx(np.full(4, r0_25), rel=1e-3)
    cold = math.exp(ps.EA_OVER_R_K * (1 / 273.15 - 1 / 298.15))  # Arrhenius, about 2.5x
    assert sag_v[1] / 8.0 == pytest.approx(np.full(4, r0_25 * cold), rel=1e-3)
    assert r.pack_v[0] == pytest.approx(r.true_pack_v[0])


def test_temperature_rises_with_i2r_and_settles() -> None:
    spec = PackSpec("nmc", 16, 4.0, spread=0.0)
    square = LoadProfile((Segment(600, "cc", 1.0), Segment(600, "cc", -1.0)), repeat=True)
    sim = PackSim([spec], seed=4, load=square, noise=False)
    rs = sim.run(5 * spec.tau_amb_s, 10.0)
    t = np.array([r.true_temp_c[0] for r in rs])
    rise = t[-1] - spec.ambient_c
    assert np.all(rise > 3.0)
    assert np.max(np.abs(t[-1] - t[-180])) < 0.3  # settled: < 0.3 K over the last 30 min
    # steady state: the mean I^2 (R0 + R1) heat times the thermal resistance to ambient
    r0 = rs[-1].r0_ohm[0, 0] * math.exp(ps.EA_OVER_R_K * (1 / (t[-1, 0] + 273.15) - 1 / 298.15))
    heat_w = 4.0**2 * r0 * (1 + ps.R1_OVER_R0)
    expected = heat_w * spec.tau_amb_s / (ps.HEAT_CAP_J_K_AH[0] * spec.rated_ah)
    assert rise == pytest.approx(np.full(4, expected), rel=0.15)


def test_heat_in_one_zone_reaches_its_neighbour_first() -> None:
    # an internal short in cell 0 heats zone 0 (probe on cell 2); the other zones only
    # through the cell-to-cell coupling, so the nearer the warmer
    sim = PackSim([NMC16], seed=5, faults=[Fault("internal_short", 0.0, cell=0,
                                                 params={"r_ohm": 5.0})], noise=False)
    r = sim.run(3 * H, 10.0)[-1]
    t = r.true_temp_c[0]
    assert t[0] > t[1] > t[2] > t[3] > NMC16.ambient_c
    assert t[0] - NMC16.ambient_c > 3 * (t[1] - NMC16.ambient_c)


def test_ambient_probe_reads_the_air() -> None:
    spec = PackSpec("lfp", 8, 10.0, n_probes=2, probe_cell=(3, ps.NOT_ON_CELL),
                    ambient_c=30.0, ambient_swing_c=5.0)
    sim = PackSim([spec], seed=6, load=LoadProfile.drive(1.0))
    r = sim.run(15 * H, 60.0)[-1]  # 15:00, the warmest hour
    assert r.true_temp_c[0, 1] == pytest.approx(35.0, abs=1e-6)
    assert r.temp_c[0, 1] == pytest.approx(35.0, abs=1.0)


def test_ageing_law_and_spread() -> None:
    same = PackSim([PackSpec("nmc", 8, 4.0, spread=0.0, cycles=500, days=365)], seed=7)
    r = same.step(1.0)
    fade = ps.CAL_FADE_1Y[0] + ps.CYC_FADE_1000[0] * 0.5
    assert np.allclose(r.capacity_ah[0], 4.0 * (1 - fade), rtol=1e-6)
    grow = ps.CAL_GROWTH_1Y[0] + ps.CYC_GROWTH_1000[0] * 0.5
    assert np.allclose(r.r0_ohm[0], ps.R0_OHM_AH[0] / 4.0 * (1 + grow), rtol=1e-6)
    spread = PackSim([PackSpec("nmc", 200, 4.0)], seed=7).step(1.0)
    assert 0.002 < np.std(spread.capacity_ah[0]) / 4.0 < 0.01
    assert 0.01 < np.std(spread.r0_ohm[0]) / np.mean(spread.r0_ohm[0]) < 0.03


# -- load profiles --------------------------------------------------------------------------


def test_cccv_charge_tapers_at_the_cv_limit_then_stops() -> None:
    sim = PackSim([PackSpec("nmc", 8, 4.0, initial_soc=0.5)], seed=8,
                  load=LoadProfile.charge(0.5), noise=False)
    rs = sim.run(3 * H, 10.0)
    i = np.array([r.true_current_a[0] for r in rs])
    vmax = np.array([np.max(r.true_cell_v[0]) for r in rs])
    assert i[0] == pytest.approx(-2.0)
    assert np.max(vmax) < ps.CV_DEFAULT_V[0] + 0.002
    taper = (i > -1.99) & (i < -0.21)
    assert taper.sum() > 10  # a CV phase, not a cliff
    assert i[-1] == 0.0 and np.max(rs[-1].soc[0]) > 0.95


def test_depot_day_keeps_a_healthy_pack_free_of_alarms() -> None:
    sim = PackSim([NMC16], seed=9, load=LoadProfile.depot_day())
    events, rs = feed(sim, engine_for(NMC16, 60_000), 2 * 86_400.0, 60.0)
    assert events == []
    soc = np.array([np.mean(r.soc[0]) for r in rs])
    hour = np.array([r.t_s / H for r in rs])
    assert soc[hour == 30.0] > 0.9  # charged overnight (06:00 on day 2)
    assert soc[hour == 40.0] < soc[hour == 30.0] - 0.5  # two drives later (16:00)


# -- faults against the alarm limits --------------------------------------------------------


def test_insulation_dips_recur_for_three_days_and_deepen_below_l3() -> None:
    """The seed's story: insulation faults again and again for three days. L1 on the first
    humid morning, recurrence escalation the same day, the forecast L2 before any L3, then
    dips below 100 ohm/V (L3) on the third day."""
    fault = Fault("insulation", 0.0, params={"side": 1})
    sim = PackSim([NMC16], seed=10, faults=[fault], load=LoadProfile.depot_day())
    events, rs = feed(sim, engine_for(NMC16, 60_000), 3 * 86_400.0, 60.0)
    t_h = np.array([r.t_s / H for r in rs])
    ohm_per_v = np.array([min(r.riso_pos_ohm[0], r.riso_neg_ohm[0]) for r in rs]) / 67.2
    assert np.all(np.array([r.riso_pos_ohm[0] for r in rs]) == 5e6)  # the other side is fine
    day_min = [ohm_per_v[(t_h > 24 * d) & (t_h <= 24 * (d + 1))].min() for d in range(3)]
    assert 250 < day_min[0] < 500 and day_min[1] < day_min[0] and day_min[2] < 100
    below = ohm_per_v < 500
    dips = np.count_nonzero(below[1:] & ~below[:-1])
    assert dips == 9  # three a day, each recovering above the L1 clear level (1.2 x 500)
    for d in range(3):
        evening = (t_h > 24 * d + 12) & (t_h <= 24 * d + 24)
        assert ohm_per_v[evening].min() > 600
    aimed = ps.insulation_ohm_per_v(fault, t_h * H)  # the documented curve, capped at 5 MOhm
    assert np.allclose(ohm_per_v, np.minimum(aimed * 67.2, 5e6) / 67.2)

    ins = [e for e in events if e.rule == "insulation"]
    l1 = first(ins, scope="", event="raised", level=1)
    escalated = first(ins, scope="", event="escalated", level=2)
    forecast = first(ins, scope="forecast", event="raised", level=2)
    l3 = first(ins, scope="", level=3)
    assert l1 and escalated and forecast and l3
    assert l1.ts_ms < 12 * H * 1000 and escalated.ts_ms < 24 * H * 1000
    assert forecast.ts_ms < l3.ts_ms - 12 * H * 1000  # a good half day of warning
    # the board's own L3 (integer kOhm against 100 ohm/V x 67 V): reached on the third day
    assert any(min(r.board_arrays()["riso_neg_kohm"][0], 65_533) < 100 * 67 // 1000
               for r in rs if r.t_s > 48 * H)


def test_thermal_runaway_onset_raises_l3_then_l4_before_it_vents() -> None:
    fault = Fault("thermal_runaway", 600.0, cell=5)
    sim = PackSim([NMC16], seed=11, faults=[fault], load=LoadProfile.drive(0.5))
    events, rs = feed(sim, engine_for(NMC16, 1000), 1300.0, 1.0)
    probe = 1  # probe_cell (2, 6, 10, 14): cell 5 heats the zone of the probe on cell 6
    temp = np.array([r.temp_c[0, probe] for r in rs])
    vented = np.array([bool(r.vented[0]) for r in rs])
    vent_at = int(np.argmax(vented))
    assert vented[-1] and not vented[0]
    rate = np.diff(temp[: vent_at + 1])  # K per 1 s step
    qualifying = (rate >= 1.0) & (temp[1: vent_at + 1] >= 60.0)
    run = longest = 0
    for q in qualifying:
        run = run + 1 if q else 0
        longest = max(longest, run)
    assert longest >= 3  # GB 38031: dT/dt >= 1 K/s for >= 3 s, with T >= 60 degC
    # then the voltage: the vented cell collapses within seconds (and the BMS cuts the load)
    v_before = rs[vent_at - 1].true_pack_v[0]
    assert min(r.true_pack_v[0] for r in rs[vent_at: vent_at + 15]) < v_before - 1.5
    assert rs[vent_at + 15].true_cell_v[0, 5] < 0.1 and rs[vent_at + 15].true_current_a[0] == 0
    rise = first(events, rule="temp_rise_rate", level=3)
    l3 = first(events, rule="temp_high", level=3)
    l4 = first(events, rule="thermal_event", level=4)
    assert rise and l3 and l4
    assert rise.ts_ms < l3.ts_ms < l4.ts_ms < rs[vent_at].t_s * 1000


def test_ntc_open_or_short_reads_nothing_never_hot() -> None:
    faults = [Fault("ntc_open", 100.0, 400.0, probe=1), Fault("ntc_short", 200.0, probe=3),
              Fault("thermal_runaway", 0.0, cell=5, params={"rate0_k_per_s": 0.05})]
    sim = PackSim([NMC16], seed=12, faults=faults, load=LoadProfile.drive(0.5))
    events, rs = feed(sim, engine_for(NMC16, 1000), 600.0, 1.0)
    for r in rs:
        b = r.to_board_units(0)
        open_now, short_now = 100 <= r.t_s < 400, r.t_s >= 200
        assert np.isnan(r.temp_c[0, 1]) == open_now == bool(r.ntc_open[0, 1])
        assert np.isnan(r.temp_c[0, 3]) == short_now == bool(r.ntc_short[0, 3])
        abnormal = ps.MARKERS["temps_dc"][2]
        assert (b["temps_dc"][1] == abnormal) == open_now
        assert (b["temps_dc"][3] == abnormal) == short_now
        assert b["temps_dc"][0] < 1000  # the other probes read real temperatures
    # probe 1 sits on the heating zone: after it recovers it reads hot, while open never
    assert rs[-1].temp_c[0, 1] > 60.0
    assert first(events, rule="sensor_fault", event="raised") is not None


def test_stuck_adc_channels_hold_their_value() -> None:
    faults = [Fault("adc_stuck", 60.0, cell=3), Fault("adc_stuck", 60.0, probe=2,
                                                      params={"channel": 1}),
              Fault("adc_stuck", 60.0, 120.0, params={"channel": 2}),
              Fault("adc_stuck", 60.0, params={"channel": 3, "value": 1.5})]
    sim = PackSim([NMC16], seed=13, load=LoadProfile.drive(1.0), faults=faults)
    rs = sim.run(300.0, 1.0)
    stuck = rs[59:]
    assert len({r.cell_v[0, 3] for r in stuck}) == 1 and stuck[0].cell_stuck[0, 3]
    assert stuck[0].true_cell_v[0, 3] - stuck[-1].true_cell_v[0, 3] > 0.005  # it moved
    assert len({r.temp_c[0, 2] for r in stuck}) == 1 and stuck[0].probe_stuck[0, 2]
    assert len({r.pack_v[0] for r in rs[59:119]}) == 1 and len({r.pack_v[0] for r in rs[
        120:]}) > 100
    assert all(r.current_a[0] == 1.5 and r.current_stuck[0] for r in stuck)
    assert not rs[0].cell_stuck.any() and len({r.cell_v[0, 4] for r in stuck}) > 100


def test_current_sensor_offset() -> None:
    sim = PackSim([NMC16], seed=14, faults=[Fault("current_offset", 10.0, params={
        "offset_a": 0.5, "gain": 1.02})], load=LoadProfile.drive(0.5))
    rs = sim.run(100.0, 1.0)
    err = np.array([r.current_a[0] - 1.02 * r.true_current_a[0] for r in rs[10:]])
    assert np.mean(err) == pytest.approx(0.5, abs=0.005) and np.std(err) < 0.01
    assert abs(rs[5].current_a[0] - rs[5].true_current_a[0]) < 0.03
    assert rs[-1].current_offset_a[0] == 0.5


def test_internal_short_drains_and_heats_its_cell() -> None:
    spec = PackSpec("nmc", 16, 4.0, spread=0.0)
    sim = PackSim([spec, spec], seed=15, faults=[Fault("internal_short", 0.0, pack=1, cell=9,
                                                       params={"r_ohm": 20.0})])
    r = sim.run(4 * H, 30.0)[-1]
    drain = r.soc[0, 9] - r.soc[1, 9]  # against the same cell of the healthy twin
    expected = 4 * H * 3.7 / 20.0 / (4.0 * 3600)  # ~V/R for 4 h, as SOC
    assert drain == pytest.approx(expected, rel=0.1)
    spread_mv = 1000 * (np.max(r.cell_v[1]) - np.min(r.cell_v[1]))
    assert spread_mv > 50  # cell-spread L1
    assert r.true_temp_c[1, 2] - r.true_temp_c[0, 2] > 1.0  # probe on cell 10: its zone


def test_cooling_failure_crosses_l1_where_the_healthy_twin_stays_cool() -> None:
    # docs/hil.md's recipe: a fan-cooled pack (tau 900 s) at 35 degC, a 1C drive, factor 8
    spec = PackSpec("nmc", 16, 4.0, initial_soc=0.95, ambient_c=35.0, tau_amb_s=900.0)
    peak, first_high = [], []
    for factor in (1.0, 8.0):
        sim = PackSim([spec], seed=16, load=LoadProfile.drive(1.0),
                      faults=[Fault("cooling_failure", 0.0, params={"factor": factor})])
        events, rs = feed(sim, engine_for(spec, 10_000), 1.0 * H, 10.0)
        peak.append(max(float(np.nanmax(r.temp_c)) for r in rs))
        first_high.append(first(events, rule="temp_high"))
    assert peak[0] < 45.0 and first_high[0] is None
    assert 50.0 < peak[1] < 55.0
    assert first_high[1] is not None and first_high[1].level == 1


def test_cooling_failure_ramp() -> None:
    f = Fault("cooling_failure", 0.0, params={"factor": 1.0, "factor_end": 16.0,
                                              "ramp_s": 4 * H})
    sim = PackSim([NMC16], seed=17, faults=[f])
    sim.run(2 * H, 600.0)
    sim.step(1.0)  # faults that drive the physics act from the start of a step
    assert sim._pf[ps.PF_COOL, 0] == pytest.approx(4.0)  # geometric: halfway is x4


def test_cell_imbalance_steps_once_and_leaks() -> None:
    spec = PackSpec("lfp", 8, 10.0, spread=0.0)
    sim = PackSim([spec], seed=18, noise=False, faults=[
        Fault("cell_imbalance", 10.0, cell=2, params={"dsoc": -0.2}),
        Fault("cell_imbalance", 10.0, 10.0 + H, cell=5, params={"dsoc": 0.0, "leak_a": 1.0})])
    rs = sim.run(2 * H, 10.0)
    soc = rs[-1].soc[0]
    assert soc[2] == pytest.approx(soc[0] - 0.2, abs=1e-6)
    assert soc[5] == pytest.approx(soc[0] - 0.1, abs=1e-3)  # 1 A for 1 h of 10 Ah


def test_faults_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Fault("gremlin", 0.0)
    with pytest.raises(ValueError, match="unknown parameters"):
        Fault("insulation", 0.0, params={"dept": 1.0})
    with pytest.raises(ValueError, match="no cell"):
        PackSim([NMC16], seed=0, faults=[Fault("internal_short", 0.0, cell=16)])
    with pytest.raises(ValueError, match="no probe"):
        PackSim([NMC16], seed=0, faults=[Fault("ntc_open", 0.0, probe=4)])


# -- determinism ----------------------------------------------------------------------------

FAULTS = [Fault("insulation", 0.0, pack=1), Fault("internal_short", 30.0, pack=2, cell=1),
          Fault("thermal_runaway", 0.0, pack=3, cell=2, params={"rate0_k_per_s": 0.05}),
          Fault("ntc_open", 50.0, pack=5, probe=1), Fault("adc_stuck", 20.0, pack=4, cell=7),
          Fault("current_offset", 0.0, pack=2)]


def fleet(seed: int) -> PackSim:
    specs = [PackSpec("nmc" if i % 2 else "lfp", 8 + 4 * (i % 3), 2.0 + i, n_probes=1 + i % 4,
                      cycles=100.0 * i) for i in range(6)]
    loads = [LoadProfile.depot_day(offset_s=7 * H + 600 * i) for i in range(6)]
    return PackSim(specs, seed=seed, faults=FAULTS, load=loads)


def snapshot(r: ps.Readings) -> bytes:
    return b"".join(np.ascontiguousarray(getattr(r, f)).tobytes()
                    for f in r.__dataclass_fields__ if f not in ("_board", "t_s"))


def test_same_seed_gives_bit_identical_readings() -> None:
    a, b, c = fleet(42), fleet(42), fleet(43)
    ra = [snapshot(a.step(1.0)) for _ in range(300)]
    rb = [snapshot(b.step(1.0)) for _ in range(300)]
    rc = [snapshot(c.step(1.0)) for _ in range(300)]
    assert ra == rb and ra != rc


def test_a_pack_does_not_depend_on_its_companions() -> None:
    # pack 3 of the fleet, simulated alone under its stream id, is the same pack
    together = fleet(5)
    spec = together.specs[3]
    alone = PackSim([spec], seed=5, load=LoadProfile.depot_day(offset_s=7 * H + 1800),
                    faults=[Fault("thermal_runaway", 0.0, cell=2,
                                  params={"rate0_k_per_s": 0.05})], stream_ids=[3])
    for a, b in zip(together.run(600, 1.0), alone.run(600, 1.0), strict=True):
        assert np.array_equal(a.cell_v[3, :spec.cells_series], b.cell_v[0], equal_nan=True)
        assert np.array_equal(a.temp_c[3, :spec.n_probes], b.temp_c[0], equal_nan=True)
        assert a.pack_v[3] == b.pack_v[0] and a.vented[3] == b.vented[0]
    assert alone.step(1.0).vented[0]
    cells = PackSim([NMC16] * 3, seed=9).step(1.0).capacity_ah
    assert not np.array_equal(cells[1], cells[0])  # each pack its own draw


def test_threads_give_the_same_readings() -> None:
    a, b = fleet(3), fleet(3)
    b.parallel = True
    for _ in range(50):
        assert snapshot(a.step(1.0)) == snapshot(b.step(1.0))


# -- wire units -----------------------------------------------------------------------------


def test_board_units_are_a_sample_payload_with_markers() -> None:
    specs = [NMC16, PackSpec("lfp", 8, 100.0, n_probes=2, probe_cell=(0, ps.NOT_ON_CELL),
                             riso_pos_ohm=100e6)]
    sim = PackSim(specs, seed=19, faults=[Fault("ntc_open", 0.0, pack=1, probe=0)],
                  load=LoadProfile.constant(-0.5))
    r = sim.step(1.0)
    r.cell_v[1, 4] = np.nan  # a cell the AFE did not answer for
    r.riso_neg_ohm[0] = np.nan  # not measured yet
    a, b = r.to_board_units(0), r.to_board_units(1)
    assert len(a["cells_mv"]) == 16 and len(a["temps_dc"]) == 4 and a["n_cells"] == 16
    assert len(b["cells_mv"]) == 8 and len(b["temps_dc"]) == 2 and b["n_probes"] == 2
    assert b["temps_dc"][0] == 0x7FFE  # open NTC: ABNORMAL, as firmware/ntc.py reports it
    assert b["cells_mv"][4] == 0xFFFF and a["riso_neg_kohm"] == 0xFFFF
    assert b["riso_pos_kohm"] == 65_533  # 100 MOhm saturates at the field's top reading
    assert a["riso_pos_kohm"] == 5000 and b["current_ma"] == pytest.approx(-50_000, abs=50)
    assert abs(a["pack_mv"] - 1000 * r.pack_v[0]) <= 0.5
    assert a["temps_dc"] == [round(10 * t) for t in r.temp_c[0]]
    for m in (a, b):
        frame = {"version": 1, "msg_type": "sample", "flags": 0, "board_id": 1, "boot": 1,
                 "seq": 1, "ts_ms": 1000, "payload": m}
        assert codec.decode_frame(codec.encode_frame(frame))["payload"] == m


def test_bridge_voltages_give_back_rp_and_rn_by_the_design_formula() -> None:
    rp, rn, r0, rd, v = 40e3, 900e3, 200e3, 10e6, 60.0
    vp1, vn1, _ = ps.bridge_v(v, rp, rn, r0, rd, 1)
    vp2, vn2, tau = ps.bridge_v(v, rp, rn, r0, rd, 2)
    vb = v
    rp_seen = r0 * (vp2 * vn1 - vp1 * vn2) / (vn2 * vb)
    rn_seen = r0 * (vp2 * vn1 - vp1 * vn2) / (vp1 * vb)
    assert rp_seen * rd / (rd - rp_seen) == pytest.approx(rp)
    assert rn_seen * rd / (rd - rn_seen) == pytest.approx(rn)
    assert 0 < tau < 0.1  # 200 nF through ~40 kOhm: a settle of 500 ms is plenty


# -- link faults ----------------------------------------------------------------------------


def test_link_faults_are_deterministic_and_at_the_asked_rates() -> None:
    lf = LinkFaults(seed=1, drop=0.05, corrupt=0.02, duplicate=0.03, delay=0.1,
                    max_delay_s=3.0)
    acts = [lf.decide(k) for k in range(20_000)]
    assert acts == [LinkFaults(seed=1, drop=0.05, corrupt=0.02, duplicate=0.03, delay=0.1,
                               max_delay_s=3.0).decide(k) for k in reversed(range(20_000))][::-1]
    assert np.mean([a.drop for a in acts]) == pytest.approx(0.05, abs=0.006)
    kept = [a for a in acts if not a.drop]
    assert np.mean([a.corrupt_bit is not None for a in kept]) == pytest.approx(0.02, abs=0.004)
    assert np.mean([a.duplicate for a in kept]) == pytest.approx(0.03, abs=0.005)
    delays = [a.delay_s for a in kept if a.delay_s > 0]
    assert len(delays) / len(kept) == pytest.approx(0.1, abs=0.01) and max(delays) <= 3.0
    assert [lf.decide(k, stream=2) for k in range(100)] != acts[:100]
    frame = bytes(range(40))
    for k, a in enumerate(acts[:500]):
        out = lf.apply(frame, k)
        assert len(out) == (0 if a.drop else 2 if a.duplicate else 1)
        for delay, data in out:
            flipped = sum(bin(x ^ y).count("1") for x, y in zip(data, frame, strict=True))
            assert flipped == (1 if a.corrupt_bit is not None else 0) and delay == a.delay_s


# -- vectorised smoke -----------------------------------------------------------------------


def test_many_packs_smoke() -> None:
    n = 400
    specs = [PackSpec("nmc" if i % 3 else "lfp", 12 + i % 5, 3.0 + i % 7, n_probes=i % 5,
                      cycles=i, ambient_c=15 + i % 20) for i in range(n)]
    loads = [LoadProfile.depot_day(offset_s=90.0 * i) for i in range(n)]
    faults = [Fault("insulation", 0.0, pack=i) for i in range(0, n, 7)]
    sim = PackSim(specs, seed=20, faults=faults, load=loads)
    for _ in range(120):
        r = sim.step(1.0)
    assert r.cell_v.shape == (n, 16) and r.temp_c.shape == (n, 4)
    cells = np.arange(16)[None, :] < r.n_cells[:, None]
    assert np.all(np.isfinite(r.cell_v[cells])) and np.all(np.isnan(r.cell_v[~cells]))
    assert np.all(np.isfinite(r.pack_v)) and np.all(r.riso_neg_ohm > 0)
    assert all(len(r.to_board_units(i)["temps_dc"]) == specs[i].n_probes for i in range(n))
