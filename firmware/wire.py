"""packsentry wire constants. Generated from protocol/schema.py by `make generate`. Do not edit.

Integers only, for `struct.pack_into` on preallocated buffers; every fmt is
little-endian. Frame: header | payload | crc32 (u32) | tag (TAG_LEN, if signed)."""

from micropython import const

PROTOCOL_VERSION = const(1)
SCHEMA_FINGERPRINT = const(0xdbcbd3d6)
TAG_LEN = const(16)
CRC_LEN = const(4)

# header
HEADER_FMT = "<BBHIIIQH"
HEADER_SIZE = const(26)
HEADER_OFF_VERSION = const(0)  # u8
HEADER_OFF_MSG_TYPE = const(1)  # u8
HEADER_OFF_FLAGS = const(2)  # u16
HEADER_OFF_BOARD_ID = const(4)  # u32
HEADER_OFF_BOOT = const(8)  # u32
HEADER_OFF_SEQ = const(12)  # u32
HEADER_OFF_TS_MS = const(16)  # u64
HEADER_OFF_PAYLOAD_LEN = const(24)  # u16

# message types
MSG_BIRTH = const(0x1)
MSG_SAMPLE = const(0x2)
MSG_BATCH = const(0x3)
MSG_ALARM = const(0x4)
MSG_STATUS = const(0x5)
MSG_CMD_ACK = const(0x6)
MSG_TIME_SYNC = const(0x10)
MSG_ACK = const(0x11)
MSG_CONFIG_UPDATE = const(0x12)
MSG_REBIRTH = const(0x13)
MSG_REBOOT = const(0x14)
MSG_INJECT = const(0x15)

# frame flags
FLAG_HISTORICAL = const(0x1)
FLAG_SIGNED = const(0x2)
FLAG_TIME_SYNCED = const(0x4)
FLAG_PRE_EVENT = const(0x8)

# alarm flag bits (GB/T 32960 layout) and rule ids (= bit numbers)
ALARM_TEMP_SPREAD = const(0x1)
ALARM_TEMP_HIGH = const(0x2)
ALARM_PACK_OVERVOLTAGE = const(0x4)
ALARM_PACK_UNDERVOLTAGE = const(0x8)
ALARM_CELL_OVERVOLTAGE = const(0x20)
ALARM_CELL_UNDERVOLTAGE = const(0x40)
ALARM_CELL_SPREAD = const(0x400)
ALARM_INSULATION = const(0x800)
ALARM_OVERCHARGE = const(0x40000)
ALARM_THERMAL_EVENT = const(0x800000)
ALARM_TEMP_RISE_RATE = const(0x1000000)
ALARM_SENSOR_FAULT = const(0x2000000)
ALARM_CAPACITY_SOH = const(0x4000000)
ALARM_R0_GROWTH = const(0x8000000)
ALARM_BOARD_SILENT = const(0x10000000)
RULE_TEMP_SPREAD = const(0)
RULE_TEMP_HIGH = const(1)
RULE_PACK_OVERVOLTAGE = const(2)
RULE_PACK_UNDERVOLTAGE = const(3)
RULE_CELL_OVERVOLTAGE = const(5)
RULE_CELL_UNDERVOLTAGE = const(6)
RULE_CELL_SPREAD = const(10)
RULE_INSULATION = const(11)
RULE_OVERCHARGE = const(18)
RULE_THERMAL_EVENT = const(23)
RULE_TEMP_RISE_RATE = const(24)
RULE_SENSOR_FAULT = const(25)
RULE_CAPACITY_SOH = const(26)
RULE_R0_GROWTH = const(27)
RULE_BOARD_SILENT = const(28)

