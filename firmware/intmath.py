"""Integer scaling for the sampling path.

MicroPython on the ESP32 keeps ints below 2**30 as tagged small ints; anything larger, and
every float, is a heap object. So conversions here split their products to stay below 2**30
and never allocate. Ranges are stated per function; callers stay inside them by design
(ADC readings are below 3.3 V = 3_300_000 uV).
"""

SCALE_ONE = 100_000  # factor units: a factor of SCALE_ONE multiplies by 1


def scale(x: int, factor: int) -> int:
    """x * factor / SCALE_ONE, truncated toward zero.

    For |x| < 2**22, 0 <= factor < 10**6 * SCALE_ONE // 1000 and a result below 2**30.
    """
    if x < 0:
        return -scale(-x, factor)
    # x = hi*1000 + lo and factor = f_hi*1000 + f_lo, so
    # x*factor/1e5 = hi*f_hi*10 + (hi*f_lo + lo*f_hi)/100 + lo*f_lo/1e5, each term small
    hi = x // 1000
    lo = x - hi * 1000
    f_hi = factor // 1000
    f_lo = factor - f_hi * 1000
    mid = hi * f_lo + lo * f_hi
    return hi * f_hi * 10 + mid // 100 + ((mid % 100) * 1000 + lo * f_lo) // SCALE_ONE


def muldiv_sat(a: int, num: int, den: int, limit: int) -> int:
    """About min(a * num // den, limit) for 0 <= a < 2**16, 0 <= num < 2**30, 0 < den < 2**30.

    Exact while den < 2**14; beyond, the remainder is scaled (relative error below 2**-13).
    """
    if num // den >= (limit // a if a else limit) + 1:
        return limit
    q, r = divmod(num, den)
    while den >= 1 << 14:  # scale the remainder's fraction to keep a * r small
        den >>= 1
        r >>= 1
    if den == 0:
        return min(a * q, limit)
    return min(a * q + a * r // den, limit)
