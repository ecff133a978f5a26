"""Run MicroPython code in the official MicroPython WebAssembly port, under Node.

A thin wrapper around ``hil/mpvm.mjs``, whose header says how the VM differs from the board.
In short: the Python heap is fixed at ``heap_bytes``, but its GC only runs when control goes back
to JS, i.e. at a real sleep of ``GC_PAUSE_MS``. Until then garbage accumulates, so a long
synchronous loop that allocates can raise MemoryError where the board would not.
Top-level ``await`` works. There is no ``asyncio.run``: write ``await main()``.

    result = run_micropython("import struct; print(struct.calcsize('<HI'))").check()
    assert result.stdout == "6\\n"
"""

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parent.parent  # hil/ sits at the repository root
RUNNER = REPO_ROOT / "hil" / "mpvm.mjs"
PACKAGE = "@micropython/micropython-webassembly-pyscript"
DEFAULT_HEAP_BYTES = 131072  # about what an ESP32 without PSRAM has free
# A sleep that surely returns control to JS, where the VM's GC runs: the scripts that must let
# the VM collect (the virtual board's launcher, tests, benchmarks) pause this long. 1 ms is not
# enough: its deadline may already be due when asyncio's loop looks, more often on a loaded
# machine (hil/mpvm.mjs; under 3 CPU hogs a churn script ran out of heap 5 times in 66 runs).
GC_PAUSE_MS = 10


class MicroPythonError(Exception):
    """A script failed in the VM; the message holds its stderr (the traceback)."""


class MicroPythonTimeout(MicroPythonError):
    """A script ran longer than its timeout (or hit the port's hang with a full heap)."""


class MicroPythonUnavailable(RuntimeError):
    """Node or the MicroPython WebAssembly package is not installed."""


@dataclass(frozen=True)
class MicroPythonResult:
    stdout: str
    stderr: str
    returncode: int

    def check(self) -> Self:
        """Return self if the script succeeded, else raise MicroPythonError."""
        if self.returncode != 0:
            raise MicroPythonError(
                f"MicroPython script failed with status {self.returncode}:\n{self.stderr}"
            )
        return self


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise MicroPythonUnavailable(
            "node not found on PATH: install the Debian package nodejs (Node >= 20)"
        )
    return node


def check_package() -> None:
    if not (REPO_ROOT / "node_modules" / PACKAGE / "package.json").is_file():
        raise MicroPythonUnavailable(
            f"{PACKAGE} is not installed in {REPO_ROOT / 'node_modules'}: "
            f"run `make test` or `npm ci` in {REPO_ROOT}"
        )


def _vm_path(path: str) -> str:
    # mpvm.mjs splits HOST=VM at the last '='.
    if not path.startswith("/") or "=" in path:
        raise ValueError(f"VM paths must be absolute and free of '=': {path!r}")
    return path


def clock_args(speed: float = 1.0, cpu: float | None = None) -> list[str]:
    """hil/mpvm.mjs options for time compression (none at real time)."""
    if speed <= 0 or (cpu is not None and cpu <= 0):
        raise ValueError(f"speed and cpu must be above 0, not {speed} and {cpu}")
    if speed == 1 and cpu is None:
        return []
    return ["--speed", f"{speed:g}"] + ([] if cpu is None else ["--cpu", f"{cpu:g}"])


def run_micropython(
    script: str,
    *,
    files: Mapping[str, bytes | Path] | None = None,
    dirs: Mapping[str, Path] | None = None,
    heap_bytes: int = DEFAULT_HEAP_BYTES,
    timeout_s: float = 60.0,
    speed: float = 1.0,
    cpu: float | None = None,
) -> MicroPythonResult:
    """Run ``script`` as ``__main__`` in a fresh VM.

    ``files`` maps absolute VM paths to contents or host files. ``dirs`` maps VM directories to
    host directories, which are copied recursively and put on ``sys.path``. Files in ``/`` (the
    cwd) and ``/lib`` are importable too.
    A script that raises gives returncode 1 and its traceback in stderr. A script still running
    after ``timeout_s`` is killed and raises MicroPythonTimeout.
    ``speed`` compresses time: the script's clock and sleeps run that many times faster than
    real time, and its computing costs ``cpu`` (default: ``speed``) times its real duration of
    the script's time (hil/mpvm.mjs, "Time compression").
    """
    node = find_node()
    check_package()
    with tempfile.TemporaryDirectory(prefix="mpvm-") as tmp:
        args = [node, str(RUNNER), "--heap", str(heap_bytes), *clock_args(speed, cpu)]
        for i, (vm, content) in enumerate((files or {}).items()):
            if isinstance(content, bytes):
                host = Path(tmp, str(i))
                host.write_bytes(content)
                content = host
            args += ["--file", f"{content}={_vm_path(vm)}"]
        for vm, host_dir in (dirs or {}).items():
            args += ["--dir", f"{host_dir}={_vm_path(vm)}"]
        args.append("-")
        try:
            done = subprocess.run(
                args, input=script.encode(), capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace")
            err = (e.stderr or b"").decode(errors="replace")
            raise MicroPythonTimeout(
                f"MicroPython script still running after {timeout_s} s\n"
                f"stdout:\n{out}\nstderr:\n{err}"
            ) from None
    return MicroPythonResult(
        stdout=done.stdout.decode(errors="replace"),
        stderr=done.stderr.decode(errors="replace"),
        returncode=done.returncode,
    )
