"""Parsing and printing sizes ("512MiB", "1 GiB", 4096).

Accepted spellings (case-insensitive, optional space between number and unit):

- plain bytes: ``4096``, ``"4096"``, ``"4096B"``;
- IEC units, powers of 1024: ``KiB``, ``MiB``, ``GiB``, ``TiB`` (also ``Ki`` .. ``Ti``);
- decimal units, powers of 1000: ``kB``, ``MB``, ``GB``, ``TB``, but only when the
  result is a whole number of 4096-byte pages (``8GB`` is, ``1GB`` is not), so a
  decimal size is never silently rounded to something else;
- fractions only when they come out as whole bytes (``1.5GiB``).

A bare ``k``/``m``/``g``/``t`` is refused as ambiguous (MB or MiB?).  Every
refusal is an InvalidArgument of one line that suggests the IEC spelling.
"""
from __future__ import annotations

import re
from fractions import Fraction

from .errors import InvalidArgument

#: Sizes are whole 4096-byte pages where the decimal units are concerned.
PAGE_BYTES = 4096
#: Largest size accepted (exclusive): sizes travel as unsigned 64-bit integers.
SIZE_LIMIT = 1 << 64

_IEC = {"ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
        "ti": 1024**4, "tib": 1024**4}
_DECIMAL = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_AMBIGUOUS = {"k": "KiB", "m": "MiB", "g": "GiB", "t": "TiB"}
_IEC_NAME = {"kb": "KiB", "mb": "MiB", "gb": "GiB", "tb": "TiB"}
_RE = re.compile(r"\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def _bad(what: str, value: object, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{what}: {value!r} {problem}")


def _check_range(n: int, what: str, value: object, allow_zero: bool) -> int:
    if n < 0:
        raise _bad(what, value, "is negative; a size must be positive")
    if n == 0 and not allow_zero:
        raise _bad(what, value, "is zero; a size must be positive")
    if n >= SIZE_LIMIT:
        raise _bad(what, value, "is too large (sizes must be below 2**64 bytes)")
    return n


def parse_size(value: int | str, what: str = "size", *, allow_zero: bool = False) -> int:
    """Bytes from an int or a string such as ``"512MiB"``; raises InvalidArgument.

    Zero is refused unless ``allow_zero``; negative sizes and sizes of 2**64
    bytes or more always are.
    """
    if isinstance(value, bool):
        raise _bad(what, value, "is not a size (e.g. 4096, 64KiB, 1GiB)")
    if isinstance(value, int):
        return _check_range(value, what, value, allow_zero)
    if isinstance(value, float):
        if not value.is_integer():
            raise _bad(what, value, "is not a whole number of bytes")
        return _check_range(int(value), what, value, allow_zero)
    if not isinstance(value, str):
        raise _bad(what, value, "is not a size (e.g. 4096, 64KiB, 1GiB)")
    m = _RE.fullmatch(value)
    if not m:
        raise _bad(what, value, "cannot be read as a size (e.g. 4096, 64KiB, 1GiB)")
    sign, number, unit = m.group(1), m.group(2), m.group(3).lower()
    if sign == "-":
        raise _bad(what, value, "is negative; a size must be positive")
    amount = Fraction(number)
    if unit in _AMBIGUOUS:
        raise _bad(what, value, f"is ambiguous (MB or MiB?); did you mean "
                                f"{number}{_AMBIGUOUS[unit]}?")
    if unit in ("", "b"):
        scale = 1
    elif unit in _IEC:
        scale = _IEC[unit]
    elif unit in _DECIMAL:
        scale = _DECIMAL[unit]
        exact = amount * scale
        if exact.denominator != 1 or exact.numerator % PAGE_BYTES:
            raise _bad(what, value, f"is not a whole number of {PAGE_BYTES}-byte pages "
                                    f"(decimal units are powers of 1000); did you mean "
                                    f"{number}{_IEC_NAME[unit]}?")
    else:
        raise _bad(what, value, "has an unknown unit (use B, KiB, MiB, GiB or TiB)")
    exact = amount * scale
    if exact.denominator != 1:
        raise _bad(what, value, "is not a whole number of bytes")
    return _check_range(exact.numerator, what, value, allow_zero)


def format_size(nbytes: int) -> str:
    """Short human form: 512.0 MiB."""
    n = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{nbytes} B"  # unreachable
