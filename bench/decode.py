"""decode: frames/s decoding a realistic mix, CRC checked, on one core.

The mix is one daemon micro-batch (`batch_max` = 2 000 frames, host/config.py) from a fleet of
boards: 16-cell packs, 96-cell packs and 384-cell packs. The schema caps a sample at 256 cell
voltages (COUNT_LIMITS["n_cells"]), so a 384-cell pack cannot be one sample frame: it is
monitored by two boards of 192 cells each (two frames per pack sample). Frames: samples,
batches of 10 samples (a board catching up after an outage, or batching on MQTT) and births.

Candidates, each over the same frames, each checking the CRC of every frame:
- batched (the product, protocol/batch.py): `decode_batch` -> validated structured arrays;
- batched + samples(): the same, then per-sample columns with batch records unrolled;
- per-frame codec (protocol/codec.py, what the daemon calls today): dicts;
- struct loop (baseline, the practical limit of a per-frame decoder): hand-written
  `unpack_from` calls per frame -> tuples of ints, same checks;
- compiled / plain construct (baselines): `Frame.compile().parse` / `Frame.parse`, CRC
  checked outside construct (as reference.py does), no conversion of the result;
- CRC floor: `zlib.crc32` per frame and nothing else.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

from bench.harness import Context, Figure, Target
from packsentry.protocol import batch, codec, layout, reference, schema

MICRO_BATCH = 2_000
TS0_MS = 1_764_000_000_000

# (weight in frames, kind, n_probes, n_cells): what a mixed fleet sends in one micro-batch
MIX: list[tuple[float, str, int, int]] = [
    (0.40, "sample", 4, 16),
    (0.30, "sample", 8, 96),
    (0.15, "sample", 12, 192),  # half of a 384-cell pack
    (0.07, "batch", 4, 16),
    (0.07, "batch", 8, 96),
    (0.01, "birth", 4, 16),
]
BATCH_SAMPLES = 10


def _measurement(rng: random.Random, n_probes: int, n_cells: int) -> dict[str, Any]:
    cells = [rng.randint(3550, 3950) for _ in range(n_cells)]
    return {"pack_mv": sum(cells) or 52_000, "current_ma": rng.randint(-80_000, 150_000),
            "riso_pos_kohm": rng.randint(2_000, 9_000), "riso_neg_kohm": rng.randint(2_000, 9_000),
            "alarm_level": rng.choice((0, 0, 0, 1)), "alarm_flags": 0,
            "temps_dc": [rng.randint(180, 420) for _ in range(n_probes)], "cells_mv": cells}


def make_frames(n: int, seed: int = 6) -> list[bytes]:
    """n frames of the mix, each board with its own seq counter."""
    rng = random.Random(seed)
    weights = [w for w, *_ in MIX]
    seqs: dict[int, int] = {}
    out = []
    for _ in range(n):
        _, kind, n_probes, n_cells = rng.choices(MIX, weights)[0]
        board = 1000 * n_cells + rng.randrange(200)  # 200 boards of each pack shape
        seq = seqs.get(board, 0)
        hdr = {"msg_type": kind, "flags": codec.FLAGS["time_synced"], "board_id": board,
               "boot": 3, "seq": seq, "ts_ms": TS0_MS + 1000 * seq}
        if kind == "sample":
            payload = {"n_probes": n_probes, "n_cells": n_cells,
                       **_measurement(rng, n_probes, n_cells)}
            seqs[board] = seq + 1
        elif kind == "batch":
            payload = {"n_samples": BATCH_SAMPLES, "n_probes": n_probes, "n_cells": n_cells,
                       "samples": [{"dt_ms": 1000 * i, **_measurement(rng, n_probes, n_cells)}
                                   for i in range(BATCH_SAMPLES)]}
            seqs[board] = seq + BATCH_SAMPLES
        else:
            payload = {"fw_major": 1, "fw_minor": 2, "fw_patch": 0,
                       "schema_fingerprint": layout.schema_fingerprint(),
                       "chemistry": rng.choice(("nmc", "lfp")), "cells_series": n_cells,
                       "rated_mah": 100_000, "max_pack_mv": 4200 * n_cells, "max_temp_dc": 600,
                       "sample_period_ms": 1000, "riso_period_ms": 10_000,
                       "current_sensor": "shunt", "config_error": 0, "n_probes": n_probes,
                       "n_cells": n_cells, "probe_cell": list(range(n_probes))}
            seqs[board] = seq + 1
        out.append(codec.encode_frame({**hdr, "payload": payload}))
    return out


# -- the struct loop baseline ------------------------------------------------------------------


def make_struct_loop() -> Callable[[list[bytes]], list[tuple[Any, ...]]]:
    """A hand-written per-frame decoder: `unpack_from` per part, tuples out, the codec's
    checks (CRC, version, type, flags, lengths, count limits, enums, flag bits). Formats come
    from layout.py (retyping them would test the typist, not the loop)."""
    hdr_st = struct.Struct(layout.header_layout().fmt)
    fixed = {name: struct.Struct(layout.payload_layout(name).segments[0].fmt)  # type: ignore[union-attr]
             for name in ("sample", "batch", "birth")}
    s_fix, b_fix, h_fix = fixed["sample"], fixed["batch"], fixed["birth"]
    rec_fix = layout.payload_layout("batch").segments[1].record.segments[0].fmt  # type: ignore[union-attr]
    ids = layout.msg_type_ids()
    sample_id, batch_id, birth_id = ids["sample"], ids["batch"], ids["birth"]
    all_flags = sum(layout.frame_flags().values())
    alarm_bits = sum(layout.payload_layout("sample").scalars[-1].flags.values())  # type: ignore[union-attr]
    birth_f = {f.name: i for i, f in enumerate(layout.payload_layout("birth").scalars)}
    chem = set(layout.payload_layout("birth").scalars[birth_f["chemistry"]].enum)  # type: ignore[arg-type]
    sensor = set(layout.payload_layout("birth").scalars[birth_f["current_sensor"]].enum)  # type: ignore[arg-type]
    i_chem, i_sensor, i_np = birth_f["chemistry"], birth_f["current_sensor"], birth_f["n_probes"]
    max_p, max_c, max_n = (schema.COUNT_LIMITS[k] for k in ("n_probes", "n_cells", "n_samples"))
    arrays: dict[tuple[int, int], struct.Struct] = {}
    records: dict[tuple[int, int], struct.Struct] = {}
    residue = batch.CRC_RESIDUE
    h = codec.HEADER_SIZE
    crc32 = zlib.crc32

    def decode(frames: list[bytes]) -> list[tuple[Any, ...]]:
        out = []
        for f in frames:
            size = len(f)
            if size < h + 4 or crc32(f) != residue:
                raise ValueError("short or CRC")
            hdr = hdr_st.unpack_from(f)
            version, mt, flags, _, _, _, _, plen = hdr
            if version != 1 or flags & ~all_flags or plen != size - h - 4:
                raise ValueError("header")
            if mt == sample_id:
                fx = s_fix.unpack_from(f, h)
                p, c = fx[0], fx[1]
                if p > max_p or c > max_c or fx[-1] & ~alarm_bits:
                    raise ValueError("sample")
                st = arrays.get((p, c))
                if st is None:
                    st = arrays[(p, c)] = struct.Struct(f"<{p}h{c}H")
                if s_fix.size + st.size != plen:
                    raise ValueError("length")
                out.append((hdr, fx, st.unpack_from(f, h + s_fix.size)))
            elif mt == batch_id:
                ns, p, c = b_fix.unpack_from(f, h)
                if ns > max_n or p > max_p or c > max_c:
                    raise ValueError("batch")
                st = records.get((p, c))
                if st is None:
                    st = records[(p, c)] = struct.Struct(f"{rec_fix}{p}h{c}H")
                if b_fix.size + ns * st.size != plen:
                    raise ValueError("length")
                recs = list(st.iter_unpack(memoryview(f)[h + b_fix.size:h + plen]))
                for r in recs:
                    if r[6] & ~alarm_bits:
                        raise ValueError("flags")
                out.append((hdr, (ns, p, c), recs))
            elif mt == birth_id:
                fx = h_fix.unpack_from(f, h)
                p = fx[i_np]
                if fx[i_chem] not in chem or fx[i_sensor] not in sensor or p > max_p \
                        or h_fix.size + 2 * p != plen:
                    raise ValueError("birth")
                out.append((hdr, fx, struct.unpack_from(f"<{p}H", f, h + h_fix.size)))
            else:
                raise ValueError("not in the mix")
        return out

    return decode


def construct_loop(compiled: bool) -> Callable[[list[bytes]], list[Any]]:
    parser = reference.compiled_frame() if compiled else schema.Frame
    tag_len = codec.TAG_LEN

    def decode(frames: list[bytes]) -> list[Any]:
        out = []
        for f in frames:
            parsed = parser.parse(f)
            crc_pos = len(f) - 4 - (tag_len if parsed.tag is not None else 0)
            if zlib.crc32(memoryview(f)[:crc_pos]) != parsed.crc32:
                raise ValueError("CRC")
            out.append(parsed)
        return out

    return decode


def codec_loop(frames: list[bytes]) -> list[codec.Frame]:
    decode = codec.decode_frame
    return [decode(f) for f in frames]


def crc_floor(frames: list[bytes]) -> list[int]:
    return list(map(zlib.crc32, frames))


def batched(frames: list[bytes]) -> batch.DecodedBatch:
    res = batch.decode_batch(frames)
    if res.errors or res.extra:
        raise ValueError("rejected frames in a valid mix")
    return res


def batched_samples(frames: list[bytes]) -> list[batch.Samples]:
    return batched(frames).samples()


def _leaves(dt: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if dt.names is None:
        return [path]
    return [leaf for name in dt.names for leaf in _leaves(dt.fields[name][0].base, (*path, name))]


def batched_as_ints(frames: list[bytes]) -> list[list[Any]]:
    """decode_batch, then every value of every frame as a Python int (.tolist() of every
    field): the struct loop's output form, for a like-with-like figure."""
    out = []
    for b in batched(frames).blocks:
        for path in _leaves(b.frames.dtype):
            col = b.frames
            for name in path:
                col = col[name]
            out.append(col.tolist())
    return out