# enums
CHEMISTRY_NMC = const(1)
CHEMISTRY_LFP = const(2)
CURRENT_SENSOR_SHUNT = const(1)
CURRENT_SENSOR_INA226 = const(2)
EVENT_RAISED = const(1)
EVENT_CLEARED = const(2)
SUBJECT_PACK = const(0)
SUBJECT_CELL = const(1)
SUBJECT_PROBE = const(2)
LINK_SERIAL = const(1)
LINK_MQTT = const(2)
RESULT_OK = const(0)
RESULT_BAD_TAG = const(1)
RESULT_INVALID = const(2)
RESULT_UNSUPPORTED = const(3)
RESULT_STALE = const(4)
RESULT_DISABLED = const(5)

# markers: abnormal (top value - 1) and invalid (top value), per field type
U8_ABNORMAL = const(0xfe)
U8_INVALID = const(0xff)
U16_ABNORMAL = const(0xfffe)
U16_INVALID = const(0xffff)
U32_ABNORMAL = const(0xfffffffe)
U32_INVALID = const(0xffffffff)
I16_ABNORMAL = const(0x7ffe)
I16_INVALID = const(0x7fff)
I32_ABNORMAL = const(0x7ffffffe)
I32_INVALID = const(0x7fffffff)

# limits on counted fields
MAX_N_PROBES = const(32)
MAX_N_CELLS = const(256)
MAX_N_SAMPLES = const(1024)
MAX_N_BYTES = const(4096)

# birth
BIRTH_FMT = "<BBBIBHIIhIIBHBH"
BIRTH_SIZE = const(34)
BIRTH_OFF_FW_MAJOR = const(0)  # u8
BIRTH_OFF_FW_MINOR = const(1)  # u8
BIRTH_OFF_FW_PATCH = const(2)  # u8
BIRTH_OFF_SCHEMA_FINGERPRINT = const(3)  # u32
BIRTH_OFF_CHEMISTRY = const(7)  # u8
BIRTH_OFF_CELLS_SERIES = const(8)  # u16
BIRTH_OFF_RATED_MAH = const(10)  # u32
BIRTH_OFF_MAX_PACK_MV = const(14)  # u32
BIRTH_OFF_MAX_TEMP_DC = const(18)  # i16
BIRTH_OFF_SAMPLE_PERIOD_MS = const(20)  # u32
BIRTH_OFF_RISO_PERIOD_MS = const(24)  # u32
BIRTH_OFF_CURRENT_SENSOR = const(28)  # u8
BIRTH_OFF_CONFIG_ERROR = const(29)  # u16
BIRTH_OFF_N_PROBES = const(31)  # u8
BIRTH_OFF_N_CELLS = const(32)  # u16
BIRTH_PROBE_CELL_FMT = "H"  # per n_probes

# sample
SAMPLE_FMT = "<BHIiHHBI"
SAMPLE_SIZE = const(20)
SAMPLE_OFF_N_PROBES = const(0)  # u8
SAMPLE_OFF_N_CELLS = const(1)  # u16
SAMPLE_OFF_PACK_MV = const(3)  # u32
SAMPLE_OFF_CURRENT_MA = const(7)  # i32
SAMPLE_OFF_RISO_POS_KOHM = const(11)  # u16
SAMPLE_OFF_RISO_NEG_KOHM = const(13)  # u16
SAMPLE_OFF_ALARM_LEVEL = const(15)  # u8
SAMPLE_OFF_ALARM_FLAGS = const(16)  # u32
SAMPLE_TEMPS_DC_FMT = "h"  # per n_probes
SAMPLE_CELLS_MV_FMT = "H"  # per n_cells

