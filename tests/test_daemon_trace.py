"""A trace file as a source: its frames go through the daemon's own pipeline."""

from __future__ import annotations

from pathlib import Path

from daemon_rig import DaemonProc, wait_until

from packsentry.hil.model_board import PyBoard
from packsentry.host.trace_file import TraceWriter

T0 = 1_790_000_000_000


def test_trace_file_is_ingested(tmp_path: Path) -> None:
    board = PyBoard(42)
    trace = tmp_path / "lab.pstrace"
    w = TraceWriter(trace)
    w.append(T0, "lab", board.birth())
    for i in range(1, 101):
        w.append(T0 + 1000 * i, "lab", board.sample(ts_ms=T0 + 1000 * i))
    w.append(T0 + 200_000, "lab", b"\x01" * 40)  # garbage: quarantined, not fatal
    w.close()
    d = DaemonProc(tmp_path, f'[[trace]]\npath = "{trace}"\n')
    try:
        d.start()
        wait_until(lambda: d.query("SELECT count(*) FROM samples")[0][0] == 100, 30,
                   "the trace's 100 samples")
        wait_until(lambda: d.query("SELECT count(*) FROM rejected")[0][0] == 1, 10,
                   "the garbage record in quarantine")
        assert d.query("SELECT site, n_cells FROM boards") == [("lab", 4)]
    finally:
        if d.proc:
            assert d.stop() == 0
        d.close()
