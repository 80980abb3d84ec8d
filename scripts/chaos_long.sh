#!/usr/bin/env bash
# A long chaos campaign (default 5 minutes): the kv checker on 3 hosts under a seeded random
# schedule of every fault kind (node kills and pauses, device and link faults, poison, slow
# devices, message faults, partitions); prints the JSON result and exits nonzero on any
# violation.  docs/faults.md records the latest result.
#
#   bash scripts/chaos_long.sh [SEED] [SECONDS] [KINDS]
set -euo pipefail
seed=${1:-1}
seconds=${2:-300}
kinds=${3:-kill,pause,device,link,poison,slow,msg,partition}
exec python3 -m fabric chaos --seed "$seed" --duration "$seconds" --faults "$kinds" --json --quiet
