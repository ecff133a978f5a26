"""The firmware's MQTT link (firmware/mqtt.py, firmware/mqtt_link.py) in the MicroPython VM,
talking TCP to a real mosquitto through the VM's socket bridge (hil/mpvm.mjs, hil/vboard).

Each test starts its own broker on a free loopback port (never the system one on 1883) and
watches it with the mosquitto_sub/mosquitto_pub clients. A test drives the VM over a small
control connection (one line per step, through the same socket bridge) and reads what the VM
prints.

What the link guarantees, and what test_broker_restart_* checks:
- A frame sent while connected is published with QoS 1 and arrives byte-identical.
- A frame written but not yet acknowledged when the connection breaks (in flight) is sent
  again, with DUP, after the reconnect: it arrives.
- A frame sent while disconnected is dropped and counted (MqttLink.dropped), not queued: the
  firmware's store keeps samples and alarms until the host acks them and re-sends them.
"""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from packsentry.hil.broker import Broker
from packsentry.hil.mpvm import RUNNER, check_package, find_node

REPO = Path(__file__).resolve().parent.parent

# The VM end of the tests' control channel: the test steps the board's scenario line by line
# over a TCP connection through the same socket bridge (`step()`), and waits for conditions
# (`until()`). %(ctl)d is the control port.
VM_CONTROL = """ctl = socket.socket()
ctl.setblocking(False)
try:
    ctl.connect(("127.0.0.1", %(ctl)d))
except OSError:
    pass
ctl_buf = bytearray(64)
ctl_rx = b""

async def step():
    global ctl_rx
    while b"\\n" not in ctl_rx:
        n = ctl.readinto(ctl_buf)
        if n:
            ctl_rx += bytes(ctl_buf[:n])
        elif n == 0:
            raise SystemExit("control connection closed")
        await asyncio.sleep_ms(5)
    line, ctl_rx = ctl_rx.split(b"\\n", 1)
    return line.decode()

async def until(cond, timeout_ms=10_000):
    t = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t) > timeout_ms:
            raise SystemExit("timed out")
        await asyncio.sleep_ms(5)
"""