def batched_small(frames: list[bytes], size: int) -> None:
    for k in range(0, len(frames), size):
        batched(frames[k:k + size])


def _check_agreement(frames: list[bytes]) -> None:
    """Every candidate decodes the same frames to the same values (spot check)."""
    got = batch.decode_batch(frames).frames()
    assert got == [codec.decode_frame(f) for f in frames], "batch decoder disagrees"
    assert len(make_struct_loop()(frames)) == len(frames)


def run(ctx: Context) -> list[Figure]:
    n = 60 if ctx.smoke else MICRO_BATCH
    frames = make_frames(n)
    _check_agreement(frames[:200])
    n_samples = sum(len(s) for s in batch.decode_batch(frames).samples())
    struct_loop = make_struct_loop()
    comp, plain = construct_loop(True), construct_loop(False)
    small = 10 if ctx.smoke else 100
    t = ctx.compare({
        "batched": (lambda: batched(frames), n),
        "batched+samples": (lambda: batched_samples(frames), n),
        "batched+ints": (lambda: batched_as_ints(frames), n),
        "batched-small": (lambda: batched_small(frames, small), n),
        "codec": (lambda: codec_loop(frames), n),
        "struct": (lambda: struct_loop(frames), n),
        "compiled": (lambda: comp(frames), n),
        "crc": (lambda: crc_floor(frames), n),
    }, runs=11)
    # plain construct is ~5x slower than compiled: fewer runs of it (its own median)
    t.update(ctx.compare({"plain": (lambda: plain(frames), n)}, runs=3))
    fps = "frames/s"
    sizes = [len(f) for f in frames]
    mix = (f"{n} frames ({sum(sizes) / n:.0f} B average, {n_samples} samples), "
           f"one micro-batch of the daemon's batch_max")

    def fig(name: str, cand: str, base: str | None, target: Target | None = None,
            note: str = "") -> Figure:
        return Figure(name, t[cand].rate, fps, baseline=base and _NAMES[base],
                      baseline_value=t[base].rate if base else None, target=target,
                      note=note, details={"candidate": t[cand].details(),
                                          **({"baseline": t[base].details()} if base else {})})

    return [
        fig("batched decoder", "batched", "compiled", Target(">=", 25.0),
            note=f"{mix}; validated typed arrays per block, no Python object per field"),
        fig("batched decoder", "batched", "struct", Target(">=", 1.0)),
        fig("batched decoder", "batched", "plain"),
        fig("batched decoder", "batched", "crc",
            note="ratio < 1: the share of the CRC floor (zlib.crc32 per frame) it reaches"),
        fig("batched + samples() columns", "batched+samples", "struct",
            note="daemon-ready per-sample columns, batch records unrolled"),
        fig("batched + every value as a Python int", "batched+ints", "struct",
            note="the struct loop's output form (like with like): .tolist() of every field"),
        fig(f"batched, {small}-frame micro-batches", "batched-small", "struct",
            note="a lightly loaded daemon's batches: the per-batch cost shows"),
        fig("per-frame codec (dicts)", "codec", "compiled",
            note="protocol/codec.py decode_frame per frame, what the daemon calls today"),
        fig("struct loop (tuples)", "struct", "compiled"),
        fig("CRC floor", "crc", None, note="zlib.crc32 per frame, nothing else"),
    ]


_NAMES = {"compiled": "compiled construct", "plain": "plain construct",
          "struct": "struct loop", "crc": "CRC floor"}
