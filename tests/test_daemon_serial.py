"""The daemon on a real pseudo-terminal: a port that disappears (a USB cable pulled) and
comes back is picked up again without a restart, and what the board stored meanwhile
arrives."""

from __future__ import annotations

import os
import time
import tty
from pathlib import Path

from daemon_rig import DaemonProc, wait_until

from packsentry.hil.model_board import PyBoard, SerialBoard

BOARD = 0xC0FFEE


class Pty:
    """A pseudo-terminal behind a stable name, as udev's /dev/serial/by-id links are."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a binary line: no echo, no line editing
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.slave)


def stored(d: DaemonProc) -> list[int]:
    return [s for (s,) in d.query("SELECT seq FROM samples WHERE board_id = ?", BOARD)]


def test_serial_port_disappears_and_comes_back(tmp_path: Path) -> None:
    port = tmp_path / "ttyBOARD"
    pty = Pty(port)
    board = PyBoard(BOARD)
    link = SerialBoard(board, pty.master)
    d = DaemonProc(tmp_path, f'[daemon]\ngap_settle_s = 3.0\n\n[[serial]]\nport = "{port}"\n'
                   f'site = "lab"\nreopen_s = 0.2\n')
    try:
        d.start()
        link.write(board.birth())
        for _ in range(50):
            link.send_sample()
            time.sleep(0.01)
        wait_until(lambda: len(stored(d)) == 50, 20, "the first 50 samples")
        assert wait_until(lambda: "time_sync" in board.commands, 5, "a time sync")

        link.unplug()  # the cable is pulled
        pty.unplug()
        d.wait_log("port lost", 10)
        for _ in range(30):  # the board samples on: into its store only
            board.sample()
        pty.plug()  # plugged back in: a new device node behind the same name
        link = SerialBoard(board, pty.master)
        d.wait_log("back after", 10)
        for _ in range(20):
            link.send_sample()
            time.sleep(0.01)
        # the live samples after the outage open a gap; the daemon asks for a re-send
        wait_until(lambda: len(stored(d)) == 100, 30,
                   f"all 100 samples (have {len(stored(d))}, board has "
                   f"{len(board.pending())} pending)")
        wait_until(lambda: not board.pending(), 20, "the board's store released")
        assert "rebirth" in board.commands
        assert d.proc is not None and d.proc.poll() is None  # never restarted
        assert sorted(stored(d)) == sorted(board.sample_seqs)
    finally:
        if d.proc:
            d.stop()
        d.close()
