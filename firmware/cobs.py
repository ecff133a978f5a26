"""COBS encoding into a preallocated buffer, for frames on a byte stream (UART, USB).

Same output as the host's packsentry.protocol.cobs: a run of 254 non-zero bytes closes a block
(code 0xFF) that implies no zero.
"""


def max_encoded_size(n: int) -> int:
    """Bytes needed to encode n bytes, delimiter included."""
    return n + n // 254 + 2


def cobs_encode_into(src, n: int, dst) -> int:
    """Encode src[0:n] into dst followed by the 0x00 delimiter; return the bytes written."""
    code_pos = 0
    code = 1
    o = 1
    for i in range(n):
        b = src[i]
        if b == 0:
            dst[code_pos] = code
            code_pos = o
            o += 1
            code = 1
        else:
            dst[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                dst[code_pos] = code
                code_pos = o
                o += 1
                code = 1
    dst[code_pos] = code
    dst[o] = 0
    return o + 1
