"""The virtual board's boot, inside the MicroPython VM: the rig's side of it, then the unchanged
firmware's main.py, started as the board starts it.

    from launch import main
    await main()

What it does, in order:
1. Reads /rig.json (written by hil/virtual_board.py): the control and feed ports, the serial
   line's port (or none: an MQTT board), the broker's port, the shortest sleep.
2. Connects the control channel and the feed channel (TCP connections through the VM's
   socket stand-in, one line per message; feeds are read only as the board needs them, the
   rest waits in Node's buffer, outside the board's heap) and waits for the sensor layout,
   the static devices and the first readings.
3. Makes what the port lacks: `asyncio.run` (main.py's last line) starts the board as a task,
   since this port's event loop is JS's. At speed N, sleeps shorter than the shortest sleep
   take that long (see docs/hil.md, "Virtual board": a sleep of less than about a real
   millisecond would otherwise be a busy wake-up every few microseconds of real time).
4. Imports main.py: config.json, the link (UART on a socket to the rig, or MQTT to the
   broker), the Board, asyncio.run(board.run()). Nothing of the firmware is changed. The
   modules main.py pulls in are imported first, one at a time with a sleep in between: this
   VM collects garbage only when control returns to JS (hil/mpvm.mjs), where a board collects
   whenever an allocation fails, so a burst of imports would fail here and not there.
5. Applies each second's readings on time (by the board's clock), reports the board's clock,
   watchdog and heap to the rig, obeys WiFi and speed changes, and stops on request.

Feed lines, rig -> board:
    L <json>          layout: what each reading value drives, [kind, a, b] per value:
                      [0, pin] ADC uV, [1, pin, channel] switched/multiplexed ADC uV,
                      [2, address, register] an I2C register byte
    I <json>          static inputs: {"i2c": {addr: {reg: byte}}, "mux": {pin: [select pins,
                      channels]}, "pins": {pin: level}}
    R <k> <hex>       the readings of feed k (applied at k * feed_ms after the board started):
                      the layout's values as little-endian int32, in hex (one C call to
                      decode: parsing them in Python would cost the board's heap and time)
Control lines, rig -> board:
    W 0|1             WiFi down / up (network stand-in)
    S <speed> <cpu> <min_sleep_ms>   change the time compression
    Q                 stop the board and end
board -> rig:
    B <boot> <free> <epoch_ms>   the board started (boot counter, gc.mem_free(), its clock)
    T <k> <ms> <wdt_late> <wdt_max_gap_ms> <free> <starved> <snapped_ms> <pending> <seq>
      <acked> <synced> <stored>
                      feed k applied at ms (board ticks since start); pending: frames in
                      the board's store not yet acknowledged by the host; seq: the next seq;
                      acked: the host's cumulative ack point (this boot); synced: 1 once a
                      host (or NTP) has set the board's clock; stored: frames the board has
                      put in its store so far
    E <seq> <pending> <link_dropped> <wdt_late> <min_free> <starved> <store_dropped>
      <stored>        stopped; stored: frames the board put in its store (all boot)
    X <text>          the board did not start (main.py raised)
"""

import asyncio
import binascii
import gc
import json
import socket
import struct
import time

import js
import machine
import network

_sleep_ms = asyncio.sleep_ms  # the port's own: the launcher's sleeps stay exact
# what main.py imports, directly or not, in dependency order
_FIRMWARE_MODULES = ("wire", "limits", "config", "intmath", "ntc", "analog", "crc32", "cobs",
                     "frames", "safety", "ring", "sampler", "insulation", "commands", "clock",
                     "persist", "store", "app")
_MQTT_MODULES = ("mqtt", "mqtt_link")
_min_sleep = [1]
# While the loop catches up on feeds it does not sleep, so this VM does not collect (see 4.
# above): below this much free heap it pauses for a collection first. (A demo test on a
# loaded machine once ran out of heap there: MemoryError reading the next feed.)
_CATCH_UP_MIN_FREE = 16_384


def _sleep_at_least(ms):
    m = _min_sleep[0]
    return _sleep_ms(ms if ms >= m else m)


