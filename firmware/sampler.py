"""Reading one sample from the hardware described by the config, into preallocated arrays.

Drivers sit behind this one class, so the HIL rig swaps the hardware (its `machine` stand-in,
or injected readings over the link) without touching the rest of the firmware.
`InjectedSampler` is the other source (config sensor_source = "injected"): the readings of
the host's signed `inject` commands, INVALID when none came recently.
"""

import time
from array import array

import wire
from analog import Channel, ScaledChannel
from ntc import NtcTable


def channel(machine, cfg, name: str, pin: int) -> Channel:
    cal = cfg["calibration"].get(name, {})
    adc = machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)
    return Channel(adc, cal.get("gain_ppm", 1_000_000), cal.get("offset_uv", 0))


class Sampler:
    def __init__(self, machine, cfg, i2c=None) -> None:
        self.n_probes = cfg.n_probes
        self.n_cells = cfg["n_cells"]
        # uV * ratio / 1000 = mV, and ratio_c = ratio x 100: the scale factor is ratio_c
        self.pack = ScaledChannel(channel(machine, cfg, "pack_v", cfg["pins.pack_v"]),
                                  cfg["pack_divider_ratio_c"])
        self.ina = None
        self.current = None
        self.faults = []  # sensors that did not start: they read INVALID, the board runs on
        if cfg["current_sensor"] == "ina226":
            from ina226 import Ina226

            try:
                self.ina = Ina226(i2c, cfg["calibration"].get("shunt_uohm", 100))
            except (OSError, ValueError) as exc:
                self._fault("INA226 current monitor", exc)
        else:
            self.current = ScaledChannel(channel(machine, cfg, "current", cfg["pins.current"]),
                                         cfg["current_ma_per_mv_c"], cfg["current_zero_uv"])
        models = cfg["ntc_model"]
        if not isinstance(models, list):
            models = [models] * self.n_probes
        tables = {}  # one table per distinct probe type
        self.ntc = []
        for model in models:
            key = repr(sorted(model.items()))
            if key not in tables:
                tables[key] = NtcTable(model, cfg["ntc_r_fixed_ohm"], cfg["ntc_vref_uv"])
            self.ntc.append(tables[key])
        self.mux_select = []
        if cfg["ntc_mux_probes"]:  # all probes on one ADC pin behind a multiplexer
            self.mux_select = [machine.Pin(p, machine.Pin.OUT, value=0)
                               for p in cfg["pins.ntc_mux_select"]]
            mux_adc = channel(machine, cfg, "ntc_mux", cfg["pins.ntc_mux_adc"])
            self.probes = [mux_adc] * self.n_probes
        else:
            self.probes = [channel(machine, cfg, "ntc%d" % i, pin)
                           for i, pin in enumerate(cfg["pins.ntc"])]
        self.afe = None
        if self.n_cells:
            from bq769x0 import Bq769x0

            try:  # one BQ769x0 measures up to 15 cells; more need chained AFEs (not yet)
                self.afe = Bq769x0(i2c, self.n_cells)
            except (OSError, ValueError) as exc:
                self._fault("BQ769x0 cell monitor", exc)
        self.pack_mv = 0
        self.current_ma = 0
        self.temps_dc = array("h", bytes(2 * max(1, self.n_probes)))
        self.cells_mv = array("H", bytes(2 * max(1, self.n_cells)))
        self.riso_pos_kohm = wire.U16_INVALID  # until the first insulation measurement
        self.riso_neg_kohm = wire.U16_INVALID

    def _fault(self, what: str, exc: Exception) -> None:
        self.faults.append(what)
        print("sensor:", what, "did not start (%r): its readings are INVALID" % (exc,))

    def read(self, now_ms: int = 0) -> None:
        """Refresh pack voltage, current, temperatures and cells (not insulation)."""
        self.pack_mv = self.pack.read()
        ina = self.ina
        current = self.current
        if ina is not None:
            self.current_ma = ina.current_ma()
        elif current is not None:
            self.current_ma = current.read()
        else:
            self.current_ma = wire.I32_INVALID
        select = self.mux_select
        for i in range(self.n_probes):
            for bit in range(len(select)):  # address probe i on the multiplexer
                select[bit].value((i >> bit) & 1)
            self.temps_dc[i] = self.ntc[i].temp_dc(self.probes[i].read_uv())
        if self.afe is None:
            for i in range(self.n_cells):
                self.cells_mv[i] = wire.U16_INVALID
        else:
            try:
                self.afe.read_cells_mv(self.cells_mv)
            except OSError:  # AFE not answering: report invalid cells, keep sampling
                for i in range(self.n_cells):
                    self.cells_mv[i] = wire.U16_INVALID


class InjectedSampler:
    """The readings a HIL rig sends (`inject` commands), for a board on the bench whose
    sensors are not wired to a pack. Same fields as Sampler, insulation included (no bridge
    is switched). A reading holds for `fresh_ms` after it arrived; then every field reads
    INVALID, as a board whose sensors went silent: a rig that stopped must not leave the
    board reporting its last pack forever. No drivers, and no allocation per read or per
    inject: the arrays are copied byte by byte from the command frame."""

    def __init__(self, cfg, fresh_ms: int) -> None:
        self.n_probes = cfg.n_probes
        self.n_cells = cfg["n_cells"]
        self.faults = []
        self.fresh_ms = fresh_ms
        self.injected_ms = 0
        self.have = False
        self.pack_mv = wire.U32_INVALID
        self.current_ma = wire.I32_INVALID
        self.temps_dc = array("h", bytes(2 * max(1, self.n_probes)))
        self.cells_mv = array("H", bytes(2 * max(1, self.n_cells)))
        self.riso_pos_kohm = wire.U16_INVALID
        self.riso_neg_kohm = wire.U16_INVALID
        self._invalidate()

    def inject(self, cmd, now_ms: int) -> bool:
        """Take a parsed `inject` command's reading; False if it is not for this board's
        probes and cells (nothing is changed then)."""
        if cmd.n_probes != self.n_probes or cmd.n_cells != self.n_cells:
            return False
        self.pack_mv = cmd.pack_mv
        self.current_ma = cmd.current_ma
        self.riso_pos_kohm = cmd.riso_pos_kohm
        self.riso_neg_kohm = cmd.riso_neg_kohm
        f = cmd.frame
        o = cmd.arrays_off
        temps = self.temps_dc
        for i in range(self.n_probes):
            v = f[o] | (f[o + 1] << 8)
            temps[i] = v - 0x10000 if v & 0x8000 else v
            o += 2
        cells = self.cells_mv
        for i in range(self.n_cells):
            cells[i] = f[o] | (f[o + 1] << 8)
            o += 2
        self.injected_ms = now_ms
        self.have = True
        return True

    def read(self, now_ms: int = 0) -> None:
        """The last injected reading while it is fresh, INVALID after."""
        if self.have and time.ticks_diff(now_ms, self.injected_ms) >= self.fresh_ms:
            self.have = False
            self._invalidate()

    def _invalidate(self) -> None:
        self.pack_mv = wire.U32_INVALID
        self.current_ma = wire.I32_INVALID
        self.riso_pos_kohm = wire.U16_INVALID
        self.riso_neg_kohm = wire.U16_INVALID
        for i in range(self.n_probes):
            self.temps_dc[i] = wire.I16_INVALID
        for i in range(self.n_cells):
            self.cells_mv[i] = wire.U16_INVALID
