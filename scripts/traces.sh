#!/usr/bin/env bash
# Prints the trace hash of 90 simulator seeds (cp with every fault, cp
# without faults, ap on 3 nodes, ap-lww on 5 nodes), one line per seed.
#
# A change meant to be a pure speed-up must not change a single line:
#   scripts/traces.sh target/release/capkv > /tmp/before.txt   # on the old build
#   scripts/traces.sh target/release/capkv | diff /tmp/before.txt -
set -euo pipefail
capkv=${1:-target/release/capkv}
{
  "$capkv" sim --seeds 1..30 --nodes 5 --duration 10s
  "$capkv" sim --seeds 1..20 --nodes 5 --duration 10s --faults none
  "$capkv" sim --seeds 1..20 --nodes 3 --duration 10s --workload ap
  "$capkv" sim --seeds 1..20 --nodes 5 --duration 10s --workload ap-lww
} | grep -o 'seed [0-9]*:.*trace [0-9a-f]*' | sed 's/simulated.*trace/trace/'