def _wire_spec():
    import wire

    return json.dumps({
        "header_size": wire.HEADER_SIZE, "off_msg_type": wire.HEADER_OFF_MSG_TYPE,
        "off_flags": wire.HEADER_OFF_FLAGS, "off_payload_len": wire.HEADER_OFF_PAYLOAD_LEN,
        "flag_signed": wire.FLAG_SIGNED, "msg_time_sync": wire.MSG_TIME_SYNC,
        "time_sync_size": wire.TIME_SYNC_SIZE, "crc_len": wire.CRC_LEN})


def _connect(port):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as e:
        if e.args[0] != socket.EINPROGRESS:
            raise
    return s


class Control:
    """Lines over a non-blocking socket stand-in."""

    def __init__(self, port):
        self.sock = _connect(port)
        self.buf = bytearray(512)
        self.rx = b""

    def lines(self):
        """Complete lines among what has been read so far, after reading at most one more
        buffer: the rig sends feeds ahead, and what is not read yet waits in Node's buffer,
        not in the board's heap (raises SystemExit when the rig has gone)."""
        if b"\n" not in self.rx:
            n = self.sock.readinto(self.buf)
            if n == 0:
                raise SystemExit("rig: control connection closed")
            if n:
                self.rx = self.rx + self.buf[:n] if self.rx else bytes(self.buf[:n])
        if b"\n" not in self.rx:
            return []
        *done, self.rx = self.rx.split(b"\n")
        return done

    def send(self, *fields):
        line = " ".join(str(f) for f in fields) + "\n"
        self.sock.write(line.encode())


class Inputs:
    """The readings: values in layout order, written into machine.inputs."""

    def __init__(self):
        self.layout = None
        self.fmt = None

    def static(self, d):
        for addr, regs in d.get("i2c", {}).items():
            machine.inputs["i2c"][int(addr)] = {int(r): v for r, v in regs.items()}
        for pin, (select, n) in d.get("mux", {}).items():
            machine.inputs["mux"][int(pin)] = (select, [0] * n)
        for pin, level in d.get("pins", {}).items():
            machine.inputs["pins"][int(pin)] = level

    def apply(self, values):
        adc = machine.inputs["adc_uv"]
        mux = machine.inputs["mux"]
        i2c = machine.inputs["i2c"]
        layout = self.layout
        for i in range(len(layout)):
            kind, a, b = layout[i]
            if kind == 0:
                adc[a] = values[i]
            elif kind == 1:
                mux[a][1][b] = values[i]
            else:
                i2c[a][b] = values[i]


