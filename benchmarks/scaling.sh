#!/usr/bin/env bash
# Thread scaling and roofline on a many-core machine (issue #11): writes
# scaling.json (128^3), scaling-1mm.json (the 1 mm MNI152 grid), roofline.json
# (all cores) and speed-threads.json (fastsyn on 1 and all threads beside
# greedy) into OUT, most important first, so an interrupted run keeps what
# it finished.  `fastsyn report RESULTS --out reports/` picks them up.
#
#   benchmarks/scaling.sh OUT [THREADS]     THREADS default 1,2,4,8,16
set -euo pipefail
out=${1:?usage: benchmarks/scaling.sh OUT [THREADS]}
threads=${2:-1,2,4,8,16}
mkdir -p "$out"
all=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
fastsyn bench scaling --size 128 --threads "$threads" --repeat 3 --out "$out/scaling.json"
fastsyn bench scaling --resolution 1 --threads "$threads" --repeat 1 \
    --out "$out/scaling-1mm.json"
fastsyn bench roofline --size 128 --threads "$all" --out "$out/roofline.json"
fastsyn bench speed --size 128 --threads "1,$all" --repeat 1 --external greedy \
    --no-prealign --no-ants-mode --out "$out/speed-threads.json"
