"""Scalar helpers written once in plain Python and compiled by each backend (numba CPU, numba.cuda)."""

from __future__ import annotations

import math

import numpy as np


def argmax_better(value: float, index: int, best: float, best_index: int) -> bool:
    """Whether ``(value, index)`` beats the running ``(best, best_index)`` of an argmax.

    NaN counts as the largest value (as in ``torch.argmax``); ties go to the lower index. A
    negative index means "no element": an empty candidate never wins, anything beats an empty best.
    """
    if index < 0:
        return False
    if best_index < 0:
        return True
    if value != value:
        return best == best or index < best_index
    if best != best:
        return False
    return value > best or (value == best and index < best_index)


def bf16_bits_to_float(bits: int) -> float:
    """The value of a bfloat16 given its 16 bits (numba has no bfloat16 type, so kernels read the bits).

    bfloat16 is the top half of a float32: 1 sign, 8 exponent, 7 mantissa bits.
    """
    b = np.int32(bits) & 0xFFFF  # int16 bits are sign-extended: keep the low 16
    exponent = (b >> 7) & 0xFF
    mantissa = b & 0x7F
    # A float32 mantissa selects numba.cuda's float32 ldexp.
    if exponent == 0xFF:
        v = np.float32(math.inf) if mantissa == 0 else np.float32(math.nan)
    elif exponent == 0:
        v = math.ldexp(np.float32(mantissa), -133)
    else:
        v = math.ldexp(np.float32(mantissa | 0x80), int(exponent) - 134)
    return -v if b & 0x8000 else v
