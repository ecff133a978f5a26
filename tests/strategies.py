"""Hypothesis strategies for valid frames, derived from the schema layouts (not retyped)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st

from packsentry.protocol import layout, schema
from packsentry.protocol.layout import ByteString, Fixed, IntArray, Layout, Records, Scalar

_INT_RANGES = {code: (-(1 << (8 * struct.calcsize(code) - 1)), (1 << (8 * struct.calcsize(code)
               - 1)) - 1) if code.islower() else (0, (1 << (8 * struct.calcsize(code))) - 1)
               for code in "BbHhIiQq"}

# Keep random frames small enough to be fast; limits themselves are tested in test_bad_input.
_MAX_COUNT = {"n_probes": schema.COUNT_LIMITS["n_probes"], "n_cells": 40, "n_samples": 6,
              "n_bytes": 64}


def int_range(fmt: str) -> tuple[int, int]:
    return _INT_RANGES[fmt]


def scalar(f: Scalar) -> st.SearchStrategy[Any]:
    if f.enum:
        return st.sampled_from(sorted(f.enum.values()))
    if f.flags:
        return st.sets(st.sampled_from(sorted(f.flags.values()))).map(sum)
    lo, hi = int_range(f.fmt)
    return st.integers(lo, hi)


def _array(fmt: str, n: int) -> st.SearchStrategy[list[int]]:
    lo, hi = int_range(fmt)
    return st.lists(st.integers(lo, hi), min_size=n, max_size=n)


@st.composite
def payload(draw: st.DrawFn, lay: Layout) -> dict[str, Any]:
    counted = {s.count for s in lay.segments if not isinstance(s, Fixed)}
    for s in lay.segments:
        if isinstance(s, Records):
            counted |= {a.count for a in s.record.segments if isinstance(a, IntArray)}
    out: dict[str, Any] = {}
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            for f in seg.fields:
                if f.name in counted:
                    out[f.name] = draw(st.integers(0, _MAX_COUNT[f.name]))
                else:
                    out[f.name] = draw(scalar(f))
        elif isinstance(seg, IntArray):
            out[seg.name] = draw(_array(seg.elem_fmt, out[seg.count]))
        elif isinstance(seg, ByteString):
            out[seg.name] = draw(st.binary(min_size=out[seg.count], max_size=out[seg.count]))
        else:
            out[seg.name] = [draw(record(seg.record, out)) for _ in range(out[seg.count])]
    return out


@st.composite
def record(draw: st.DrawFn, lay: Layout, parent: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seg in lay.segments:
        if isinstance(seg, Fixed):
            out.update({f.name: draw(scalar(f)) for f in seg.fields})
        elif isinstance(seg, IntArray):
            out[seg.name] = draw(_array(seg.elem_fmt, parent[seg.count]))
    return out


@st.composite
def frame(draw: st.DrawFn, msg_type: str | None = None) -> dict[str, Any]:
    """A valid frame in canonical form, without crc32/tag and without the `signed` flag."""
    if msg_type is None:
        msg_type = draw(st.sampled_from(sorted(schema.PAYLOADS)))
    hdr = {f.name: draw(scalar(f)) for f in layout.header_layout().fields
           if f.name not in ("payload_len", "msg_type", "version", "flags")}
    unsigned_flags = [v for k, v in layout.frame_flags().items() if k != "signed"]
    hdr["flags"] = sum(draw(st.sets(st.sampled_from(unsigned_flags))))
    return {"version": schema.PROTOCOL_VERSION, "msg_type": msg_type, **hdr,
            "payload": draw(payload(layout.payload_layout(msg_type)))}
