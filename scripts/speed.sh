#!/usr/bin/env bash
# Simulator speed against load: one thread, 5 nodes, seeds of 20 s, for 1, 2,
# 5 and 10 clients, with every fault and without faults. Prints one line per
# run: the clients, the faults, the speed in simulated seconds per wall
# second, and the load (client operations per simulated second) it carried.
#
#   scripts/speed.sh [BINARY] [SEEDS]     # SEEDS defaults to 1000..1099
#
# The machine is shared and noisy: compare rows of one run, not across runs.
set -euo pipefail
capkv=${1:-target/release/capkv}
seeds=${2:-1000..1099}
printf '%-8s %-7s %12s %28s\n' clients faults "x real time" "ops per simulated second"
for clients in 1 2 5 10; do
  for faults in all none; do
    summary=$("$capkv" sim --seeds "$seeds" --nodes 5 --duration 20s --jobs 1 \
      --clients "$clients" --faults "$faults" | tail -n 1)
    speed=$(sed -n 's/.*(\([0-9]*\)x real time.*/\1/p' <<<"$summary")
    load=$(sed -n 's/.*load \([0-9]*\) client operations per simulated second.*/\1/p' <<<"$summary")
    printf '%-8s %-7s %12s %28s\n' "$clients" "$faults" "$speed" "$load"
  done
done
