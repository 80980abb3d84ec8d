"""Checks for arguments of the public API, done where they enter.

Each returns the value in the form the rest of the code uses (a Python int, a
list of names) or raises :class:`~fabric.errors.InvalidArgument` naming the
argument; no TypeError, OverflowError or numpy error reaches a caller.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgument

U64_MAX = (1 << 64) - 1


def is_int(x: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def int_arg(x: Any, what: str, lo: int = 0, hi: int = U64_MAX) -> int:
    """``x`` as a Python int in [lo, hi] (numpy integers accepted, bools and floats not)."""
    if not is_int(x):
        raise InvalidArgument(f"{what} must be an int, got {_show(x)}")
    x = int(x)
    if not lo <= x <= hi:
        raise InvalidArgument(f"{what} must be in {lo}..{hi}, got {x}")
    return x


def str_arg(x: Any, what: str) -> str:
    if not isinstance(x, str):
        raise InvalidArgument(f"{what} must be a str, got {_show(x)}")
    return x


def choice_arg(x: Any, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(x, str) or x not in choices:
        raise InvalidArgument(f"{what} must be one of {', '.join(choices)}, got {_show(x)}")
    return x


def names_arg(x: Any, what: str) -> list[str]:
    """A str (one name) or an iterable of str, as a list."""
    if isinstance(x, str):
        return [x]
    if isinstance(x, (bytes, dict)) or not hasattr(x, "__iter__"):
        raise InvalidArgument(f"{what} must be a name or a list of names, got {_show(x)}")
    try:
        out = list(x)
    except Exception as exc:  # an iterable that fails while iterating
        raise InvalidArgument(f"{what}: cannot iterate {_show(x)}: {exc}") from None
    for n in out:
        if not isinstance(n, str):
            raise InvalidArgument(f"{what} must hold names (str), got {_show(n)}")
    return out


def bool_arg(x: Any, what: str) -> bool:
    if isinstance(x, (bool, np.bool_)) or (is_int(x) and int(x) in (0, 1)):
        return bool(x)
    raise InvalidArgument(f"{what} must be a bool, got {_show(x)}")


def _show(x: Any) -> str:
    try:
        r = repr(x)
    except Exception:  # a repr that raises must not hide the real error
        r = f"<{type(x).__name__}>"
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{r} ({type(x).__name__})"
