"""The board's program: sample, check local safety, report, obey commands, feed the watchdog.

One asyncio task each for sampling (every second, whatever the reporting period: the local
safety rules and the pre-event ring need 1 Hz), insulation (every riso_period_ms: it needs
settling time), commands, status and the watchdog. The watchdog is fed only while the sampling
loop keeps running, so a hung board resets instead of going quiet.
"""

import asyncio
import os
import time

import config as config_mod
import persist
import wire
from clock import Clock, ntp_unix_ms
from cobs import cobs_decode_into, cobs_encode_into, max_encoded_size
from commands import DISABLED, INVALID, OK, parse_command
from frames import FrameWriter
from ring import PreEventRing
from safety import LocalSafety
from sampler import InjectedSampler, Sampler

FW_VERSION = (0, 1, 0)
TICK_MS = 1_000  # sampling and local safety rate
STATUS_EVERY_MS = 60_000
_CHEMISTRY = {"nmc": wire.CHEMISTRY_NMC, "lfp": wire.CHEMISTRY_LFP}
_SENSOR = {"shunt": wire.CURRENT_SENSOR_SHUNT, "ina226": wire.CURRENT_SENSOR_INA226}


class SerialLink:
    """Frames out as COBS on a UART (or the USB port), host commands in the same way."""

    kind = wire.LINK_SERIAL

    def __init__(self, uart, frame_max: int) -> None:
        self.uart = uart
        self.tx = bytearray(max_encoded_size(frame_max))
        self.rx = bytearray(2 * frame_max)  # encoded bytes up to the next delimiter
        self.rx_len = 0
        self.frame = bytearray(2 * frame_max)
        self.chunk = bytearray(64)
        self.overruns = 0

    connected = True  # a UART has no connection to lose

    def send(self, buf, n: int) -> bool:
        m = cobs_encode_into(buf, n, self.tx)
        self.uart.write(self.tx, 0, m)
        return True

    def poll(self, handle) -> None:
        """Read what arrived; call handle(memoryview of a decoded frame) per complete frame."""
        while self.uart.any():
            got = self.uart.readinto(self.chunk)
            for i in range(got or 0):
                b = self.chunk[i]
                if b:
                    if self.rx_len < len(self.rx):
                        self.rx[self.rx_len] = b
                        self.rx_len += 1
                    else:
                        self.overruns += 1  # longer than any command: drop to the delimiter
                    continue
                if self.rx_len:
                    n = cobs_decode_into(self.rx, self.rx_len, self.frame)
                    if n > 0:
                        handle(memoryview(self.frame)[:n])
                self.rx_len = 0


