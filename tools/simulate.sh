#!/usr/bin/env bash
# The deterministic simulator (src/sim.rs): the real broker core and client
# sessions under a seeded schedule of faults, invariants checked after every
# step. Prints steps per second (journal model and real store apart), the
# sync = batch loss window and any failing seed; a failing seed replays
# exactly, with its trace, with --seed (give the same --sync/--store).
#
#   tools/simulate.sh [--seeds N] [--steps M] [--first S] [--sync always|batch]
#                     [--store auto|model|real] [--roster full|classic]
#   tools/simulate.sh --seed S [--steps M] ...   # one seed, every step printed
#
# --store auto (the default) runs every 8th seed on the real fjall store.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=100 steps=20000 first=1 seed= sync=always store=auto roster=full
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --first) first=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --sync) sync=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --roster) roster=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "simulate.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$sync" in always|batch) ;; *) echo "simulate.sh: --sync is always or batch" >&2; exit 2 ;; esac
case "$store" in auto|model|real) ;; *) echo "simulate.sh: --store is auto, model or real" >&2; exit 2 ;; esac
case "$roster" in full|classic) ;; *) echo "simulate.sh: --roster is full or classic" >&2; exit 2 ;; esac
ALASKA_SIM_SEEDS=$seeds ALASKA_SIM_STEPS=$steps ALASKA_SIM_FIRST=$first ALASKA_SIM_SEED=$seed \
ALASKA_SIM_SYNC=$sync ALASKA_SIM_STORE=$store ALASKA_SIM_ROSTER=$roster \
  cargo test --release --quiet --lib sim::tests::search -- --ignored --nocapture --test-threads 1