async def main():
    with open("/rig.json") as f:
        rig = json.load(f)
    gc_pause_ms = rig["gc_pause_ms"]  # a sleep that returns to JS, where the VM collects
    # first, while the heap is clean: the modules' bytecode wants large blocks
    for name in _FIRMWARE_MODULES + (_MQTT_MODULES if rig.get("mqtt_port") else ()):
        __import__(name)
        await _sleep_ms(gc_pause_ms)  # collect the import's garbage (see 4. above)
    feed_ms = rig["feed_ms"]
    ctl = Control(rig["control_port"])  # commands in, reports out
    feeds = Control(rig["feed_port"])  # layout, static inputs and readings, read as needed
    inputs = Inputs()
    socket.time_sync_spec = _wire_spec()
    if rig.get("mqtt_port"):
        socket.time_sync[rig["mqtt_port"]] = "mqtt"
        socket.round_trips.add(rig["mqtt_port"])
    if rig.get("serial_port"):
        socket.time_sync[rig["serial_port"]] = "cobs"
        machine.UART.wire = _connect(rig["serial_port"])
    _min_sleep[0] = rig.get("min_sleep_ms", 1)
    asyncio.sleep_ms = _sleep_at_least

    readings = {}
    while 0 not in readings or inputs.layout is None:  # the board starts with real inputs
        for line in feeds.lines():
            _handle(line, ctl, inputs, readings, None)
            await _sleep_ms(gc_pause_ms)  # each line's garbage goes first (see 4. above)
        await _sleep_ms(5)
    inputs.apply(readings.pop(0))

    tasks = []
    asyncio.run = lambda coro: tasks.append(asyncio.create_task(coro))
    t0 = time.ticks_ms()
    try:
        import main as board_main  # main.py as deployed; its asyncio.run starts the board
    except BaseException as e:  # whatever it was (SystemExit: BOOT held), the rig is told
        ctl.send("X", repr(e))
        await _sleep_ms(50)
        return
    board = board_main.board
    stored = _count_stored(board)
    gc.collect()
    free = min_free = gc.mem_free()
    ctl.send("B", board.boot, free, time.time_ns() // 1_000_000)

    k = 1
    starved = 0
    stop = [False]
    client = getattr(board.link, "client", None)  # MQTT
    failures = 0
    while not stop[0]:
        if client is not None and client.conn_failures != failures:
            failures = client.conn_failures  # into the VM's log: why the link went down
            print("mqtt: connection failure", failures, "at",
                  time.ticks_diff(time.ticks_ms(), t0), "ms:", repr(client.last_error))
        for line in ctl.lines():
            _handle(line, ctl, inputs, readings, stop)
        while k not in readings and not stop[0]:  # the next feed, no more (heap)
            got = feeds.lines()
            if not got:
                break
            for line in got:
                _handle(line, ctl, inputs, readings, stop)
        now = time.ticks_diff(time.ticks_ms(), t0)
        if now >= k * feed_ms:
            values = readings.pop(k, None)
            if values is None:
                starved += 1  # the rig is behind: the sensors hold their last values
            else:
                inputs.apply(values)
            free = gc.mem_free()
            min_free = min(min_free, free)
            out = machine.outputs
            store = board.store
            ctl.send("T", k, now, out["wdt_late"], out["wdt_max_gap_ms"], free, starved,
                     int(js.mpvmClock.snappedMs()), store.pending_count if store else 0,
                     board.seq, board.acked_seq, 1 if board.clock.synced else 0, stored[0])
            k += 1
            if free < _CATCH_UP_MIN_FREE:
                await _sleep_ms(gc_pause_ms)
            continue
        await _sleep_ms(min(k * feed_ms - now, 200))

    board.running = False
    await _sleep_ms(200)
    for t in tasks:
        t.cancel()
    link = board.link
    store = board.store
    ctl.send("E", board.seq, store.pending_count if store else 0, getattr(link, "dropped", 0),
             machine.outputs["wdt_late"], min_free, starved, store.dropped if store else 0,
             stored[0])
    if hasattr(link, "stop"):
        await link.stop()
    await _sleep_ms(100)


def _count_stored(board):
    """The rig's probe: count the frames the board puts in its store (samples, batches,
    alarms, pre-event samples), so that the rig can tell whether every one reached the
    host. It wraps the store's append on this one object; the firmware is not touched."""
    count = [0]
    store = board.store
    if store is None:
        return count
    append = store.append

    def counted(buf, n):
        count[0] += 1
        return append(buf, n)

    store.append = counted
    return count


def _handle(line, ctl, inputs, readings, stop):
    kind = line[:1]
    if kind == b"R":
        sp = line.find(b" ", 2)
        readings[int(line[2:sp])] = struct.unpack(inputs.fmt, binascii.unhexlify(line[sp + 1:]))
    elif kind == b"L":
        inputs.layout = [tuple(t) + (0,) * (3 - len(t)) for t in json.loads(line[2:])]
        inputs.fmt = "<" + str(len(inputs.layout)) + "i"
    elif kind == b"I":
        inputs.static(json.loads(line[2:]))
    elif kind == b"W":
        network.set_wifi(line[2:3] == b"1")
    elif kind == b"S":
        speed, cpu, min_sleep = line.split()[1:]
        js.mpvmClock.setSpeed(float(speed), float(cpu))
        _min_sleep[0] = int(min_sleep)
    elif kind == b"Q" and stop is not None:
        stop[0] = True
