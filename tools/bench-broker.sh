#!/usr/bin/env bash
# Benchmarks alaska-broker: in memory, with durable storage (sync = batch and
# sync = always), and optionally against another broker (the real Malamute)
# and an older alaska-broker binary, all with the same clients.
#
#   tools/bench-broker.sh [-n REQUESTS] [-r ROUNDS] [--compare ENDPOINT]
#                         [--baseline BROKER_BINARY] [--no-build]
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
# in memory (e.g. one built from an older commit). Prints req/s per broker
# and the ratios the targets are stated in.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
ROUNDS=1
COMPARE=""
BASELINE=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --compare) COMPARE="$2"; shift 2 ;;
    --baseline) BASELINE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "bench-broker.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

if [ "$BUILD" = 1 ]; then
  cargo build --release --bin alaska-broker --bin alaska-bench >/dev/null 2>&1 ||
    { echo "bench-broker.sh: build failed (run cargo build --release)" >&2; exit 1; }
fi
BIN=target/release
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }
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

start_worker() { # endpoint log
  "$BIN/alaska-bench" --echo-worker --ack-window 64 -e "$1" -a bench >"$2" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do grep -q ready "$2" && return 0; sleep 0.1; done
  echo "bench-broker.sh: echo worker on $1 did not start: $(cat "$2")" >&2
  exit 1
}

load() { # endpoint
  "$BIN/alaska-bench" -e "$1" -a bench -s echo -w 100 -n "$N" -b 64 --json
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
  LABELS+=("baseline $(basename "$(dirname "$BASELINE")")/$(basename "$BASELINE"), in memory")
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
sleep 0.3

declare -A RESULT
for _ in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    ep_var="EP_$name"
    RESULT[$name]=$(best "${RESULT[$name]:-}" "$(load "${!ep_var}")")
  done
done

printf '%-44s %9s %8s %8s %8s %6s\n' "broker (echo worker, w=100, 64 B)" "req/s" "p50 us" "p99 us" "max us" "lost"
for i in "${!NAMES[@]}"; do
  r=${RESULT[${NAMES[$i]}]}
  printf '%-44s %9s %8s %8s %8s %6s\n' "${LABELS[$i]}" "$(field rps "$r")" "$(field p50_us "$r")" \
    "$(field p99_us "$r")" "$(field max_us "$r")" "$(field lost "$r")"
done
ratio() { awk -v a="$(field rps "$1")" -v b="$(field rps "$2")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "best of $ROUNDS round(s), $N requests each:"
echo "batch / in memory:    $(ratio "${RESULT[batch]}" "${RESULT[memory]}")x   (target >= 0.5x)"
echo "always / in memory:   $(ratio "${RESULT[always]}" "${RESULT[memory]}")x"
if [ -n "$BASELINE" ]; then
  echo "in memory / baseline: $(ratio "${RESULT[memory]}" "${RESULT[baseline]}")x   (target >= 0.95x)"
fi
if [ -n "$COMPARE" ]; then
  echo "batch / $COMPARE:     $(ratio "${RESULT[batch]}" "${RESULT[compare]}")x   (target > 1x)"
  echo "in memory / $COMPARE: $(ratio "${RESULT[memory]}" "${RESULT[compare]}")x"
fi
