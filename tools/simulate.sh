#!/usr/bin/env bash
# The deterministic simulator (src/sim.rs): the real broker core and client
# sessions under a seeded schedule of faults, invariants checked after every
# step. Prints steps per second and any failing seed; a failing seed replays
# exactly, with its trace, with --seed.
#
#   tools/simulate.sh [--seeds N] [--steps M] [--first S]
#   tools/simulate.sh --seed S [--steps M]      # one seed, every step printed
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=100 steps=20000 first=1 seed=
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --first) first=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "simulate.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
ALASKA_SIM_SEEDS=$seeds ALASKA_SIM_STEPS=$steps ALASKA_SIM_FIRST=$first ALASKA_SIM_SEED=$seed \
  cargo test --release --quiet --lib sim::tests::search -- --ignored --nocapture --test-threads 1
