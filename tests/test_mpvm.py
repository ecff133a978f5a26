"""The MicroPython VM (the official WebAssembly port under Node, via hil/mpvm.py): it runs code,
reports failures, has the modules the firmware needs, imports files handed to it, keeps the heap
of an ESP32 without PSRAM, and behaves as hil/mpvm.mjs documents where it differs from a board."""

import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from packsentry.hil import mpvm
from packsentry.hil.mpvm import (
    GC_PAUSE_MS,
    MicroPythonError,
    MicroPythonTimeout,
    MicroPythonUnavailable,
    run_micropython,
)


def _out(script: str, **kwargs: Any) -> str:
    return run_micropython(script, **kwargs).check().stdout


def test_runs_a_script() -> None:
    res = run_micropython("import sys\nprint('hello from', sys.implementation.name)")
    assert res == mpvm.MicroPythonResult("hello from micropython\n", "", 0)


def test_an_exception_gives_status_1_and_the_traceback() -> None:
    res = run_micropython("print('before')\ndef f():\n    raise ValueError('boom')\nf()\n")
    assert res.returncode == 1
    assert res.stdout == "before\n"
    assert 'File "<stdin>", line 3, in f' in res.stderr
    assert res.stderr.endswith("ValueError: boom\n")
    with pytest.raises(MicroPythonError, match="ValueError: boom"):
        res.check()


@pytest.mark.parametrize("pause", ["", "import asyncio\nawait asyncio.sleep_ms(1)\n"])
def test_sys_exit_sets_the_status(pause: str) -> None:
    assert run_micropython(pause + "import sys\nsys.exit(3)").returncode == 3
    assert run_micropython(pause + "import sys\nsys.exit()").returncode == 0


DATA = bytes(range(256)) * 3 + b"packsentry"


def test_struct_pack_into() -> None:
    out = _out("import struct\nb = bytearray(12)\n"
               "struct.pack_into('<HiB', b, 3, 0xBEEF, -5, 7)\nprint(bytes(b).hex())")
    expected = bytearray(12)
    struct.pack_into("<HiB", expected, 3, 0xBEEF, -5, 7)
    assert out.strip() == expected.hex()


def test_binascii_crc32_is_zlibs() -> None:
    out = _out(f"import binascii\ndata = {DATA!r}\n"
               "print(binascii.crc32(data))\n"
               "print(binascii.crc32(data[100:], binascii.crc32(data[:100])))")  # incremental
    assert out.split() == [str(zlib.crc32(DATA))] * 2


def test_hashlib_sha256() -> None:
    out = _out(f"import hashlib, binascii\n"
               f"print(binascii.hexlify(hashlib.sha256({DATA!r}).digest()).decode())")
    assert out.strip() == hashlib.sha256(DATA).hexdigest()


def test_micropython_const() -> None:
    assert _out("from micropython import const\nN = const(7)\nprint(N * 6)") == "42\n"


def test_gc_reports_the_heap() -> None:
    used, free = map(int, _out("import gc\nprint(gc.mem_alloc(), gc.mem_free())").split())
    assert used > 0
    assert 0.95 * mpvm.DEFAULT_HEAP_BYTES < used + free <= mpvm.DEFAULT_HEAP_BYTES


def test_files_and_dirs_are_importable(tmp_path: Path) -> None:
    (tmp_path / "app" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "app" / "main_mod.py").write_text("from pkg.inner import X\nY = X + 1\n")
    (tmp_path / "app" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "app" / "pkg" / "inner.py").write_text("X = 41\n")
    (tmp_path / "app" / "pkg" / "__pycache__" / "inner.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "host.py").write_text("Z = 'from a host file'\n")
    out = _out(
        "import os, main_mod, helper, host\n"
        "print(main_mod.Y, helper.W, host.Z)\n"
        "print(open('/data/blob.bin', 'rb').read())\n"
        "print(sorted(os.listdir('/app/pkg')))\n",
        files={"/lib/helper.py": b"W = 'from /lib'\n", "/host.py": tmp_path / "host.py",
               "/data/blob.bin": b"\x00\xff"},
        dirs={"/app": tmp_path / "app"},
    )
    assert out.splitlines() == [
        "42 from /lib from a host file",
        "b'\\x00\\xff'",
        "['__init__.py', 'inner.py']",
    ]


def test_the_heap_limit_holds() -> None:
    big = "b = bytearray(300_000)\nprint('allocated')"
    res = run_micropython(big)
    assert res.returncode == 1 and "MemoryError" in res.stderr
    assert _out(big, heap_bytes=512 * 1024) == "allocated\n"


def test_a_full_heap_fails_instead_of_hanging() -> None:
    # With the heap full, an exception reaching JS sends the port into an endless loop;
    # mpvm.mjs prints it from inside Python instead.
    res = run_micropython(
        "keep = []\ndef fill():\n    while True:\n        keep.append(bytearray(1000))\nfill()",
        timeout_s=20)
    assert res.returncode == 1
    assert res.stderr.endswith("MemoryError: memory allocation failed, allocating 1000 bytes\n")


CHURN = f"""
import asyncio
for i in range(1000):
    junk = bytearray(1000)  # 1 MB of garbage in all, 8 times the heap
    if {{pause}} and i % 50 == 0:
        await asyncio.sleep_ms({GC_PAUSE_MS})
print('survived')
"""


def test_garbage_is_only_collected_when_control_returns_to_js() -> None:
    assert "MemoryError" in run_micropython(CHURN.format(pause=False)).stderr
    assert _out(CHURN.format(pause=True)) == "survived\n"


def test_top_level_await_and_tasks() -> None:
    # asyncio runs due tasks in deadline order, so distinct deadlines fix the output order.
    out = _out("""
import asyncio
print(hasattr(asyncio, 'run'))

async def ticker(name, n, ms):
    for i in range(n):
        await asyncio.sleep_ms(ms)
        print(name, i)
    return name

task = asyncio.create_task(ticker('bg', 3, 10))  # ticks at 10, 20, 30 ms
print(await ticker('main', 1, 15), 'returned')    # ticks at 15 ms
print(await task, 'returned')
""")
    assert out.splitlines() == [
        "False", "bg 0", "main 0", "main returned", "bg 1", "bg 2", "bg returned"]


def test_a_script_that_runs_too_long_times_out() -> None:
    with pytest.raises(MicroPythonTimeout):
        run_micropython("print('spinning')\nwhile True:\n    pass", timeout_s=1)


def test_missing_node_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mpvm.shutil, "which", lambda _: None)
    with pytest.raises(MicroPythonUnavailable, match="nodejs"):
        run_micropython("pass")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(mpvm, "REPO_ROOT", tmp_path)
    with pytest.raises(MicroPythonUnavailable, match="npm ci"):
        run_micropython("pass")


def test_vm_paths_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        run_micropython("pass", files={"lib/x.py": b""})