# batch
BATCH_FMT = "<HBH"
BATCH_SIZE = const(5)
BATCH_OFF_N_SAMPLES = const(0)  # u16
BATCH_OFF_N_PROBES = const(2)  # u8
BATCH_OFF_N_CELLS = const(3)  # u16
BATCH_REC_FMT = "<IIiHHBI"
BATCH_REC_SIZE = const(21)
BATCH_REC_OFF_DT_MS = const(0)  # u32
BATCH_REC_OFF_PACK_MV = const(4)  # u32
BATCH_REC_OFF_CURRENT_MA = const(8)  # i32
BATCH_REC_OFF_RISO_POS_KOHM = const(12)  # u16
BATCH_REC_OFF_RISO_NEG_KOHM = const(14)  # u16
BATCH_REC_OFF_ALARM_LEVEL = const(16)  # u8
BATCH_REC_OFF_ALARM_FLAGS = const(17)  # u32
BATCH_REC_TEMPS_DC_FMT = "h"  # per n_probes
BATCH_REC_CELLS_MV_FMT = "H"  # per n_cells

# alarm
ALARM_FMT = "<BBBBHiiH"
ALARM_SIZE = const(16)
ALARM_OFF_RULE = const(0)  # u8
ALARM_OFF_LEVEL = const(1)  # u8
ALARM_OFF_EVENT = const(2)  # u8
ALARM_OFF_SUBJECT = const(3)  # u8
ALARM_OFF_SUBJECT_INDEX = const(4)  # u16
ALARM_OFF_VALUE = const(6)  # i32
ALARM_OFF_THRESHOLD = const(10)  # i32
ALARM_OFF_PRE_EVENT_SAMPLES = const(14)  # u16

# status
STATUS_FMT = "<IIIIIBbHH"
STATUS_SIZE = const(26)
STATUS_OFF_UPTIME_S = const(0)  # u32
STATUS_OFF_HEAP_FREE_BYTES = const(4)  # u32
STATUS_OFF_STORE_PENDING_FRAMES = const(8)  # u32
STATUS_OFF_STORE_DROPPED_FRAMES = const(12)  # u32
STATUS_OFF_ACKED_SEQ = const(16)  # u32
STATUS_OFF_LINK = const(20)  # u8
STATUS_OFF_RSSI_DBM = const(21)  # i8
STATUS_OFF_CONFIG_ERROR = const(22)  # u16
STATUS_OFF_RX_ERRORS = const(24)  # u16

# cmd_ack
CMD_ACK_FMT = "<BIB"
CMD_ACK_SIZE = const(6)
CMD_ACK_OFF_CMD_TYPE = const(0)  # u8
CMD_ACK_OFF_CMD_SEQ = const(1)  # u32
CMD_ACK_OFF_RESULT = const(5)  # u8

# time_sync
TIME_SYNC_FMT = "<Q"
TIME_SYNC_SIZE = const(8)
TIME_SYNC_OFF_UNIX_MS = const(0)  # u64

# ack
ACK_FMT = "<II"
ACK_SIZE = const(8)
ACK_OFF_ACKED_BOOT = const(0)  # u32
ACK_OFF_ACKED_SEQ = const(4)  # u32

# config_update
CONFIG_UPDATE_FMT = "<IH"
CONFIG_UPDATE_SIZE = const(6)
CONFIG_UPDATE_OFF_CONFIG_VERSION = const(0)  # u32
CONFIG_UPDATE_OFF_N_BYTES = const(4)  # u16
# CONFIG_UPDATE_CONFIG_JSON: n_bytes raw bytes

# rebirth
REBIRTH_SIZE = const(0)

# reboot
REBOOT_FMT = "<I"
REBOOT_SIZE = const(4)
REBOOT_OFF_DELAY_MS = const(0)  # u32

# inject
INJECT_FMT = "<BHIiHH"
INJECT_SIZE = const(15)
INJECT_OFF_N_PROBES = const(0)  # u8
INJECT_OFF_N_CELLS = const(1)  # u16
INJECT_OFF_PACK_MV = const(3)  # u32
INJECT_OFF_CURRENT_MA = const(7)  # i32
INJECT_OFF_RISO_POS_KOHM = const(11)  # u16
INJECT_OFF_RISO_NEG_KOHM = const(13)  # u16
INJECT_TEMPS_DC_FMT = "h"  # per n_probes
INJECT_CELLS_MV_FMT = "H"  # per n_cells
