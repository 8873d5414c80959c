#!/usr/bin/env bash
# Benchmarks alaska-broker: in memory, with durable storage (sync = batch and
# sync = always), and optionally against another broker (the real Malamute)
# and an older alaska-broker binary, all with the same clients.
#
#   tools/bench-broker.sh [-n REQUESTS] [-r ROUNDS] [--compare ENDPOINT]
#                         [--baseline BROKER_BINARY] [--stuck N] [--no-build]
#
# Each broker runs on its own free loopback port with its own worker:
# `alaska-bench --echo-worker --ack-window 64` (acknowledged delivery where
# the broker offers it, so the durable broker writes every request,
# delivery and confirmation). The producer is `alaska-bench` with 64-byte
# requests and a window of 100. The brokers run side by side and the loads
# go to them in turn, ROUNDS times (default 1: one run each), keeping the
# best round of each, so they are compared under the same machine
# conditions. --compare ENDPOINT adds a running broker (e.g. the real
# Malamute, in memory); --baseline BINARY adds another alaska-broker binary
# in memory (e.g. one built from an older commit). --stuck N (default
# 10000, 0 for none) adds the same load on a service whose queue also holds
# N requests that no worker matches (the in-memory brokers only): a broker
# that rescans its queue on every request slows down with N. Prints req/s
# per broker and the ratios the targets are stated in.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
ROUNDS=1
COMPARE=""
BASELINE=""
STUCK=10000
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --compare) COMPARE="$2"; shift 2 ;;
    --baseline) BASELINE="$2"; shift 2 ;;
    --stuck) STUCK="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench-broker.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

if [ "$BUILD" = 1 ]; then
  cargo build --release --bin alaska-broker --bin alaska-bench --bin alas >/dev/null 2>&1 ||
    { echo "bench-broker.sh: build failed (run cargo build --release)" >&2; exit 1; }
fi
BIN=target/release
. tools/bench-common.sh
wait_port() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench-broker.sh: nothing listening on port $1" >&2
  exit 1
}

# start_broker NAME BINARY STORAGE(empty|batch|always) -> endpoint in EP_<NAME>
start_broker() {
  local name=$1 bin=$2 sync=$3 port
  port=$(free_port)
  {
    echo "mlm_server"
    echo "    bind"
    echo "        endpoint = tcp://127.0.0.1:$port"
    if [ -n "$sync" ]; then
      echo "    storage"
      echo "        dir = $TMP/store-$name"
      echo "        sync = $sync"
    fi
  } >"$TMP/$name.cfg"
  "$bin" "$TMP/$name.cfg" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  printf -v "EP_$name" '%s' "tcp://127.0.0.1:$port"
}

start_worker() { # endpoint log [service filter]
  "$BIN/alaska-bench" --echo-worker --ack-window 64 -e "$1" -a "${3:-bench}" --filter "${4:-.*}" >"$2" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do grep -q ready "$2" && return 0; sleep 0.1; done
  echo "bench-broker.sh: echo worker on $1 did not start: $(cat "$2")" >&2
  exit 1
}

load() { # endpoint [service]
  "$BIN/alaska-bench" -e "$1" -a "${2:-bench}" -s echo -w 100 -n "$N" -b 64 --json
}

# stuck endpoint: N requests on service "stuck" that its worker (offering
# only subject "echo") never matches.
stuck() {
  awk -v n="$STUCK" 'BEGIN { for (i = 0; i < n; i++) print "{}" }' |
    "$BIN/alas" -e "$1" -a stuck -s nobody --lines -q
}

best() { # old new: keeps the higher req/s
  if [ -z "$1" ]; then echo "$2"; return; fi
  awk -v a="$(field rps "$1")" -v b="$(field rps "$2")" 'BEGIN { exit !(b > a) }' && echo "$2" || echo "$1"
}

