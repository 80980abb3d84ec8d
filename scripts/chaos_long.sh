#!/usr/bin/env bash
# A long chaos campaign (default 5 minutes): the kv checker on 3 hosts under seeded random
# node kills and pauses; prints the JSON result and exits nonzero on any violation.
# docs/faults.md records the latest result.
#
#   bash scripts/chaos_long.sh [SEED] [SECONDS]
set -euo pipefail
seed=${1:-1}
seconds=${2:-300}
exec python3 -m fabric chaos --seed "$seed" --duration "$seconds" --json --quiet
