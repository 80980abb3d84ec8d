"""What every `fabric` sub-command shares: argument types, JSON output, number formatting."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..constants import MAX_SEED
from ..statedir import ENV_VAR, default_state_dir

#: Version of every JSON document the CLI prints (the "schema" key).  It changes
#: only when a key is removed or changes meaning; new keys may appear at any time.
JSON_SCHEMA = 1


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help=f"cluster state directory (default: ${ENV_VAR} or {default_state_dir()})")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help='print one JSON object instead of text (it carries "schema": 1)')


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed(text: str) -> int:
    """A seed for ``--seed``: a whole number in 0..2**64-1."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = int(text, 0)  # 0x... also
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2**64-1 ({MAX_SEED}), got {value}")
    return value


def emit_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as one JSON document, "schema" first."""
    print(json.dumps({"schema": JSON_SCHEMA, **obj}, indent=1, default=str))


def error_json(code: str, message: str) -> dict[str, Any]:
    return {"schema": JSON_SCHEMA, "error": {"code": code, "message": message}}


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r  {msg}", end="", file=sys.stderr, flush=True)


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def ns(x: float | None) -> str:
    if x is None:                     # no calls: no figure, not 0 ns
        return "-"
    x = float(x)
    if x >= 1e9:
        return f"{x / 1e9:.2f} s"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} us"
    return f"{x:.0f} ns"


def duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12.3s``; "-" for None."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {sec}s"
