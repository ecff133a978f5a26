"""The daemon's config: defaults, every error listed with its key and line, `config check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from packsentry.host import config
from packsentry.host.cli import main

GOOD = """
[daemon]
log_level = "info"
queue_size = 5000

[storage]
path = "data/depot.db"
retention_days = 90

[[serial]]
port = "/dev/ttyUSB0"
site = "lab"

[[serial]]
port = "/dev/ttyUSB1"
baud = 115200

[mqtt]
url = "mqtts://broker.example:8883"
username = "depot"
topics = ["packsentry/depot-1/+/birth", "packsentry/depot-1/+/data"]

[keys]
12648430 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[notify.webhook]]
url = "http://127.0.0.1:9000/alarms"
"""

BAD = """
[daemon]
log_level = "loud"
queue_size = 0

[storage]
pth = "x.db"

[[serial]]
baud = "fast"

[mqtt]
url = "http://broker"

[keys]
abc = "00"
7 = "0011"

[alarms]
recurrence_count = -1
"""


def test_defaults_from_an_empty_file() -> None:
    cfg = config.parse("")
    assert cfg.storage.path == "packsentry.db" and cfg.storage.synchronous == "full"
    assert cfg.serial == () and cfg.mqtt is None and cfg.keys == {}


def test_a_full_config(tmp_path: Path) -> None:
    f = tmp_path / "depot.toml"
    f.write_text(GOOD)
    cfg = config.load(f)
    assert cfg.queue_size == 5000
    assert cfg.storage.path == str(tmp_path / "data/depot.db")  # relative to the config file
    assert [s.port for s in cfg.serial] == ["/dev/ttyUSB0", "/dev/ttyUSB1"]
    assert cfg.serial[0].site == "lab" and cfg.serial[1].baud == 115200
    assert cfg.mqtt is not None and cfg.mqtt.url.startswith("mqtts://")
    assert cfg.mqtt.topics[0] == "packsentry/depot-1/+/birth"
    assert cfg.keys == {0xC0FFEE: bytes(range(32))}
    assert cfg.webhooks[0].url == "http://127.0.0.1:9000/alarms"


def test_every_error_with_its_key_and_line() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(BAD, "bad.toml")
    problems = {key: (line, msg) for key, line, msg in err.value.problems}
    assert problems["daemon.log_level"][0] == 3 and "one of" in problems["daemon.log_level"][1]
    assert problems["daemon.queue_size"][0] == 4
    assert problems["storage.pth"] == (7, "unknown key (did you mean 'path'?)")
    assert problems["serial[0].baud"][0] == 10 and "expected int" in problems["serial[0].baud"][1]
    assert "missing required key 'port'" in problems["serial[0]"][1]
    assert problems["mqtt.url"][0] == 13
    assert problems["keys.abc"][0] == 16 and problems["keys.7"][0] == 17
    assert any(k.startswith("alarms.recurrence_count") for k in problems)
    assert all(str(line) in text for text, (key, line, _) in
               zip(err.value.lines(), err.value.problems, strict=True) if line)


def test_not_toml_names_the_line() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse("[storage]\npath = \n", "x.toml")
    assert err.value.problems[0][1] == 2


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert main(["config", "check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 1
    out = capsys.readouterr()
    assert f"{bad}:7: storage.pth: unknown key" in out.out
    assert "errors" in out.err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().out
