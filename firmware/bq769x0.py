"""BQ769x0 battery-monitor AFE (BQ76920/30/40: 5/10/15 cells) over I2C: cell voltages.

cell_mv = (ADC * GAIN_uV) / 1000 + OFFSET_mV, with GAIN and OFFSET read from the chip's own
factory trim once at start-up. All reads go into preallocated buffers; products stay small.
"""

REG_VC1_HI = 0x0C
REG_ADCGAIN1 = 0x50
REG_ADCOFFSET = 0x51
REG_ADCGAIN2 = 0x59
REG_SYS_CTRL1 = 0x04
_ADC_EN = 0x10


class Bq769x0:
    def __init__(self, i2c, n_cells: int, addr: int = 0x08) -> None:
        if not 1 <= n_cells <= 15:
            raise ValueError("a BQ769x0 measures 1 to 15 cells")
        self.i2c = i2c
        self.addr = addr
        self.n_cells = n_cells
        self._raw = bytearray(2 * n_cells)
        one = bytearray(1)
        i2c.readfrom_mem_into(addr, REG_ADCGAIN1, one)
        g1 = one[0]
        i2c.readfrom_mem_into(addr, REG_ADCGAIN2, one)
        g2 = one[0]
        self.gain_uv = 365 + (((g1 & 0x0C) << 1) | (g2 >> 5))  # datasheet section 8.3.1.1
        i2c.readfrom_mem_into(addr, REG_ADCOFFSET, one)
        self.offset_mv = one[0] - 256 if one[0] & 0x80 else one[0]
        i2c.readfrom_mem_into(addr, REG_SYS_CTRL1, one)
        i2c.writeto_mem(addr, REG_SYS_CTRL1, bytes([one[0] | _ADC_EN]))

    def read_cells_mv(self, out, start: int = 0) -> None:
        """Write the cell voltages into out[start:start + n_cells] (array of u16)."""
        self.i2c.readfrom_mem_into(self.addr, REG_VC1_HI, self._raw)
        raw = self._raw
        for i in range(self.n_cells):
            adc = ((raw[2 * i] & 0x3F) << 8) | raw[2 * i + 1]  # 14-bit result
            mv = adc * self.gain_uv // 1000 + self.offset_mv
            out[start + i] = mv if mv > 0 else 0  # a negative offset on an empty input