SITE = "lab"
BOARD = 0xC0FFEE
BASE = f"packsentry/{SITE}/{BOARD}"


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(
        f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        pytest.fail(f"{binary} not found: install the Debian package {package}")
    return path


class Lines:
    """Lines of a process's stdout, collected by a thread, waited for by prefix."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for raw in stream:
            self.q.put(raw.decode(errors="replace").rstrip("\n"))

    def wait(self, pred, timeout: float, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; seen: {self.seen[-30:]}")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if pred(line):
                return line

    def drain(self, quiet: float = 0.2) -> None:
        while True:
            try:
                self.seen.append(self.q.get(timeout=quiet))
            except queue.Empty:
                return


class Subscriber:
    """mosquitto_sub on packsentry/#: each message as (topic, retained, payload)."""

    def __init__(self, broker: Broker, topic: str = "packsentry/#") -> None:
        self.broker = broker
        self.pub = _need("mosquitto_pub", "mosquitto-clients")
        self.proc = subprocess.Popen(
            [_need("mosquitto_sub", "mosquitto-clients"), "-h", "127.0.0.1", "-p",
             str(broker.port), "-q", "1", "-t", topic, "-F", "%t %r %x"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = Lines(self.proc.stdout)
        self.n_sync = 0

    def messages(self, prefix: str = BASE) -> list[tuple[str, int, bytes]]:
        out = []
        for line in self.lines.seen:
            topic, retained, hexed = [*line.split(" "), "", ""][:3]
            if topic.startswith(prefix):
                out.append((topic, int(retained), bytes.fromhex(hexed)))
        return out

    def sync(self, timeout: float = 10) -> None:
        """Return once the subscription stands (again): a probe published now comes back."""
        deadline = time.monotonic() + timeout
        while True:
            self.n_sync += 1
            probe = f"packsentry/sync 0 {str(self.n_sync).encode().hex()}"
            publish(self.broker, "packsentry/sync", str(self.n_sync).encode(), check=False)
            try:
                self.lines.wait(lambda s, p=probe: s == p, 0.5, probe)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def publish(broker: Broker, topic: str, payload: bytes, retain: bool = False,
            check: bool = True) -> None:
    args = [_need("mosquitto_pub", "mosquitto-clients"), "-h", "127.0.0.1", "-p",
            str(broker.port), "-q", "1", "-t", topic, "-s"] + (["-r"] if retain else [])
    done = subprocess.run(args, input=payload, capture_output=True, timeout=5, check=False)
    if check:
        assert done.returncode == 0, done.stderr


def retained(broker: Broker, topic: str, timeout_s: int = 3) -> tuple[int, bytes] | None:
    """The retained message on topic, read by a fresh subscriber, or None."""
    done = subprocess.run(
        [_need("mosquitto_sub", "mosquitto-clients"), "-h", "127.0.0.1", "-p",
         str(broker.port), "-t", topic, "-C", "1", "-W", str(timeout_s), "-F", "%r %x"],
        capture_output=True, timeout=timeout_s + 5, check=False)
    if not done.stdout.strip():
        return None
    flag, hexed = [*done.stdout.decode().strip().split(" "), ""][:2]
    return int(flag), bytes.fromhex(hexed)


def frame(i: int, msg_type: int = 2) -> bytes:
    """A stand-in frame: version 1, msg type at wire.HEADER_OFF_MSG_TYPE, then i's bytes."""
    n = 40 + (i * 37) % 300
    return bytes([1, msg_type]) + bytes((i * 7 + k * 13) & 0xFF for k in range(n - 2))


# The VM side: the link, a control connection to the test, and helpers the steps use.
PRELUDE = """
import asyncio, binascii, time
import socket, network
import config, mqtt_link

cfg = config.parse('{"board_id": %(board)d, "site": "%(site)s", "link": {"broker": '
                   '"127.0.0.1", "port": %(port)d, "keepalive_s": 5, "wifi_ssid": "rig"}}')
link = mqtt_link.MqttLink(cfg, cfg["board_id"], frame_max=512, backoff_min_ms=100,
                          backoff_max_ms=800, wifi_ms=300, response_ms=3000)
t0 = time.ticks_ms()

def ms():
    return time.ticks_diff(time.ticks_ms(), t0)

def connected():
    print("UP", link.client.connects, ms())
link.on_connect = connected

buf = bytearray(512)  # one frame buffer, reused, as the board's FrameWriter does

def make(i, t=2):
    n = 40 + (i * 37) %% 300
    buf[0] = 1
    buf[1] = t
    for k in range(n - 2):
        buf[2 + k] = (i * 7 + k * 13) & 0xFF
    return n

def send(i, t=2):
    before = link.dropped
    link.send(buf, make(i, t))
    print("DROP" if link.dropped > before else "SENT", i, ms())

""" + VM_CONTROL + """
task = asyncio.create_task(link.run())
"""


class VM:
    """A MicroPython VM running `make_code(control_port)`, with a control connection."""

    def __init__(self, make_code, heap_bytes: int | None = None) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.server.settimeout(0.1)
        check_package()
        code = make_code(self.server.getsockname()[1])
        heap = ["--heap", str(heap_bytes)] if heap_bytes else []
        self.proc = subprocess.Popen(
            [find_node(), str(RUNNER), *heap, "--dir", f"{REPO / 'firmware'}=/firmware",
             "--dir", f"{REPO / 'hil' / 'vboard'}=/vboard", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdin is not None
        self.proc.stdin.write(code.encode())
        self.proc.stdin.close()
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.ctl, _ = self.server.accept()
                break
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.err.drain(0.2)
                    raise AssertionError(f"the VM did not call back: {self.err.seen}") from None

    def tell(self, line: str) -> None:
        self.ctl.sendall(line.encode() + b"\n")

    def wait(self, prefix: str, timeout: float = 10) -> str:
        try:
            return self.out.wait(lambda s: s.startswith(prefix), timeout, repr(prefix))
        except AssertionError as e:
            self.err.drain(0.1)
            raise AssertionError(f"{e}\nVM stderr: {self.err.seen}") from None

    def finish(self, timeout: float = 10) -> int:
        code = self.proc.wait(timeout)
        self.out.drain(0.1)
        self.err.drain(0.1)
        assert code == 0, f"VM exited {code}: {self.err.seen}"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.ctl.close()
        self.server.close()


def link_vm(broker: Broker, script: str) -> VM:
    """The VM running the firmware's MQTT link alone (PRELUDE) and then `script`."""
    return VM(lambda ctl: PRELUDE % {"board": BOARD, "site": SITE, "port": broker.port,
                                     "ctl": ctl} + script)


@pytest.fixture
def vms():
    started: list[VM] = []
    yield started
    for vm in started:
        vm.kill()


def test_birth_retained_and_qos1_frames_arrive_byte_identical(broker, host, vms) -> None:
    vm = link_vm(broker, """
link.on_connect = lambda: (connected(), link.send(buf, make(1000, 1)))  # the birth
await until(lambda: link.connected)
for i in range(20):
    send(i, 4 if i == 7 else 5 if i == 8 else 2)
    await asyncio.sleep_ms(2)
await until(lambda: link.client.pending() == 0)
print("DONE", link.sent, link.dropped, link.client.retransmits)
await step()
await link.stop()
""")
    vms.append(vm)
    up = vm.wait("UP 1")
    done = vm.wait("DONE").split()
    assert done[1:] == ["21", "0", "0"]
    want = [(f"{BASE}/birth", frame(1000, 1))] + [
        (f"{BASE}/{'status' if i == 8 else 'data'}",  # alarms travel on data
         frame(i, 4 if i == 7 else 5 if i == 8 else 2)) for i in range(20)]
    host.lines.wait(lambda s: s.startswith(f"{BASE}/data") and s.endswith(frame(19).hex()),
                   5, "frame 19")
    got = [(t, p) for t, _, p in host.messages() if not t.endswith("/status") or p]
    assert got == want
    # the will's "offline" was cleared at connect: an empty retained message on status
    assert (f"{BASE}/status", 0, b"") in host.messages()
    assert retained(broker, f"{BASE}/birth") == (1, frame(1000, 1))
    vm.tell("stop")
    vm.finish()
    print("connect ms", up.split()[2])


def test_command_from_the_host_reaches_poll(broker, host, vms) -> None:
    vm = link_vm(broker, """
await until(lambda: link.connected)
got = []
while len(got) < 2:
    link.poll(lambda f: got.append(bytes(f)))
    await asyncio.sleep_ms(20)
for g in got:
    print("CMD", binascii.hexlify(g).decode())
print("STATS", link.cmd_dropped)
await link.stop()
""")
    vms.append(vm)
    vm.wait("UP 1")
    cmds = [bytes([1, 0x10]) + bytes(range(40)), bytes([1, 0x11]) + bytes(300)]
    for c in cmds:
        publish(broker, f"{BASE}/cmd", c)
    assert bytes.fromhex(vm.wait("CMD").split()[1]) == cmds[0]
    assert bytes.fromhex(vm.wait("CMD").split()[1]) == cmds[1]
    assert vm.wait("STATS").split()[1] == "0"
    vm.finish()


def test_broker_restart_in_flight_resent_offline_dropped(broker, host, vms) -> None:
    vm = link_vm(broker, """
await until(lambda: link.connected)
for i in range(5):
    send(i)
await until(lambda: link.client.pending() == 0)
print("ACKED")
await step()  # the broker is frozen now: what we write stays unacknowledged
for i in range(5, 8):
    send(i)
await until(lambda: link.client.pending() == 3 and all(
    s == 2 for s in link.client.slot_state if s))
print("INFLIGHT")
await step()  # WiFi goes
network.set_wifi(False)
await until(lambda: not link.connected)
send(8)  # offline: dropped and counted
print("DOWN", ms())
await step()  # the broker was restarted: WiFi back
network.set_wifi(True)
print("WIFI", ms())
await until(lambda: link.client.connects == 2)
for i in range(9, 12):
    send(i)
await until(lambda: link.client.pending() == 0)
c = link.client
print("STATS", link.sent, link.dropped, c.retransmits, c.conn_failures)
await step()  # now the broker dies under a live connection, and comes back
t_down = ms()
while link.connected:
    await asyncio.sleep_ms(5)
failures = link.client.conn_failures
print("LOST", ms() - t_down)
i = 12
while True:
    send(i)
    i += 1
    await asyncio.sleep_ms(100)
    if link.connected and ctl.readinto(ctl_buf) is not None:
        break  # the test's "mark": everything sent from here on must arrive
mark = i
for i in range(mark, mark + 5):
    send(i)
await until(lambda: link.client.pending() == 0)
print("MARK", mark, link.client.connects, link.client.conn_failures - failures)
await link.stop()
""")
    vms.append(vm)
    vm.wait("UP 1")
    vm.wait("ACKED")
    broker.freeze()
    vm.tell("burst")
    vm.wait("INFLIGHT")
    vm.tell("wifi off")
    vm.wait("DOWN")
    broker.stop(signal.SIGKILL)  # the frozen broker never saw frames 5..7
    broker.start()
    host.sync()
    t_up = time.monotonic()
    vm.tell("wifi on")
    vm.wait("UP 2")
    reconnect_s = time.monotonic() - t_up
    stats = vm.wait("STATS").split()
    assert stats[1:4] == ["11", "1", "3"], stats  # sent, dropped (frame 8), retransmitted
    host.lines.wait(lambda s: s.endswith(frame(11).hex()), 5, "frame 11")
    payloads = [p for t, _, p in host.messages() if t == f"{BASE}/data"]
    assert payloads == [frame(i) for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11)]

    # Part 2: SIGTERM under a live connection, 1.5 s down, back on the same port.
    vm.tell("kill")
    broker.stop()
    t0 = time.monotonic()
    vm.wait("LOST")
    time.sleep(1.5)
    broker.start()
    host.sync()
    vm.wait("UP 3", 10)
    back_s = time.monotonic() - t0
    vm.tell("mark")
    mark_line = vm.wait("MARK", 15).split()
    mark = int(mark_line[1])
    assert int(mark_line[3]) >= 3  # lost, then refused while down: backed off and retried
    host.lines.wait(lambda s: s.endswith(frame(mark + 4).hex()), 5, "last frame")
    payloads = [p for t, _, p in host.messages() if t == f"{BASE}/data"]
    assert payloads[-5:] == [frame(i) for i in range(mark, mark + 5)]
    dropped = [int(s.split()[1]) for s in vm.out.seen if s.startswith("DROP")]
    assert dropped and not {frame(i) for i in dropped if i >= 12} & set(payloads)
    vm.finish()
    print(f"wifi-on to UP {reconnect_s:.2f}s, broker stop to UP again {back_s:.2f}s")


def test_last_will_offline_is_retained_when_the_board_vanishes(broker, vms) -> None:
    vm = link_vm(broker, """
await until(lambda: link.connected)
print("READY")
await step()
""")
    vms.append(vm)
    vm.wait("READY")
    publish(broker, f"{BASE}/status", b"stale", retain=True)  # overwritten by the will
    t0 = time.monotonic()
    vm.proc.kill()  # the board loses power: no DISCONNECT
    vm.proc.wait()
    assert retained(broker, f"{BASE}/status") == (1, b"offline")
    print(f"will seen {time.monotonic() - t0:.2f}s after the kill")


def test_keepalive_pings_and_a_silent_broker_is_noticed(broker, vms) -> None:
    vm = link_vm(broker, """
await until(lambda: link.connected)
await until(lambda: link.client.pings >= 1 and not link.client.ping_out, 4_000)
print("PONG", ms(), link.client.connects)
await step()  # the broker is frozen: the next PINGRESP never comes
t = ms()
await until(lambda: not link.connected, 8_000)
print("DEAD", ms() - t, type(link.client.last_error).__name__)
""")
    vms.append(vm)
    vm.wait("UP 1")
    assert vm.wait("PONG", 6).split()[2] == "1"  # pinged at keepalive/2, answered, still up
    broker.freeze()
    vm.tell("freeze")
    dead = vm.wait("DEAD", 10).split()
    # found by the PINGRESP timeout (response_ms = 3 s) after the next ping (keepalive/2 = 2.5 s)
    assert 3_000 <= int(dead[1]) <= 2_500 + 3_000 + 2_000
    vm.finish()
    print("silent broker noticed after", dead[1], "ms")
