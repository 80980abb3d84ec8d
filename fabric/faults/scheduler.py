"""A detached process that applies one scheduled fault: ``--at`` seconds from now, healed
``--for`` seconds later.  Started by :func:`fabric.faults.inject`; exits early, doing
nothing more, when the cluster's state dir goes away (``fabric down``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..errors import FabricError
from ..statedir import StateDir
from . import apply, heal_one

POLL_S = 0.1


def _sleep_while_up(state: StateDir, seconds: float) -> bool:
    """Sleep ``seconds``; False as soon as the cluster is gone."""
    end = time.monotonic() + seconds
    while True:
        if not state.exists():
            return False
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(POLL_S, left))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fabric.faults.scheduler", description=__doc__)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--kind", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--at", type=float, default=0.0)
    p.add_argument("--for", dest="for_s", type=float, default=None)
    p.add_argument("--params", type=json.loads, default=None, help="a network fault's params")
    args = p.parse_args(argv)
    state = StateDir(args.state_dir)
    try:
        if not _sleep_while_up(state, args.at):
            return 0
        fid = apply(state, args.kind, args.target, by="scheduler", params=args.params)
        if args.for_s is not None and fid and _sleep_while_up(state, args.for_s):
            heal_one(state, fid, by="scheduler")
    except FabricError as exc:
        print(f"fabric.faults.scheduler: {args.kind} {args.target}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
