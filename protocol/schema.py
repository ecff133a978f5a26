"""The packsentry wire format: the single source of truth.

Every other form of the format is derived from the construct definitions in this file: the
host's fast codec (`layout.py`, `codec.py`), the firmware's wire module (`firmware/wire.py`),
the golden vectors and `docs/protocol.md` (`generate.py`), and the schema fingerprint.

A frame is::

    header (26 bytes) | payload (payload_len bytes) | crc32 (4) | tag (16, only if flag `signed`)

All integers are little-endian (the ESP32 is little-endian, so the firmware packs natively).
The CRC-32 (IEEE, as `binascii.crc32` / `zlib.crc32`) covers header and payload; the tag is
HMAC-SHA256 with the board's key over header, payload and CRC, truncated to TAG_LEN_BYTES.

Field names carry their units (`pack_mv`, `temp_dc` = 0.1 degC, `riso_kohm`, `ts_ms`). The
text after `*` on a field is its documentation and goes verbatim into docs/protocol.md.

Rules the derivers rely on (they raise if a schema breaks them): payloads are Structs of
little-endian integer fields, Enum/FlagsEnum over integer fields, `Array(this.<count>, <int>)`,
`Bytes(this.<count>)`, and one level of `Array(this.<count>, Struct)` records whose arrays are
counted by fields of the enclosing payload (`this._.<count>`).
"""

from construct import (
    Array,
    Bytes,
    Enum,
    FlagsEnum,
    If,
    Int8sl,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64ul,
    Prefixed,
    Struct,
    Switch,
    this,
)

# Bump on any incompatible change; the fingerprint catches the changes nobody bumped for.
PROTOCOL_VERSION = 1
# Truncated HMAC-SHA256: 128 bits keeps forgery out of reach and costs 16 bytes per frame.
TAG_LEN_BYTES = 16
CRC_LEN_BYTES = 4

# Upper bounds on counted arrays: a frame claiming more is rejected as absurd before any
# allocation. They follow the product: up to 32 probes, up to 256 cell voltages.
COUNT_LIMITS = {"n_probes": 32, "n_cells": 256, "n_samples": 1024, "n_bytes": 4096}

MsgType = Enum(
    Int8ul,
    # board -> host
    birth=0x01,
    sample=0x02,
    batch=0x03,
    alarm=0x04,
    status=0x05,
    cmd_ack=0x06,
    # host -> board
    time_sync=0x10,
    ack=0x11,
    config_update=0x12,
    rebirth=0x13,
    reboot=0x14,
    inject=0x15,
)

FrameFlags = FlagsEnum(
    Int16ul,
    historical=0x0001,  # re-sent from the board's store-and-forward buffer
    signed=0x0002,  # a TAG_LEN_BYTES HMAC tag follows the CRC
    time_synced=0x0004,  # ts_ms comes from a synchronised clock (host time sync or NTP)
    pre_event=0x0008,  # sample from the 30 s ring buffer sent after a local L3/L4 event
)

# Bits 0-23 are GB/T 32960.3's general alarm flags (same bit, same meaning), so the two map
# one to one; bits 24-31 are packsentry's own rules that GB/T has no flag for.
AlarmFlags = FlagsEnum(
    Int32ul,
    temp_spread=1 << 0,
    temp_high=1 << 1,
    pack_overvoltage=1 << 2,
    pack_undervoltage=1 << 3,
    cell_overvoltage=1 << 5,
    cell_undervoltage=1 << 6,
    cell_spread=1 << 10,
    insulation=1 << 11,
    overcharge=1 << 18,
    thermal_event=1 << 23,
    temp_rise_rate=1 << 24,
    sensor_fault=1 << 25,
    capacity_soh=1 << 26,
    r0_growth=1 << 27,
    board_silent=1 << 28,
)

# An alarm rule's id is its flag's bit number: one table, two views.
AlarmRule = Enum(
    Int8ul, **{name: value.bit_length() - 1 for name, value in AlarmFlags.flags.items()}
)

