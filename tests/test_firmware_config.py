"""config.json validation in the MicroPython VM: bad input never crashes the board, falls
back field by field, and names the first bad field by its code."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from packsentry.hil.mpvm import run_micropython

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


def load_in_vm(text: str | None) -> dict:
    files = {} if text is None else {"/board/config.json": text.encode()}
    res = run_micropython("""
import config
cfg = config.load('/board/config.json')
print(repr({'error': cfg.error, 'messages': cfg.messages, 'board_id': cfg['board_id'],
            'chemistry': cfg['chemistry'], 'ntc': cfg['pins.ntc'], 'baud': cfg['link.baud'],
            'probe_cell': cfg['probe_cell'], 'fields': [f[0] for f in config.FIELDS]}))
""", files=files, dirs={"/firmware": FIRMWARE}).check()
    return ast.literal_eval(res.stdout.splitlines()[-1])


def code_of(out: dict, name: str) -> int:
    return out["fields"].index(name) + 1


def test_valid_config_is_taken_as_is() -> None:
    out = load_in_vm(json.dumps({"board_id": 4_000_000_000, "chemistry": "lfp",
                                 "pins": {"ntc": [32, 33]}, "link": {"baud": 921_600},
                                 "probe_cell": [0, 95]}))
    assert out["error"] == 0 and out["messages"] == []
    assert (out["board_id"], out["chemistry"], out["ntc"], out["baud"]) == (
        4_000_000_000, "lfp", [32, 33], 921_600)


def test_missing_file_runs_on_defaults() -> None:
    out = load_in_vm(None)
    assert out["error"] == len(out["fields"]) + 2
    assert "not found" in out["messages"][0] and out["chemistry"] == "nmc"


def test_bad_json_runs_on_defaults() -> None:
    out = load_in_vm('{"board_id": 7,')
    assert out["error"] == len(out["fields"]) + 1 and "not valid JSON" in out["messages"][0]
    assert out["board_id"] == 0


@pytest.mark.parametrize(("doc", "field"), [
    ({"chemistry": "lto"}, "chemistry"),
    ({"board_id": -1}, "board_id"),
    ({"board_id": True}, "board_id"),
    ({"link": {"baud": "fast"}}, "link.baud"),
    ({"pins": {"ntc": [32, 99]}}, "pins.ntc"),
    ({"key_hex": "abc"}, "key_hex"),
    ({"site": "depot/1"}, "site"),
    ({"pins": {"pack_v": 25}}, "pins.pack_v"),  # an ADC2 pin: unusable while WiFi runs
    ({"pins": {"ntc": [32, 4]}}, "pins.ntc"),
    ({"ntc_model": {"beta": -1, "r25_ohm": 10_000}}, "ntc_model"),
    ({"ntc_model": [{"beta": 3950, "r25_ohm": 10_000}, "x"]}, "ntc_model"),
])
def test_bad_field_falls_back_and_is_named(doc: dict, field: str) -> None:
    out = load_in_vm(json.dumps({"board_id": 9, **doc} if "board_id" not in doc else doc))
    assert out["error"] == code_of(out, field)
    assert out["messages"][0].startswith(f"{field} = ")
    assert "using default" in out["messages"][0]


def test_first_bad_field_wins_and_the_rest_still_load() -> None:
    out = load_in_vm(json.dumps({"board_id": 5, "chemistry": "x", "link": {"baud": 0},
                                 "pins": {"ntc": [32, 33, 34]}}))
    assert out["error"] == code_of(out, "chemistry") and len(out["messages"]) == 2
    assert out["board_id"] == 5 and out["ntc"] == [32, 33, 34]


def test_probe_cell_must_match_the_probes() -> None:
    out = load_in_vm(json.dumps({"pins": {"ntc": [32, 33]}, "probe_cell": [1]}))
    assert out["error"] == code_of(out, "probe_cell") and out["probe_cell"] == []


def test_docs_table_matches_the_config_fields() -> None:
    doc = (FIRMWARE.parent / "docs" / "firmware.md").read_text()
    documented = {}
    for line in doc.splitlines():
        cells = [c.strip(" `") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit() and cells[1] != "(file)":
            documented[int(cells[0])] = (cells[1], json.loads(cells[2]))
    res = run_micropython("""
import config, json
print(json.dumps([[name, default] for name, default, check in config.FIELDS]))
""", dirs={"/firmware": FIRMWARE}).check()
    fields = {code: tuple(f) for code, f in enumerate(json.loads(res.stdout), 1)}
    assert documented == fields, "docs/firmware.md's config table differs from config.FIELDS"