NAMES=(memory batch always)
LABELS=("alaska-broker, in memory" "alaska-broker, storage batch" "alaska-broker, storage always")
start_broker memory "$BIN/alaska-broker" ""
start_broker batch "$BIN/alaska-broker" batch
start_broker always "$BIN/alaska-broker" always
if [ -n "$BASELINE" ]; then
  start_broker baseline "$BASELINE" ""
  NAMES+=(baseline)
  LABELS+=("baseline binary, in memory")
  echo "baseline binary: $BASELINE"
fi
if [ -n "$COMPARE" ]; then
  EP_compare=$COMPARE
  NAMES+=(compare)
  LABELS+=("$COMPARE (other broker)")
fi
for name in "${NAMES[@]}"; do
  ep_var="EP_$name"
  start_worker "${!ep_var}" "$TMP/worker-$name.log"
done
STUCK_NAMES=()
if [ "$STUCK" -gt 0 ]; then
  for name in memory ${BASELINE:+baseline}; do
    ep_var="EP_$name"
    start_worker "${!ep_var}" "$TMP/worker-stuck-$name.log" stuck '^echo$'
    stuck "${!ep_var}"
    STUCK_NAMES+=("$name")
  done
fi
sleep 0.3

declare -A RESULT
for _ in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    ep_var="EP_$name"
    RESULT[$name]=$(best "${RESULT[$name]:-}" "$(load "${!ep_var}")")
  done
  for name in "${STUCK_NAMES[@]}"; do
    ep_var="EP_$name"
    RESULT[stuck-$name]=$(best "${RESULT[stuck-$name]:-}" "$(load "${!ep_var}" stuck)")
  done
done
for name in "${STUCK_NAMES[@]}"; do
  i=$(printf '%s\n' "${NAMES[@]}" | grep -nx "$name" | cut -d: -f1)
  NAMES+=("stuck-$name")
  LABELS+=("${LABELS[$((i - 1))]}, $STUCK unmatched queued")
done

printf '%-52s %9s %8s %8s %8s %6s\n' "broker (echo worker, w=100, 64 B)" "req/s" "p50 us" "p99 us" "max us" "lost"
for i in "${!NAMES[@]}"; do
  r=${RESULT[${NAMES[$i]}]}
  printf '%-52s %9s %8s %8s %8s %6s\n' "${LABELS[$i]}" "$(field rps "$r")" "$(field p50_us "$r")" \
    "$(field p99_us "$r")" "$(field max_us "$r")" "$(field lost "$r")"
done
# rps_ratio JSON JSON: the ratio of two runs' throughputs.
rps_ratio() { ratio "$(field rps "$1")" "$(field rps "$2")"; }
echo
echo "best of $ROUNDS round(s), $N requests each:"
echo "batch / in memory:    $(rps_ratio "${RESULT[batch]}" "${RESULT[memory]}")x   (target >= 0.5x)"
echo "always / in memory:   $(rps_ratio "${RESULT[always]}" "${RESULT[memory]}")x"
if [ -n "$BASELINE" ]; then
  echo "in memory / baseline: $(rps_ratio "${RESULT[memory]}" "${RESULT[baseline]}")x   (target >= 0.95x)"
fi
if [ "$STUCK" -gt 0 ]; then
  echo "in memory with $STUCK unmatched queued / without: $(rps_ratio "${RESULT[stuck-memory]}" "${RESULT[memory]}")x"
  if [ -n "$BASELINE" ]; then
    echo "baseline with $STUCK unmatched queued / without:  $(rps_ratio "${RESULT[stuck-baseline]}" "${RESULT[baseline]}")x"
  fi
fi
if [ -n "$COMPARE" ]; then
  echo "batch / $COMPARE:     $(rps_ratio "${RESULT[batch]}" "${RESULT[compare]}")x   (target > 1x)"
  echo "in memory / $COMPARE: $(rps_ratio "${RESULT[memory]}" "${RESULT[compare]}")x"
fi