class Board:
    def __init__(self, cfg, machine, link, root: str = "/", store=None, i2c=None,
                 persist_frames: bool = True) -> None:
        self.cfg = cfg
        self.machine = machine
        self.link = link
        self.root = root
        self.boot = persist.next_boot(root + "boot.dat")
        self.signer = None
        if cfg["key_hex"]:
            from signer import Signer

            self.signer = Signer(cfg.key)
        # 1 Hz, or faster if reporting is: local safety and the pre-event ring need >= 1 Hz
        self.tick_ms = min(TICK_MS, cfg["sample_period_ms"])
        # readings from a HIL rig's `inject` commands instead of the sensors (a bench board)
        self.injected = cfg["sensor_source"] == "injected"
        if self.injected:
            print("sensor_source injected: readings come from the host's inject commands")
            # a reading holds for two ticks: one late inject is not a gap
            self.sampler = InjectedSampler(cfg, 2 * self.tick_ms)
        else:
            if i2c is None and (cfg["n_cells"] or cfg["current_sensor"] == "ina226"):
                i2c = machine.I2C(0, scl=machine.Pin(cfg["pins.i2c_scl"]),
                                  sda=machine.Pin(cfg["pins.i2c_sda"]))
            self.sampler = Sampler(machine, cfg, i2c)
        s = self.sampler
        self.writer = FrameWriter(cfg["board_id"], self.boot, s.n_probes, s.n_cells, 1,
                                  self.signer)
        if store is None and persist_frames:
            from store import Store

            frame_max = len(self.writer.buf)
            max_bytes = cfg["store.max_bytes"]
            store = Store(root + "store", max_bytes=max_bytes, frame_max=frame_max,
                          segment_bytes=max(frame_max + 8, min(4096, max_bytes // 4)),
                          signer=self.signer)
        self.store = store
        self.clock = Clock()
        self.safety = LocalSafety(cfg["chemistry"], cfg["max_pack_mv"], cfg["max_temp_dc"],
                                  cfg["thresholds"])
        # the 30 s before an event, capped at 60 samples (heap) when ticking faster than 2 Hz
        self.ring = PreEventRing(s.n_probes, s.n_cells, min(60, 30_000 // self.tick_ms))
        self.alarm_pin = machine.Pin(cfg["pins.alarm_out"], machine.Pin.OUT, value=0)
        # injected readings carry the insulation too: no bridge to switch
        self.insulation = None if self.injected else self._insulation(machine, cfg)
        self.seq = 0
        self.acked_seq = 0
        self.rx_errors = 0
        self.started_ms = time.ticks_ms()
        self.last_tick_ms = self.started_ms
        self.last_report_ms = self.started_ms - cfg["sample_period_ms"]
        self.running = True
        self.reboot_at = None
        self.resend_due = False
        self.birth_due = False
        self.pre_event_first = 0

    @staticmethod
    def _insulation(machine, cfg):
        from analog import ScaledChannel
        from insulation import InsulationMonitor
        from sampler import channel

        factor = max(1, cfg["riso_divider_ratio_c"] // 100)  # uV at the ADC -> 0.1 V of HV
        out = machine.Pin.OUT
        return InsulationMonitor(
            machine.Pin(cfg["pins.riso_switch_pos"], out, value=0),
            machine.Pin(cfg["pins.riso_switch_neg"], out, value=0),
            ScaledChannel(channel(machine, cfg, "riso_vp", cfg["pins.riso_vp"]), factor),
            ScaledChannel(channel(machine, cfg, "riso_vn", cfg["pins.riso_vn"]), factor),
            cfg["riso_r0_kohm"], cfg["riso_rd_kohm"], cfg["riso_settle_ms"])

    # -- frames ----------------------------------------------------------------------------

    def _flags(self) -> int:
        return wire.FLAG_TIME_SYNCED if self.clock.synced else 0

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = seq + 1
        return seq

    def send(self, n: int) -> bool:
        """Send the frame in writer.buf. Samples, batches and alarms are stored first, so one
        the link cannot take now (down, or busy) goes out later with the stored re-send."""
        store = self.store
        stored = False
        if store is not None and self.writer.buf[wire.HEADER_OFF_MSG_TYPE] in (
                wire.MSG_SAMPLE, wire.MSG_BATCH, wire.MSG_ALARM):
            store.append(self.writer.buf, n)  # kept until the host acknowledges it
            stored = True
        if self.link.send(self.writer.buf, n):
            return True
        if stored:
            self.resend_due = True
        return False

    def send_birth(self) -> bool:
        c = self.cfg
        self.clock.now_into(self.writer.ts)
        probe_cell = c["probe_cell"] or [0xFFFF] * self.sampler.n_probes
        return self.send(self.writer.birth(
            self._next_seq(), self._flags(), FW_VERSION, _CHEMISTRY[c["chemistry"]],
            c["cells_series"], c["rated_mah"], c["max_pack_mv"], c["max_temp_dc"],
            c["sample_period_ms"], c["riso_period_ms"], _SENSOR[c["current_sensor"]],
            c.error, probe_cell))

    def send_status(self) -> None:
        import gc

        self.clock.now_into(self.writer.ts)
        store = self.store
        self.send(self.writer.status(
            self._next_seq(), self._flags(),
            time.ticks_diff(time.ticks_ms(), self.started_ms) // 1000, gc.mem_free(),
            store.pending_count if store else 0, store.dropped if store else 0,
            self.acked_seq, self.link.kind, 0, self.cfg.error, self.rx_errors))

    # -- one tick ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Sample, evaluate, and report if due. Allocates nothing while no alarm changes."""
        s = self.sampler
        w = self.writer
        s.read(now_ms)
        self.clock.now_into(w.ts)
        safety = self.safety
        level = safety.evaluate(now_ms, s.pack_mv, s.temps_dc, s.n_probes, s.cells_mv,
                                s.n_cells, s.riso_pos_kohm, s.riso_neg_kohm)
        self.alarm_pin.value(1 if level >= 3 else 0)
        if safety.q_len:
            self._report_events()  # before this sample joins the ring: it is reported live
        self.ring.push(w.ts, self._flags(), s.pack_mv, s.current_ma, s.riso_pos_kohm,
                       s.riso_neg_kohm, level, safety.flags, s.temps_dc, s.cells_mv)
        # L3 and above: report every tick (GB/T 32960.3: 1 s while an alarm is active)
        if level >= 3 or time.ticks_diff(now_ms, self.last_report_ms) >= \
                self.cfg["sample_period_ms"]:
            self.last_report_ms = now_ms
            self.send(w.sample(self._next_seq(), self._flags(), s.pack_mv, s.current_ma,
                               s.riso_pos_kohm, s.riso_neg_kohm, level, safety.flags,
                               s.temps_dc, s.cells_mv))
        self.last_tick_ms = now_ms

    def _report_events(self) -> None:
        q = self.safety
        w = self.writer
        pre_event = False
        for i in range(q.q_len):
            raised = q.q_event[i] == wire.EVENT_RAISED
            pre = self.ring.count if raised and not pre_event else 0
            self.send(w.alarm(self._next_seq(), self._flags(), q.q_rule[i], q.q_level[i],
                              q.q_event[i], q.q_subject[i], q.q_index[i], q.q_value[i],
                              q.q_threshold[i], pre))
            pre_event = pre_event or pre > 0
        q.q_len = 0
        if pre_event and not self.ring.frozen:  # the 30 s that led up to it, sent by
            self.ring.frozen = True  # catch_up_loop as the link takes them; seqs reserved now
            self.pre_event_first = self.seq
            self.seq += self.ring.count

    # -- commands ----------------------------------------------------------------------------

    def handle_command(self, frame) -> None:
        cmd = parse_command(frame, self.cfg["board_id"], self.signer)
        if cmd.board_id != self.cfg["board_id"]:
            return  # for another board on a shared bus
        if cmd.result == OK:
            cmd.result = self._apply(cmd)
        else:
            self.rx_errors += 1
        self.clock.now_into(self.writer.ts)
        self.send(self.writer.cmd_ack(self._next_seq(), self._flags(), cmd.msg_type, cmd.seq,
                                      cmd.result))

    def _apply(self, cmd) -> int:
        t = cmd.msg_type
        if t == wire.MSG_TIME_SYNC:
            resend = not self.clock.synced
            self.clock.sync(cmd.unix_ms)
            if resend and self.store is not None:
                self.resend_due = True  # a host is (back) on the line: catch_up_loop sends
        elif t == wire.MSG_ACK:
            if cmd.acked_boot == self.boot and cmd.acked_seq > self.acked_seq:
                self.acked_seq = cmd.acked_seq
            if self.store is not None:
                self.store.ack(cmd.acked_boot, cmd.acked_seq)
        elif t == wire.MSG_CONFIG_UPDATE:
            new = config_mod.parse(cmd.config_json)
            if new.error or new["board_id"] != self.cfg["board_id"]:
                return INVALID  # never take a config that the board would have to repair
            path = self.root + "config.json"
            with open(path + ".tmp", "wb") as f:
                f.write(cmd.config_json)
            os.rename(path + ".tmp", path)  # atomic: old or new config, never half
            self.reboot_at = time.ticks_add(time.ticks_ms(), 500)
        elif t == wire.MSG_REBIRTH:
            # a host that asks who we are has lost its state (restarted, or saw a seq gap):
            # say it, then re-send what it has not acknowledged
            self.birth_due = True
            self.resend_due = self.store is not None
        elif t == wire.MSG_REBOOT:
            self.reboot_at = time.ticks_add(time.ticks_ms(), cmd.delay_ms)
        elif t == wire.MSG_INJECT:
            sampler = self.sampler
            if not isinstance(sampler, InjectedSampler):
                return DISABLED  # sensor_source "hardware": never readings from the link
            if not sampler.inject(cmd, time.ticks_ms()):
                return INVALID  # not this board's probe and cell counts
        return OK

    async def _send_pre_event(self) -> None:
        """The frozen ring's samples, each stored once and sent when the link takes it (an
        MQTT link has a few publish slots; a burst would overflow them). Re-encoded after
        every wait, because sampling reuses the writer's buffer meanwhile."""
        ring = self.ring
        w = self.writer
        for j in range(ring.count):
            n = ring.encode(j, w, self.pre_event_first + j)
            if self.store is not None:
                self.store.append(w.buf, n)
            while not self.link.send(w.buf, n):
                if not self.link.connected:  # stored: re-sent after the next connect
                    self.resend_due = self.store is not None
                    break
                await asyncio.sleep_ms(20)  # a publish slot frees on its PUBACK
                n = ring.encode(j, w, self.pre_event_first + j)
            await asyncio.sleep_ms(2)
        ring.clear()

    async def catch_up_loop(self) -> None:
        """A birth that is due (after a reconnect), then what the host has not acknowledged,
        oldest first. Paced, and waiting for the link to take each frame: a full store is
        thousands of frames, an MQTT link has a few publish slots, and sampling (and so the
        watchdog) must keep running meanwhile."""
        store = self.store
        link = self.link
        while self.running:
            if self.birth_due and link.connected and self.send_birth():
                self.birth_due = False
            if self.ring.frozen:
                await self._send_pre_event()
            if self.resend_due and not self.birth_due and store is not None and link.connected:
                self.resend_due = False  # frames dropped during this walk ask for another
                lost_link = False
                for n in store.resend():
                    while not link.send(store.frame_buf, n):
                        if not link.connected:
                            lost_link = True
                            break
                        await asyncio.sleep_ms(20)  # a publish slot frees on its PUBACK
                    if lost_link:
                        self.resend_due = True  # start over after the next connect
                        break
                    await asyncio.sleep_ms(2)
                else:
                    await asyncio.sleep_ms(5_000)  # a walk done: don't re-walk back to back
            await asyncio.sleep_ms(50)

    # -- tasks -------------------------------------------------------------------------------

    async def sample_loop(self) -> None:
        while self.running:
            now = time.ticks_ms()
            self.tick(now)
            late = time.ticks_diff(time.ticks_ms(), now)
            await asyncio.sleep_ms(max(1, self.tick_ms - late))

    async def insulation_loop(self) -> None:
        if self.insulation is None:
            return
        while self.running:
            rp, rn = await self.insulation.measure(asyncio.sleep_ms)
            self.sampler.riso_pos_kohm = rp
            self.sampler.riso_neg_kohm = rn
            await asyncio.sleep_ms(self.cfg["riso_period_ms"])

    async def command_loop(self) -> None:
        while self.running:
            self.link.poll(self.handle_command)
            if self.reboot_at is not None and \
                    time.ticks_diff(time.ticks_ms(), self.reboot_at) >= 0:
                self.machine.reset()
            await asyncio.sleep_ms(20)

    async def status_loop(self) -> None:
        while self.running:
            await asyncio.sleep_ms(STATUS_EVERY_MS)
            self.send_status()

    async def watchdog_loop(self, timeout_ms: int = 8_000) -> None:
        wdt = self.machine.WDT(timeout=timeout_ms)
        while self.running:
            # fed only while sampling keeps up: a stuck loop lets the watchdog reset the board
            if time.ticks_diff(time.ticks_ms(), self.last_tick_ms) < 3 * self.tick_ms:
                wdt.feed()
            await asyncio.sleep_ms(1_000)

    def _link_up(self) -> None:
        """A (re)connected link (MQTT): take NTP time if no host has given any yet, say who we
        are, then re-send what is unacknowledged."""
        if not self.clock.synced:
            unix_ms = ntp_unix_ms()
            if unix_ms is not None:
                self.clock.sync(unix_ms)
        self.birth_due = True  # sent by catch_up_loop, retried until the link takes it
        self.resend_due = self.store is not None

    async def run(self) -> None:
        loops = [self.sample_loop(), self.insulation_loop(), self.command_loop(),
                 self.status_loop(), self.watchdog_loop(), self.catch_up_loop()]
        if hasattr(self.link, "run"):  # a link that keeps its own connection (MQTT)
            self.link.on_connect = self._link_up
            loops.append(self.link.run())
        else:
            self.send_birth()
        tasks = [asyncio.create_task(t) for t in loops]
        while self.running:
            await asyncio.sleep_ms(100)
        for t in tasks:
            t.cancel()
