"""The demo, shortened: it runs the real daemon end to end and prints its summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_short_demo_ends_with_alarms_and_a_soh_table(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "packsentry.host.cli", "demo", "--minutes", "0.4", "--speed",
         "600", "--packs", "6", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "THERMAL EVENT L4" in text  # the runaway precursor reached the thermal event
    levels = next(line for line in text.splitlines() if "levels seen" in line)
    assert "L3" in levels and "L4" in levels
    table = text[text.index("state of health:"):]
    assert all(f"pack {i}" in table for i in range(1, 7))
    fw = next(line for line in table.splitlines() if "(fw)" in line)  # the real firmware
    assert fw.split()[6] != "-", fw  # its samples reached the estimator: an SoH figure
    assert "virtual board stopped" not in out.stderr
    assert f"Database: {tmp_path / 'demo' / 'depot.db'}" in text
