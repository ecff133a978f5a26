"""Insulation resistance by the switched-resistor bridge (unbalanced-bridge method).

A known resistor R0 is switched from HV+ to chassis (state 1), then from HV- to chassis
(state 2). In each state the board measures Vp (HV+ to chassis) and Vn (chassis to HV-); with
Vb = Vp + Vn:

    Rp = R0 * (Vp2*Vn1 - Vp1*Vn2) / (Vn2 * Vb)
    Rn = R0 * (Vp2*Vn1 - Vp1*Vn2) / (Vp1 * Vb)

The measuring dividers (Rd each side) sit across Rp and Rn all the time, so what the bridge
sees is R || Rd; their effect is removed: R = Rm * Rd / (Rd - Rm). After each switch the
Y-capacitance charges through the bridge, so the board waits `settle_ms` (3-5 time constants)
before reading. Voltages in 0.1 V keep every product below 2**30.
"""

import wire
from intmath import muldiv_sat

MAX_KOHM = wire.U16_ABNORMAL - 1  # 65533: "at least this much" (the field's top reading)


def bridge_kohm(vp1_dv: int, vn1_dv: int, vp2_dv: int, vn2_dv: int, r0_kohm: int) -> tuple:
    """(Rp, Rn) in kOhm as the bridge sees them, saturated at MAX_KOHM."""
    vb = (vp1_dv + vn1_dv + vp2_dv + vn2_dv) // 2
    num = vp2_dv * vn1_dv - vp1_dv * vn2_dv
    if num <= 0 or vb <= 0:
        return MAX_KOHM, MAX_KOHM  # no measurable leakage (or no pack voltage)
    rp = muldiv_sat(r0_kohm, num, vn2_dv * vb, MAX_KOHM) if vn2_dv > 0 else 0
    rn = muldiv_sat(r0_kohm, num, vp1_dv * vb, MAX_KOHM) if vp1_dv > 0 else 0
    return rp, rn


def remove_divider(r_kohm: int, rd_kohm: int) -> int:
    """The insulation itself, given the bridge's reading of it in parallel with Rd."""
    if r_kohm >= rd_kohm or r_kohm >= MAX_KOHM:
        return MAX_KOHM
    return muldiv_sat(r_kohm, rd_kohm, rd_kohm - r_kohm, MAX_KOHM)


class InsulationMonitor:
    def __init__(self, switch_pos, switch_neg, vp, vn, r0_kohm: int, rd_kohm: int,
                 settle_ms: int) -> None:
        self.switch_pos = switch_pos  # machine.Pin-like: on()/off() close/open the R0 switch
        self.switch_neg = switch_neg
        self.vp = vp  # analog.ScaledChannel giving 0.1 V
        self.vn = vn
        self.r0_kohm = r0_kohm
        self.rd_kohm = rd_kohm
        self.settle_ms = settle_ms

    async def measure(self, sleep_ms) -> tuple:
        """One measurement: (riso_pos_kohm, riso_neg_kohm). `sleep_ms`: asyncio.sleep_ms."""
        self.switch_neg.off()
        self.switch_pos.on()
        await sleep_ms(self.settle_ms)
        vp1 = self.vp.read()
        vn1 = self.vn.read()
        self.switch_pos.off()
        self.switch_neg.on()
        await sleep_ms(self.settle_ms)
        vp2 = self.vp.read()
        vn2 = self.vn.read()
        self.switch_neg.off()
        rp, rn = bridge_kohm(vp1, vn1, vp2, vn2, self.r0_kohm)
        return remove_divider(rp, self.rd_kohm), remove_divider(rn, self.rd_kohm)
