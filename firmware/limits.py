"""Local alarm limits (L3 and L4) the board evaluates itself. Generated from
host/limits.py by `make generate`. Do not edit: that table has the sources."""

from micropython import const

CELL_OVERVOLTAGE_CLEAR_MV = const(50)
CELL_OVERVOLTAGE_LFP_L3 = const(3750)
CELL_OVERVOLTAGE_NMC_L3 = const(4300)
CELL_SPREAD_CLEAR_PCT = const(80)
CELL_SPREAD_L3 = const(300)
CELL_UNDERVOLTAGE_CLEAR_MV = const(50)
CELL_UNDERVOLTAGE_LFP_L3 = const(2000)
CELL_UNDERVOLTAGE_NMC_L3 = const(2500)
INSULATION_CLEAR_PCT = const(120)
INSULATION_FORECAST_H = const(72)
INSULATION_L3 = const(100)
TEMP_HIGH_CLEAR_DC = const(30)
TEMP_HIGH_L3 = const(600)
TEMP_RISE_RATE_L2_HOLD_S = const(120)
TEMP_RISE_RATE_L3 = const(50)
TEMP_SPREAD_CLEAR_DC = const(30)
TEMP_SPREAD_L3 = const(150)
THERMAL_EVENT_HOLD_S = const(3)
THERMAL_EVENT_L4 = const(10)
THERMAL_EVENT_VOLTAGE_DROP_PCT = const(25)
