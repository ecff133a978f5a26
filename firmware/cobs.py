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


def cobs_decode_into(src, n: int, dst) -> int:
    """Decode the COBS block src[0:n] (no delimiter) into dst; return its length, or -1 if
    the block is invalid (a zero inside, or a code running past the end)."""
    i = 0
    o = 0
    while i < n:
        code = src[i]
        if code == 0 or i + code > n:  # a block must end inside the frame
            return -1
        end = i + code
        i += 1
        while i < end:
            b = src[i]
            if b == 0:
                return -1
            dst[o] = b
            o += 1
            i += 1
        if code < 0xFF and i < n:
            dst[o] = 0
            o += 1
    return o
