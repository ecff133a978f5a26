"""The firmware type-checks against MicroPython 1.27's ESP32 stubs (basedpyright, configured by
firmware/pyrightconfig.json; `make test` installs the stubs). A second test proves the check
sees the board's modules, not CPython's: a probe using what the board lacks must fail."""

from __future__ import annotations

from pathlib import Path

from packsentry.host import firmware_build as fb


def test_firmware_type_checks_clean() -> None:
    result = fb.typecheck()
    # every firmware module was checked, the generated wire.py included
    assert (fb.FIRMWARE_DIR / "wire.py") in fb.sources()
    assert result.files_analyzed == len(fb.sources())
    assert result.clean, (
        f"{len(result.errors)} error(s), {len(result.warnings)} warning(s) against "
        f"{fb.stubs_version()}:\n" + "\n".join(str(d) for d in result.diagnostics))


PROBE = """\
import hmac  # CPython has it; the ESP32 build does not
import time

import machine
import wire

time.sleep_ms(wire.HEADER_SIZE)  # MicroPython's time only
machine.Pin(2, machine.Pin.OUT).value(1)
n = wire.NO_SUCH_FIELD
m = wire.HEADER_FMT + 1
"""


def test_the_check_uses_micropython_stubs_and_catches_errors(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = fb.typecheck([probe])
    assert result.files_analyzed == 1
    found = {(d.line, d.rule) for d in result.errors}
    assert found == {(1, "reportMissingImports"), (9, "reportAttributeAccessIssue"),
                     (10, "reportOperatorIssue")}, "\n".join(map(str, result.diagnostics))
    assert not result.clean
