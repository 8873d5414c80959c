#!/usr/bin/env bash
# The chaos soak (tests/chaos.rs): a durable alaska-broker, three alaska
# workers and alaska-bench as the producer, each on a host of its own
# (network namespaces; needs root and iproute2), under a random fault every
# 3-6 s: kill -9 of the broker or a worker (restarted), SIGSTOP/SIGCONT of a
# worker for 2-15 s, a worker's link cut for 2-15 s. Prints one line:
#   sent=... answered=... lost=... duplicated_replies=... side_effects=...
#   max_latency=... faults=...
# and exits non-zero when a request was lost or a process misbehaved.
#
#   tools/chaos.sh --seconds N [--storage batch|always|memory] [--seed S] [--retries N]
# (--retries: the producer's resends of what got no reply, default 50; 0
# shows what the broker alone keeps; memory: no storage, to see it fail)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60 storage=always seed= retries=50
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --retries) retries=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$storage" in always|batch|memory) ;; *) echo "chaos.sh: --storage always, batch or memory" >&2; exit 2 ;; esac
case "$seconds" in ''|*[!0-9]*) echo "chaos.sh: --seconds takes a whole number" >&2; exit 2 ;; esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
ALASKA_CHAOS_SECONDS=$seconds ALASKA_CHAOS_STORAGE=$storage ALASKA_CHAOS_SEED=$seed ALASKA_CHAOS_RETRIES=$retries \
  cargo test --release --quiet --test chaos -- --nocapture --test-threads 1 >"$log" 2>&1
status=$?
set -e
# The fault log and the harness's lines on failure; the result line last.
if [ "$status" -ne 0 ]; then cat "$log" >&2; fi
grep -E '^chaos_soak: ' "$log" || true
grep -E '^misbehaved: ' "$log" || true
grep -E '^sent=' "$log" || { echo "chaos.sh: no result line (status $status)" >&2; exit 1; }
exit "$status"
