"""Everything generated from the schemas is fresh, and the fingerprint tracks the layout."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from construct import Int16ul, Int32ul, PaddedString, Struct

from packsentry.protocol import generate, layout, schema


def test_generated_files_are_fresh() -> None:
    res = subprocess.run([sys.executable, "-m", "packsentry.protocol.generate", "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"stale generated files:\n{res.stderr}"


def test_wire_module_imports_only_what_micropython_has() -> None:
    tree = ast.parse(generate.WIRE_PY.read_text())
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names}
    assert imported == {"micropython"}


def test_protocol_doc_covers_every_message_and_field() -> None:
    doc = generate.PROTOCOL_MD.read_text()
    for name, lay in layout.all_payload_layouts().items():
        assert re.search(rf"^### `{name}` \(0x[0-9a-f]{{2}}\)$", doc, re.M), name
        names = [f.name for f in lay.scalars] + [s.name for s in lay.segments
                                                 if not isinstance(s, layout.Fixed)]
        for field in names:
            assert f"`{field}`" in doc, (name, field)
    assert f"0x{layout.schema_fingerprint():08x}" in doc


@pytest.fixture
def fresh_caches():
    yield
    for fn in (layout.payload_layout, layout.header_layout, layout.schema_fingerprint):
        fn.cache_clear()


def test_fingerprint_changes_with_any_layout_change(monkeypatch, fresh_caches) -> None:
    before = layout.schema_fingerprint()
    changed = Struct(*schema.Reboot.subcons, "extra" / Int16ul)
    monkeypatch.setitem(schema.PAYLOADS, "reboot", changed)
    layout.payload_layout.cache_clear()
    layout.schema_fingerprint.cache_clear()
    assert layout.schema_fingerprint() != before
    monkeypatch.setitem(schema.PAYLOADS, "reboot", Struct("delay_ms" / Int32ul))
    layout.payload_layout.cache_clear()
    layout.schema_fingerprint.cache_clear()
    assert layout.schema_fingerprint() == before  # docs are not part of the contract


def test_unsupported_constructs_are_refused(monkeypatch, fresh_caches) -> None:
    monkeypatch.setitem(schema.PAYLOADS, "reboot", Struct("name" / PaddedString(8, "utf8")))
    layout.payload_layout.cache_clear()
    with pytest.raises(layout.SchemaError, match=r"reboot\.name: unsupported construct"):
        layout.payload_layout("reboot")
