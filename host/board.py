"""`packsentry board ...`: the tools between the firmware tree and a real ESP32.

    build      compile firmware/ with mpy-cross (MicroPython 1.27, .mpy 6.3) into build/firmware
    typecheck  type-check firmware/ against MicroPython's ESP32 stubs
    provision  make a board's config.json with a fresh random key; print the host's key line
    flash      erase the board and write a MicroPython image (esptool)
    deploy     copy the build and the config to the board (mpremote), verified by sha256
    monitor    read the board's COBS frame stream from a serial port, one JSON line per frame

Errors are one line on stderr and exit status 2: a missing or busy port, a tool that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packsentry.protocol import replay, stream
from packsentry.protocol.cli import UsageError, item_json, parse_keys
from packsentry.protocol.verify import Verifier

from . import firmware_build as fb

BOARD_CONFIG_NAME = "config.json"  # where firmware/config.py loads it from (the board's root)
KEY_BYTES = 32
FLASH_ADDRESS = {"esp32": 0x1000, "esp32s2": 0x1000}  # MicroPython's images; others at 0x0
CHIPS = ("esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6")


class BoardError(UsageError):
    """One line for the user, exit status 2."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    board = sub.add_parser("board", help="build, type-check, provision, flash, deploy and "
                           "monitor the ESP32 firmware", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = board.add_subparsers(dest="board_command", required=True, metavar="COMMAND")

    def leaf(name: str, func: Callable[[argparse.Namespace], int], help: str):
        p = bsub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func, command=f"board {name}")  # error lines: `packsentry board X:`
        return p

    b = leaf("build", cmd_build, "compile firmware/ with mpy-cross into a deployable directory")
    b.add_argument("--out", type=Path, default=fb.DEFAULT_BUILD_DIR,
                   help="build directory (default: build/firmware; replaced by each build)")
    b.add_argument("--arch", help="mpy-cross -march, only for native/viper code (xtensawin)")

    leaf("typecheck", cmd_typecheck,
         "type-check firmware/ against MicroPython 1.27's ESP32 stubs (exit 1 on findings)")

    p = leaf("provision", cmd_provision,
             "write a board config with a new random key; print the key line for the host")
    p.add_argument("--board-id", required=True, type=_board_id, metavar="N")
    p.add_argument("--site", help="site name (default: the --base file's, else 'lab')")
    p.add_argument("--base", type=Path, metavar="FILE",
                   help="JSON object to start from (pins, calibration...); its key is replaced")
    p.add_argument("--out", type=Path, default=Path(BOARD_CONFIG_NAME),
                   help="config file to write (default: ./config.json)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    f = leaf("flash", cmd_flash, "erase the board's flash and write a MicroPython image")
    f.add_argument("--port", required=True)
    f.add_argument("--image", required=True, type=Path, help="e.g. ESP32_GENERIC-v1.27.0.bin")
    f.add_argument("--chip", default="esp32", choices=CHIPS)
    f.add_argument("--address", type=lambda s: int(s, 0),
                   help="flash offset (default: 0x1000 for esp32/esp32s2, else 0x0)")
    f.add_argument("--baud", type=int, default=460800)
    f.add_argument("--connect-attempts", type=int, default=7, metavar="N")

    d = leaf("deploy", cmd_deploy,
             "copy the compiled firmware and the config to the board, verified by sha256")
    d.add_argument("--port", required=True)
    d.add_argument("--config", type=Path, metavar="FILE",
                   help=f"board config to install as /{BOARD_CONFIG_NAME}")
    d.add_argument("--build", type=Path, default=fb.DEFAULT_BUILD_DIR, metavar="DIR",
                   help="build directory (default: build/firmware)")
    d.add_argument("--no-build", action="store_true",
                   help="deploy --build DIR as it is instead of compiling firmware/ into it")
    d.add_argument("--baud", type=int, default=115200)

    m = leaf("monitor", cmd_monitor, "print the frames a board sends on a serial port as JSON "
             "lines, until Ctrl-C")
    m.add_argument("--port", required=True)
    m.add_argument("--baud", type=int, default=115200)
    m.add_argument("--key", action="append", default=[], metavar="[BOARD=]HEX",
                   help="verify tags with this key (for one board, or all); repeatable")
    m.add_argument("--no-replay-check", action="store_true",
                   help="do not reject repeated or out-of-window (boot, seq)")
    m.add_argument("--count", type=int, metavar="N",
                   help="stop after N decoded frames (rejected ones are printed, not counted)")
    m.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds; exit 1 if --count frames have not arrived")


def _board_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{value} is not a u32")
    return value


# -- build, typecheck ------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    result = fb.build(args.out, arch=args.arch)
    width = max(len(f.name) for f in result.files)
    for f in result.files:
        print(f"{f.name:<{width}}  {f.size:>7} bytes  (source {f.source_size})")
    print(f"total: {len(result.files)} files, {result.total} bytes in {result.out}")
    print(f"compiler: {result.compiler}")
    return 0


def cmd_typecheck(args: argparse.Namespace) -> int:
    result = fb.typecheck()
    for d in result.diagnostics:
        print(d)
    against = fb.stubs_version() or "MicroPython stubs"
    print(f"{len(result.errors)} error(s), {len(result.warnings)} warning(s) in "
          f"{result.files_analyzed} files ({result.checker}, {against})", file=sys.stderr)
    return 0 if result.clean else 1


# -- provision -------------------------------------------------------------------------------


_SITE_BAD = re.compile(r"[/+#]")  # firmware/config.py: the site goes into MQTT topics


def provision_config(board_id: int, site: str | None = None,
                     base: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """A board config (base, then board_id, a new key_hex and site) and its key."""
    site = site if site is not None else (base or {}).get("site", "lab")
    if not isinstance(site, str) or not site or len(site) > 32 or _SITE_BAD.search(site):
        raise BoardError(f"site {site!r}: 1 to 32 characters, none of / + #")
    key = secrets.token_bytes(KEY_BYTES)
    return {**(base or {}), "board_id": board_id, "key_hex": key.hex(), "site": site}, key


def key_line(board_id: int, key: bytes) -> str:
    """The host's key registration: what `packsentry decode --key` takes."""
    return f"{board_id}={key.hex()}"


def cmd_provision(args: argparse.Namespace) -> int:
    base = None
    if args.base is not None:
        try:
            base = json.loads(args.base.read_text())
        except json.JSONDecodeError as exc:
            raise BoardError(f"--base {args.base}: invalid JSON: {exc}") from None
        if not isinstance(base, dict):
            raise BoardError(f"--base {args.base}: expected a JSON object")
    config, key = provision_config(args.board_id, args.site, base)
    _write_secret(args.out, (json.dumps(config, indent=2) + "\n").encode(), force=args.force)
    print(f"wrote {args.out} (board {args.board_id}, site {config['site']}); register the key "
          f"with the host (e.g. packsentry decode --key {args.board_id}=...):", file=sys.stderr)
    print(key_line(args.board_id, key))
    return 0


def _write_secret(path: Path, data: bytes, *, force: bool) -> None:
    """Write a file only its owner can read; never replace one unless `force`."""
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise BoardError(f"{path} exists; use --force to replace it (its key is then "
                             f"lost)") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- serial ports ----------------------------------------------------------------------------


def check_port(port: str) -> None:
    """Fail early, and clearly, when the port is not there (pyserial URLs pass through)."""
    if "://" not in port and not os.path.exists(port):
        raise BoardError(f"{port}: no such serial port (is the board plugged in? `ls "
                         f"/dev/ttyUSB* /dev/ttyACM*` lists candidates)")


def _port_problem(port: str, exc: BaseException | None = None) -> str:
    """Why a port could not be opened, in words."""
    code = getattr(exc, "errno", None)
    if ("://" not in port and not os.path.exists(port)) or code == errno.ENOENT:
        return f"{port}: no such serial port"
    if code == errno.EACCES or ("://" not in port and not os.access(port, os.R_OK | os.W_OK)):
        return f"{port}: permission denied (add yourself to the dialout group)"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(exc):
        return f"{port}: busy, another program has it open (a monitor, mpremote, a terminal?)"
    return f"{port}: cannot open it: {exc}" if exc else f"{port}: cannot open it"


def open_serial(port: str, baud: int):
    import serial

    check_port(port)
    ser = serial.serial_for_url(port, do_not_open=True, baudrate=baud, timeout=0.1,
                                exclusive=True)
    # DTR/RTS drive EN/IO0 on ESP32 dev boards: keep both released (no reset, no bootloader).
    ser.dtr = False
    ser.rts = False
    try:
        ser.open()
    except (serial.SerialException, OSError) as exc:
        raise BoardError(_port_problem(port, exc)) from None
    return ser


# -- monitor ---------------------------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    import serial

    per_board, default = parse_keys(args.key)
    verifier = Verifier(lambda board: per_board.get(board, default),
                        replay_window=None if args.no_replay_check else replay.DEFAULT_WINDOW)
    reader = stream.FrameReader(verifier)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    ser = open_serial(args.port, args.baud)
    print(f"monitoring {args.port} at {args.baud} baud; Ctrl-C to stop", file=sys.stderr,
          flush=True)
    n_ok = 0
    try:
        while args.count is None or n_ok < args.count:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise BoardError(f"{args.port}: read failed (unplugged?): {exc}") from None
            for item in reader.feed(data):
                print(json.dumps(item_json(args.port, item)), flush=True)
                n_ok += item.frame is not None
                if args.count is not None and n_ok >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        ser.close()
    n_bad = sum(verifier.counters.values())
    summary = f"{n_ok} frame(s) decoded, {n_bad} rejected"
    if n_bad:
        summary += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(
            verifier.counters.items())) + ")"
    print(summary, file=sys.stderr)
    return 1 if args.count is not None and n_ok < args.count else 0


# -- flash -----------------------------------------------------------------------------------


def flash(port: str, image: Path, *, chip: str = "esp32", address: int | None = None,
          baud: int = 460800, connect_attempts: int = 7) -> None:
    """Erase the whole flash and write `image` with esptool; its progress goes to stdout."""
    check_port(port)
    if not image.is_file():
        raise BoardError(f"{image}: no such image file")
    try:
        import esptool  # noqa: F401  (run below as `python -m esptool`, in its own process)
    except ImportError:
        raise BoardError("esptool is not installed: pip install -e '.[board]'") from None
    if address is None:
        address = FLASH_ADDRESS.get(chip, 0)
    cmd = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud),
           "--connect-attempts", str(connect_attempts),
           "write-flash", "--erase-all", hex(address), str(image)]
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode == 0:
        sys.stderr.write(done.stderr)  # warnings
        return
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    fatal = next((ln.split("error occurred:", 1)[1].strip() for ln in lines
                  if "error occurred:" in ln), lines[-1] if lines else f"status {done.returncode}")
    hint = ""
    if "connect" in fatal.lower():
        hint = " (is it an ESP32 on this port? hold BOOT while it connects)"
    raise BoardError(f"esptool failed on {port}: {fatal}{hint}")