Chemistry = Enum(Int8ul, nmc=1, lfp=2)
CurrentSensor = Enum(Int8ul, shunt=1, ina226=2)
AlarmEvent = Enum(Int8ul, raised=1, cleared=2)
AlarmSubject = Enum(Int8ul, pack=0, cell=1, probe=2)
Link = Enum(Int8ul, serial=1, mqtt=2)
# disabled: the board's config does not allow the command (inject on a board whose
# sensor_source is "hardware")
CommandResult = Enum(Int8ul, ok=0, bad_tag=1, invalid=2, unsupported=3, stale=4, disabled=5)

Header = Struct(
    "version" / Int8ul * "protocol version; a host refuses versions it does not speak",
    "msg_type" / MsgType * "message type (table below)",
    "flags" / FrameFlags * "frame flags (table below)",
    "board_id" / Int32ul * "board id, assigned at provisioning",
    "boot" / Int32ul * "boot counter, persisted on the board, +1 per boot",
    "seq" / Int32ul * "sequence number, per boot, +1 per frame (a batch uses one per sample)",
    "ts_ms" / Int64ul * "time of the frame, ms since the Unix epoch (see flag time_synced)",
)

# The measured values a sample carries; shared by `sample` and the records of `batch`.
# Unsigned fields use their two top values as markers (0xFFFE abnormal, 0xFFFF invalid for
# 16 bits); signed fields the two top positive values (0x7FFE, 0x7FFF for 16 bits).
_reading = (
    "pack_mv" / Int32ul * "pack voltage, mV",
    "current_ma" / Int32sl * "pack current, mA, + = discharge",
    "riso_pos_kohm" / Int16ul * "insulation resistance HV+ to chassis, kOhm",
    "riso_neg_kohm" / Int16ul * "insulation resistance HV- to chassis, kOhm",
)
_measurement = (
    *_reading,
    "alarm_level" / Int8ul * "highest local alarm level on the board, 0-4",
    "alarm_flags" / AlarmFlags * "active local alarms (GB/T 32960 bit layout)",
)

Birth = Struct(
    "fw_major" / Int8ul * "firmware version, major",
    "fw_minor" / Int8ul * "firmware version, minor",
    "fw_patch" / Int8ul * "firmware version, patch",
    "schema_fingerprint" / Int32ul * "fingerprint of the schema the board was built from",
    "chemistry" / Chemistry * "cell chemistry",
    "cells_series" / Int16ul * "cells in series in the pack",
    "rated_mah" / Int32ul * "rated capacity, mAh",
    "max_pack_mv" / Int32ul * "maximum pack voltage, mV (insulation limits are per volt of it)",
    "max_temp_dc" / Int16sl * "profile's maximum temperature, 0.1 degC (thermal-event rule)",
    "sample_period_ms" / Int32ul * "reporting period, ms",
    "riso_period_ms" / Int32ul * "insulation measurement period, ms",
    "current_sensor" / CurrentSensor * "current sensor type",
    "config_error" / Int16ul * "0 = config valid; else the code of the first bad field",
    "n_probes" / Int8ul * "temperature probes per sample",
    "n_cells" / Int16ul * "cell voltages per sample (0 = not measured)",
    "probe_cell" / Array(this.n_probes, Int16ul) * "per probe: index of the cell it sits on, "
    "0xFFFF = not on a cell (ambient, busbar)",
)

Sample = Struct(
    "n_probes" / Int8ul * "temperature probes that follow",
    "n_cells" / Int16ul * "cell voltages that follow",
    *_measurement,
    "temps_dc" / Array(this.n_probes, Int16sl) * "probe temperatures, 0.1 degC",
    "cells_mv" / Array(this.n_cells, Int16ul) * "cell voltages, mV",
)

BatchRecord = Struct(
    "dt_ms" / Int32ul * "time of this sample after the frame's ts_ms, ms",
    *_measurement,
    "temps_dc" / Array(this._.n_probes, Int16sl) * "probe temperatures, 0.1 degC",
    "cells_mv" / Array(this._.n_cells, Int16ul) * "cell voltages, mV",
)

