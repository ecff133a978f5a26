"""Small values that must survive a reboot or a power cut (the boot counter), each in its own
file, replaced atomically: written to a temporary name, then renamed over the old one
(LittleFS renames atomically), so a cut leaves the old value or the new, never half of one."""

import os


def read_int(path: str, default: int = 0) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def write_int(path: str, value: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(value))
    os.rename(tmp, path)


def next_boot(path: str = "boot.dat") -> int:
    """Increment and return the persistent boot counter.

    It must never go backwards: the host would take the new boot's frames for replays of an
    old one. So it is kept twice, and the larger readable copy wins.
    """
    boot = max(read_int(path), read_int(path + ".bak")) + 1
    write_int(path + ".bak", boot)
    write_int(path, boot)
    return boot
