"""Calibrated analog channels: ADC.read_uv() plus the board's own gain and offset.

read_uv() applies the chip's factory calibration; each board then gets a gain error (ppm) and an
offset (uV) per channel from its config, measured against a reference meter in the lab.
"""

from intmath import scale


class Channel:
    def __init__(self, adc, gain_ppm: int = 1_000_000, offset_uv: int = 0) -> None:
        self.adc = adc  # anything with read_uv(): machine.ADC, or the HIL rig's stand-in
        # Gain error in 1/65536 steps, applied to uv >> 8: products stay small ints.
        self.gain_err_q16 = (gain_ppm - 1_000_000) * 65536 // 1_000_000
        self.offset_uv = offset_uv

    def read_uv(self) -> int:
        uv = self.adc.read_uv()
        return uv + (((uv >> 8) * self.gain_err_q16) >> 8) + self.offset_uv


class ScaledChannel:
    """A channel read through a divider or amplifier: value = (uv - zero_uv) * factor / 1e5."""

    def __init__(self, channel: Channel, factor: int, zero_uv: int = 0) -> None:
        self.channel = channel
        self.factor = factor  # the real ratio x intmath.SCALE_ONE
        self.zero_uv = zero_uv

    def read(self) -> int:
        return scale(self.channel.read_uv() - self.zero_uv, self.factor)