Batch = Struct(
    "n_samples" / Int16ul * "samples in this batch; sample i has seq = header seq + i",
    "n_probes" / Int8ul * "temperature probes per sample",
    "n_cells" / Int16ul * "cell voltages per sample",
    "samples" / Array(this.n_samples, BatchRecord) * "the samples, oldest first",
)

Alarm = Struct(
    "rule" / AlarmRule * "rule id = its bit number in alarm_flags",
    "level" / Int8ul * "alarm level 1-4",
    "event" / AlarmEvent * "raised or cleared",
    "subject" / AlarmSubject * "what the value belongs to",
    "subject_index" / Int16ul * "cell or probe index (0 for the pack)",
    "value" / Int32sl * "the value that crossed, in the rule's unit",
    "threshold" / Int32sl * "the threshold it crossed, same unit",
    "pre_event_samples" / Int16ul * "ring-buffer samples that follow with flag pre_event",
)

Status = Struct(
    "uptime_s" / Int32ul * "seconds since boot",
    "heap_free_bytes" / Int32ul * "free MicroPython heap",
    "store_pending_frames" / Int32ul * "frames in store-and-forward awaiting the host's ack",
    "store_dropped_frames" / Int32ul * "frames dropped (oldest first) because the store was full",
    "acked_seq" / Int32ul * "highest seq of this boot the host has acknowledged",
    "link" / Link * "link this frame travels on",
    "rssi_dbm" / Int8sl * "WiFi signal, dBm (0 on serial)",
    "config_error" / Int16ul * "0 = config valid; else the code of the first bad field",
    "rx_errors" / Int16ul * "command frames the board rejected since boot",
)

CmdAck = Struct(
    "cmd_type" / MsgType * "type of the command acknowledged",
    "cmd_seq" / Int32ul * "seq of the command acknowledged",
    "result" / CommandResult * "outcome",
)

TimeSync = Struct("unix_ms" / Int64ul * "host time, ms since the Unix epoch")

Ack = Struct(
    "acked_boot" / Int32ul * "boot counter the acknowledgement is for",
    "acked_seq" / Int32ul * "every frame of that boot up to this seq is stored by the host",
)

ConfigUpdate = Struct(
    "config_version" / Int32ul * "monotonic config version; the board ignores older ones",
    "n_bytes" / Int16ul * "length of config_json",
    "config_json" / Bytes(this.n_bytes) * "the new config.json, UTF-8 (frame must be signed)",
)

Rebirth = Struct()

Reboot = Struct("delay_ms" / Int32ul * "reboot after this many ms")

# One reading for a board in injected-sensor mode (config sensor_source = "injected": a HIL
# rig's board, never one in the field): exactly a sample's reading, markers included; the
# board computes alarm_level and alarm_flags from it as from its own sensors.
Inject = Struct(
    "n_probes" / Int8ul * "temperature probes that follow (must be the board's count)",
    "n_cells" / Int16ul * "cell voltages that follow (must be the board's count)",
    *_reading,
    "temps_dc" / Array(this.n_probes, Int16sl) * "probe temperatures, 0.1 degC",
    "cells_mv" / Array(this.n_cells, Int16ul) * "cell voltages, mV",
)

# Payload schema per message type; the order here is the order of the docs.
PAYLOADS = {
    "birth": Birth,
    "sample": Sample,
    "batch": Batch,
    "alarm": Alarm,
    "status": Status,
    "cmd_ack": CmdAck,
    "time_sync": TimeSync,
    "ack": Ack,
    "config_update": ConfigUpdate,
    "rebirth": Rebirth,
    "reboot": Reboot,
    "inject": Inject,
}

# The reference frame. `payload_len` is the Prefixed length right after the header; CRC and
# tag are plain fields here: construct's Checksum is slow compiled and accepts truncated input,
# so both are computed and checked outside construct (reference.py, codec.py).
Frame = Struct(
    *Header.subcons,
    "payload" / Prefixed(Int16ul, Switch(this.msg_type, PAYLOADS)),
    "crc32" / Int32ul,
    "tag" / If(this.flags.signed, Bytes(TAG_LEN_BYTES)),
)