def cmd_flash(args: argparse.Namespace) -> int:
    flash(args.port, args.image, chip=args.chip, address=args.address, baud=args.baud,
          connect_attempts=args.connect_attempts)
    print(f"flashed {args.image} to {args.port}; next: packsentry board deploy --port "
          f"{args.port} --config config.json", file=sys.stderr)
    return 0


# -- deploy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    name: str  # path on the board, from its root
    size: int
    sha256: str


# Runs on the board: sha256 of each file, in 256-byte reads (None if it is missing).
_HASH_ON_BOARD = """
import hashlib, binascii
def _ps_sha(p):
    h = hashlib.sha256()
    b = bytearray(256)
    m = memoryview(b)
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    with f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
"""


def deploy(port: str, files: list[tuple[str, bytes]], *, baud: int = 115200,
           log: Callable[[str], None] = lambda s: None) -> list[Deployed]:
    """Write `files` (board path, content) to the board over its raw REPL, remove a `X.py`
    that would shadow a new `X.mpy` (MicroPython imports .py first), and check every file's
    sha256 computed on the board. Raises BoardError on any failure."""
    check_port(port)
    try:
        from mpremote.transport import TransportError, TransportExecError
        from mpremote.transport_serial import SerialTransport
    except ImportError:
        raise BoardError("mpremote is not installed: pip install -e '.[board]'") from None
    import serial

    noise = io.StringIO()  # mpremote prints what it read when it gives up; keep the last line
    try:
        with contextlib.redirect_stdout(noise):
            transport = SerialTransport(port, baudrate=baud)
    except TransportError:
        raise BoardError(_port_problem(port, _open_error(port))) from None
    try:
        with contextlib.redirect_stdout(noise):
            transport.enter_raw_repl(soft_reset=True)
            dirs = sorted({str(Path(name).parent) for name, _ in files} - {"."})
            for d in dirs:
                transport.exec(f"import os\ntry:\n os.mkdir('/{d}')\nexcept OSError:\n pass")
            for name, data in files:
                log(f"{name}  {len(data)} bytes")
                transport.fs_writefile("/" + name, data)
            stale = [n[:-4] + ".py" for n, _ in files if n.endswith(".mpy")]
            transport.exec(f"import os\nfor p in {stale!r}:\n try:\n  os.remove('/' + p)\n"
                           " except OSError:\n  pass")
            transport.exec(_HASH_ON_BOARD)
            names = [n for n, _ in files]
            on_board = transport.eval(f"{{p: _ps_sha('/' + p) for p in {names!r}}}")
            transport.exit_raw_repl()
    except TransportExecError as exc:
        last = (exc.error_output.strip().splitlines() or ["?"])[-1]
        raise BoardError(f"{port}: the board raised {last}") from None
    except TransportError as exc:
        raise BoardError(f"{port}: {exc} (is MicroPython at its REPL? the packsentry "
                         f"firmware ignores Ctrl-C when its link is UART 0)") from None
    except (serial.SerialException, OSError) as exc:
        raise BoardError(f"{port}: lost the connection: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            transport.close()
    result, bad = [], []
    for name, data in files:
        digest = hashlib.sha256(data).hexdigest()
        if on_board.get(name) != digest:
            bad.append(name)
        result.append(Deployed(name, len(data), digest))
    if bad:
        raise BoardError(f"{port}: verification failed, the board's copy differs for "
                         f"{', '.join(bad)}; deploy again")
    return result


def _open_error(port: str) -> BaseException | None:
    """mpremote hides why the port did not open; ask the OS the same question."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    os.close(fd)
    return OSError(errno.EBUSY, "locked")  # it opens, so mpremote's exclusive lock failed


def deploy_files(build_dir: Path, config: Path | None) -> list[tuple[str, bytes]]:
    files = [(name, path.read_bytes()) for name, path in fb.built_files(build_dir)]
    if config is not None:
        try:
            data = config.read_bytes()
            obj = json.loads(data)
        except json.JSONDecodeError as exc:
            raise BoardError(f"--config {config}: invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise BoardError(f"--config {config}: expected a JSON object")
        files.append((BOARD_CONFIG_NAME, data))
    return files


def cmd_deploy(args: argparse.Namespace) -> int:
    check_port(args.port)
    if args.config is not None and not args.config.is_file():
        raise BoardError(f"--config {args.config}: no such file")
    if not args.no_build:
        fb.build(args.build)
    files = deploy_files(args.build, args.config)
    out = sys.stdout  # deploy() hides mpremote's own prints; ours go out as they happen

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    done = deploy(args.port, files, baud=args.baud, log=log)
    print(f"deployed {len(done)} files ({sum(d.size for d in done)} bytes) to {args.port}, "
          f"sha256 verified on the board; reset it to run the new firmware "
          f"(mpremote connect {args.port} reset)", file=sys.stderr)
    return 0
